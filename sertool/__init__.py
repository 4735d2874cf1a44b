"""sertool: speech emotion recognition of dimensional attributes (arousal, valence, dominance)."""

__version__ = "0.1.0"
