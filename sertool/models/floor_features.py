"""The floor's features, by name (``core.config.FLOOR_FEATURES``): which utterance-level vector the ridge floor
regresses on.

- ``logmel``: sertool's log-mel statistics (``models.utterance_stats``; no extra package, what the floor has
  always read);
- ``egemaps``, ``compare``: openSMILE's eGeMAPSv02 and ComParE_2016 functionals (``models.opensmile_features``;
  the optional ``opensmile`` package), the features SER papers report their linear baselines on.

Each is a ``StatisticsSetup``, so every one is computed from the clip as sertool reads it (16 kHz mono), cached by
audio content under ``<cache_dir>/utterance-stats/<setup_key>/`` and filled by the same worker processes.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from sertool.cache.statistics import AudioStatisticsCache, StatisticsSetup
from sertool.core.config import DEFAULT_FLOOR_FEATURES, FLOOR_FEATURES
from sertool.core.errors import SertoolError
from sertool.data.records import Utterance
from sertool.models.opensmile_features import opensmile_setup
from sertool.models.utterance_stats import statistics_setup


def floor_feature_setup(features: str) -> StatisticsSetup[Utterance]:
    """What ``features`` (one of ``FLOOR_FEATURES``) holds and how one clip's vector is computed.

    Raises:
        SertoolError: a name outside ``FLOOR_FEATURES``, or an openSMILE feature set without the ``opensmile``
            package (naming it).
    """
    if features not in FLOOR_FEATURES:
        raise SertoolError(f"--features {features!r}: not a feature set; choose one of {', '.join(FLOOR_FEATURES)}")
    return statistics_setup() if features == DEFAULT_FLOOR_FEATURES else opensmile_setup(features)


def floor_feature_rows(utterances: Sequence[Utterance], setup: StatisticsSetup[Utterance], *,
                       cache_dir: str | os.PathLike[str] | None = None, num_workers: int = 0,
                       progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``[N, setup.dim]`` float64 vectors of whole utterances (read at 16 kHz, mono), from the cache where it has
    them; those missing are computed in ``num_workers`` processes (0: this one) and saved.

    Raises:
        SertoolError: an audio file or a cache file cannot be read (naming it).
    """
    return AudioStatisticsCache(setup, cache_dir).get(utterances, num_workers=num_workers, progress=progress)
