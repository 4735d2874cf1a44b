"""The content-keyed disk caches: the item cache and the stores built on it, the scan cache."""
