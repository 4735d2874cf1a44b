"""Statistics of whole utterances, computed once per audio content and kept on disk, and the worker processes
that compute the missing ones.

``sertool baseline`` and every ``--floor-blend`` or ``--utterance-stats`` run read the statistics of every
training and validation clip before they start: on MSP-Podcast, 115,000 files. Keys are the audio's SHA-256
(``sertool.cache.audio_keys``, memoised by each file's stat), so a second run, or a run after the baseline,
reads them instead; a changed file misses. What a vector holds and how it is computed is the caller's
(``StatisticsSetup``: the log-mel statistics of ``sertool.models.utterance_stats``, or openSMILE's functionals of
``sertool.models.opensmile_features``); the setup key names every constant of the computation and its code's
version. Values are stored in float64, exactly as computed.

Layout: ``<cache_dir>/utterance-stats/<setup_key>/*.safetensors`` (``VectorCodec``), one file per
``AudioStatisticsCache.GROUP_UTTERANCES`` computed.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import Tensor

from sertool.cache.audio_keys import AudioWindow, audio_digests
from sertool.cache.items import ItemCache, cache_root, setup_key
from sertool.cache.vectors import VectorCodec
from sertool.core.errors import SertoolError
from sertool.core.interrupts import quiet_worker

STATISTICS_CACHE_SUBDIR = "utterance-stats"  # under sertool's cache folder

Window = TypeVar("Window", bound=AudioWindow)  # the items a cache holds (utterances)


@dataclass(frozen=True)
class StatisticsSetup(Generic[Window]):
    """What a statistics cache holds, and how one utterance's vector is computed.

    Attributes:
        name: the readable part of the setup key (``"log-mel-statistics"``).
        identity: every constant the vectors depend on, and the code's version (``setup_key``'s identity).
        dim: values per vector.
        metadata: written into each cache file's header (strings).
        read: an utterance's whole waveform; raises ``SertoolError`` (naming the file) when it cannot.
        extractor: builds the function from a waveform to its vector (``dim`` values), once per pass.
        label: the progress task's name, formatted with the number of utterances computed.
    """

    name: str
    identity: Mapping[str, object]
    dim: int
    metadata: Mapping[str, str]
    read: Callable[[Window], Tensor]
    extractor: Callable[[], Callable[[Tensor], np.ndarray]]
    label: str


class AudioStatisticsCache(ItemCache[Window, Tensor]):
    """The statistics of whole utterances of one ``StatisticsSetup`` (an ``ItemCache``).

    Args:
        setup: what the vectors hold and how they are computed.
        cache_dir: sertool's cache folder (None: ``$SERTOOL_CACHE`` or ``~/.cache/sertool``).
    """

    GROUP_UTTERANCES = 2048  # a killed pass loses at most one group (~4 MB of rows)

    def __init__(self, setup: StatisticsSetup[Window], cache_dir: str | os.PathLike[str] | None = None) -> None:
        root = cache_root(cache_dir)
        codec = VectorCodec(tensor="statistics", dim=setup.dim, what="utterance statistics", metadata=setup.metadata)
        super().__init__(root / STATISTICS_CACHE_SUBDIR / setup_key(setup.name, setup.identity), codec,
                         group_size=self.GROUP_UTTERANCES, label=setup.label)
        self.setup = setup
        self.scan_cache_dir = cache_dir

    def keys(self, items: Sequence[Window]) -> list[str]:
        """The content key of each utterance's audio (a window of a file: of the file and the span)."""
        return audio_digests(items, scan_cache_dir=self.scan_cache_dir)

    def get(self, utterances: Sequence[Window], *, num_workers: int = 0,
            progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """``[N, dim]`` float64 statistics of ``utterances``; computes (``num_workers`` processes, 0: this
        one) and saves only those not cached.

        Raises:
            SertoolError: an audio file or a cache file cannot be read (naming it).
        """
        def compute(missing: list[Window]) -> list[Tensor]:
            return [torch.from_numpy(row) for row in compute_statistics(self.setup, missing, num_workers=num_workers)]

        rows = self._get(utterances, compute, progress=progress)
        return (torch.stack(rows).numpy() if rows else np.zeros((0, self.setup.dim))).astype(np.float64, copy=False)


class _StatisticsDataset(torch.utils.data.Dataset, Generic[Window]):
    """Each item: an utterance's statistics, or the message of the ``SertoolError`` reading its audio raised
    (an exception raised in a loader's worker reaches the main process wrapped in a traceback)."""

    def __init__(self, setup: StatisticsSetup[Window], utterances: Sequence[Window]) -> None:
        self.utterances = utterances
        self.read = setup.read
        self.extract = setup.extractor()

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> np.ndarray | str:
        try:
            waveform = self.read(self.utterances[index])
        except SertoolError as error:
            return str(error)
        return self.extract(waveform)


def compute_statistics(setup: StatisticsSetup[Window], utterances: Sequence[Window], *,
                       num_workers: int) -> list[np.ndarray]:
    """The statistics of each utterance, in order, one torch thread per process.

    One thread: the ops of one clip are too small to share between threads, and torch's hand-offs made a
    2-thread pass many times slower than a 1-thread one (docs/performance.md, benchmark 9); processes
    (``num_workers``) are what scale.

    Raises:
        SertoolError: an audio file cannot be read (naming it).
    """
    # Workers run one torch thread each. A generator of the loader's own: making its iterator must not draw
    # from the global RNG, or a run's initialisation and dropout would depend on whether it computed these.
    loader = torch.utils.data.DataLoader(_StatisticsDataset(setup, utterances), batch_size=None,
                                         num_workers=num_workers, worker_init_fn=quiet_worker,
                                         generator=torch.Generator())
    rows = []
    with _torch_threads(1):
        for row in loader:
            if isinstance(row, str):
                raise SertoolError(row)
            rows.append(np.asarray(row, dtype=np.float64))
    return rows


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
