"""Training: the loop, samplers, data selection, checkpoints."""
