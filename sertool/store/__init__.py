"""Trained models on disk: checkpoints, model folders, export."""
