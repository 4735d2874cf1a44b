"""What `sertool baseline` takes: its options dataclass, each field a flag (``sertool.core.config.option``, made
into flags by ``sertool.cli.flags``). Imports no torch."""
from __future__ import annotations

from dataclasses import dataclass

from sertool.core.config import DEFAULT_FLOOR_FEATURES, FLOOR_FEATURES, WORKERS, option
from sertool.core.splits import DEVELOPMENT, TRAIN


@dataclass
class BaselineOptions:
    """`sertool baseline`: the corpus, the splits the ridge is fitted and chosen on, where its outputs go."""

    corpus: str = option(None, "MSP-Podcast root or manifest.", metavar="ROOT", required=True)
    out: str = option(None, "Writes <split>.csv (predictions) and summary.json here.", metavar="DIR", required=True)
    train_split: str = option(TRAIN, "The split the ridge is fitted on.")
    valid_split: str = option(DEVELOPMENT, "The split that chooses the regularisation strength (by CCC, per "
                              "attribute).")
    features: str = option(DEFAULT_FLOOR_FEATURES, "What the ridge reads: sertool's log-mel statistics, or "
                           "openSMILE's eGeMAPSv02 (88) or ComParE_2016 (6,373) functionals (needs the opensmile "
                           "package).", choices=FLOOR_FEATURES)
    force: bool = option(False, "Overwrite earlier outputs in --out.")
    cache_dir: str | None = option(None, "Where the corpus scan and each clip's features are kept for the next "
                                   "command (default: $SERTOOL_CACHE or ~/.cache/sertool).")
    num_workers: int = option(2, "Processes that compute the features of clips not cached yet (0: this one).",
                              bounds=WORKERS)
