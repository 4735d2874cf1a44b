"""Models: speech backbones, text branch, pooling, per-attribute heads, auxiliary tasks, CCC."""
