"""A ``sertool.cache.items.Codec`` for one fixed-width vector per key, as safetensors files.

Text embeddings and utterance statistics are both a row of numbers per input. Each file holds two tensors:
``sha256`` (``[n, 32]`` uint8, the keys) and the values (``[n, D]``, under a name of the kind's choosing),
plus the kind's metadata. safetensors holds tensors and text only, so a cache file from anyone can never
run code when read. Kept apart from ``sertool.cache.items`` so that commands which never cache vectors do
not import torch.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor

from sertool.core.errors import SertoolError

_DIGEST_BYTES = 32  # SHA-256


class VectorCodec:
    """Rows of ``dim`` values, one per SHA-256 key, in safetensors files.

    Args:
        tensor: the values' name in each file (``"embeddings"``, ``"statistics"``).
        dim: the width D every row must have; a file of another width is refused on reading.
        what: what the cache holds, for messages (``"text embedding"``).
        metadata: written into each file's header (strings: the model, its revision, ...).
    """

    suffix = ".safetensors"

    def __init__(self, *, tensor: str, dim: int, what: str, metadata: Mapping[str, str]) -> None:
        self.tensor = tensor
        self.dim = dim
        self.what = what
        self.metadata = dict(metadata)

    def encode(self, rows: Mapping[str, Tensor]) -> bytes:
        """One file's bytes for ``rows`` (hex SHA-256 → ``[dim]`` tensor, all of one dtype)."""
        digests = torch.frombuffer(bytearray(b"".join(bytes.fromhex(key) for key in rows)), dtype=torch.uint8)
        return save({"sha256": digests.view(-1, _DIGEST_BYTES), self.tensor: torch.stack(list(rows.values()))},
                    metadata=self.metadata)

    def decode(self, path: Path) -> dict[str, Tensor]:
        """The rows of one file (the first row of a key written twice).

        Raises:
            SertoolError: the file is unreadable, lacks the tensors, or holds rows of another width.
        """
        try:
            tensors = load_file(path)
            digests, values = tensors["sha256"], tensors[self.tensor]
        except (SafetensorError, KeyError, OSError) as error:
            raise SertoolError(f"{self.what} cache file {path} is unreadable ({error}); delete it to "
                               "recompute") from None
        if values.ndim != 2 or values.shape[1] != self.dim or len(values) != len(digests):
            raise SertoolError(f"{self.what} cache file {path} holds {tuple(values.shape)} values for "
                               f"{len(digests)} keys, {self.dim} per key expected; delete {path.parent} to recompute")
        rows: dict[str, Tensor] = {}
        for digest, value in zip(digests, values, strict=True):
            rows.setdefault(bytes(digest.tolist()).hex(), value)
        return rows
