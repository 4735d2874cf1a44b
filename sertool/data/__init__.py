"""Corpora: reading MSP-Podcast and manifests, audio loading, the demo corpus."""
