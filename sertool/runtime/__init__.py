"""The layer training and inference both stand on: where a model runs and how it is fed.

``distributed`` (the device and the torchrun process group), ``precision`` (``--amp``), ``batching``
(length-sorted batches by padded seconds) and ``runner`` (``run_model``: a model over whole utterances,
results in input order). Nothing here knows about optimisation or output files, so ``training`` and
``inference`` never import each other.
"""
