"""Experiments: the paper's grid (`make reproduce`) and its speaker-embedding figure."""
