"""What `sertool data info` and `sertool data manifest` take: one options dataclass per command, each field its
flag (``sertool.core.config.option``, made into flags by ``sertool.cli.flags``). Imports no torch."""
from __future__ import annotations

from dataclasses import dataclass, field

from sertool.core.config import PROBABILITY, SEED, Bounds, option
from sertool.data.columns import ColumnMap
from sertool.data.records import LABEL_MAX, LABEL_MIN


@dataclass
class InfoOptions:
    """`sertool data info`: the corpus to summarise."""

    corpus: str = option(None, "The corpus (same as the ROOT argument).", metavar="ROOT", argument="ROOT")
    cache_dir: str | None = option(None, "Where what the scan read (durations, transcripts) is kept for the next "
                                   "command (default: $SERTOOL_CACHE or ~/.cache/sertool).")
    as_json: bool = option(False, "Print the numbers as JSON on stdout instead of the tables.", flag="--json")


@dataclass
class ManifestOptions:
    """`sertool data manifest`: the manifest to write from a folder of audio and a metadata CSV
    (``sertool.data.importer.make_manifest``)."""

    out: str = option(None, "The manifest to write.", metavar="CSV", required=True)
    columns: ColumnMap = field(default_factory=ColumnMap)
    label_range: tuple[float, float] = option((LABEL_MIN, LABEL_MAX), "Scale of the A/V/D columns, mapped linearly "
                                              "onto 1..7 (e.g. 0 1 for values in 0..1).", bounds=Bounds(),
                                              metavar="LOW HIGH")
    dev_fraction: float = option(0.15, "Share of utterances for Development, in [0, 1).", bounds=PROBABILITY)
    test_fraction: float = option(0.15, "Share of utterances for Test1, in [0, 1).", bounds=PROBABILITY)
    seed: int = option(0, "Seed of the speaker assignment.", bounds=SEED)
    force: bool = option(False, "Overwrite --out if it exists.")
