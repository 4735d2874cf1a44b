"""Inference: evaluate, predict, ensemble."""
