"""What `sertool reproduce` and `sertool data speakers` take: one options dataclass per command, each field its
flag (``sertool.core.config.option``, made into flags by ``sertool.cli.flags``). Imports no torch."""
from __future__ import annotations

from dataclasses import dataclass

from sertool.core.config import DEFAULT_DEVICE, DEVICE_CHOICES, SEED, Bounds, option
from sertool.core.splits import TRAIN
from sertool.data.selection import SPEAKER_CHOICES
from sertool.experiments.grid import PARTS, SCALES

_AT_LEAST_TWO = Bounds(at_least=2)


@dataclass
class SpeakersOptions:
    """`sertool data speakers`: which utterances of which speakers, embedded by which model, and the figure."""

    corpus: str = option(None, "MSP-Podcast root or manifest.", metavar="ROOT", required=True)
    split: str = option(TRAIN, "Where the utterances come from.")
    speaker_model: str = option("microsoft/wavlm-base-plus-sv", "Hub id or folder of an x-vector model, or "
                                "log-mel-stats (no download).")
    num_speakers: int = option(10, "Speakers to plot (at least 2).", bounds=_AT_LEAST_TWO)
    speaker_choice: str = option("random", "A seeded random draw of speakers (the paper's), or those with the most "
                                 "utterances.", choices=SPEAKER_CHOICES, flag="--speakers")
    per_speaker: int = option(10, "Utterances per speaker (at least 2: the Fisher ratio needs a spread within each "
                              "speaker).", bounds=_AT_LEAST_TWO)
    out: str = option(None, "The figure to write.", metavar="PNG", required=True)
    seed: int = option(0, "Which speakers and utterances are drawn.", bounds=SEED)
    force: bool = option(False, "Overwrite --out.")


@dataclass
class ReproduceOptions:
    """`sertool reproduce`: the grid, the corpus and scale it runs at, how often, and where its outputs go."""

    corpus: str = option(None, "The corpus every system trains and is evaluated on.", metavar="ROOT", required=True)
    grid: str | None = option(None, "The experiment grid (default: the paper's, shipped with sertool: "
                              "sertool/configs/paper/grid.yaml).", metavar="FILE")
    scale: str = option("demo", "demo: CPU stand-ins for the pretrained models; real: the paper's models.",
                        choices=SCALES)
    out: str = option("results/demo", "runs/, predictions/, scores/ and tables.md go here.", metavar="DIR")
    seeds: int = option(1, "Train every system N times (seeds s … s+N−1); the tables show mean ± sd over them.",
                        bounds=Bounds(at_least=1, at_most=100), metavar="N")
    tables: str = option("paper", "Which tables: the paper's (paper), the variants that measure what it leaves open "
                         "and what the authors' release does differently (variants), or all.",
                         choices=(*PARTS, "all"))
    systems: str | None = option(None, "Only these systems of those tables (and ensembles made of them).",
                                 metavar="A,B,...")
    models: tuple[str, ...] = option((), "Real scale without hub access: load hub id ID from folder DIR "
                                     "(repeatable).", flag="--model", metavar="ID=DIR")
    device: str = option(DEFAULT_DEVICE, "Where every system trains and predicts.", choices=DEVICE_CHOICES)
