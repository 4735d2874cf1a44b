"""The built-in demo corpus: synthetic emotional speech in MSP-Podcast layout."""
