"""sertool's version, in one place: the package, checkpoints' provenance, ``--version`` and packaging read it."""

__version__ = "0.1.0"
