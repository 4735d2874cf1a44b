"""The base every layer stands on: config, errors, text formats, progress, devices, splits, signals."""
