"""Facts every layer shares, each declared once here (tests/test_facts.py finds any second spelling of them)."""
from __future__ import annotations

from collections.abc import Iterable

SAMPLE_RATE = 16_000  # Hz; every speech backbone sertool supports was pre-trained at 16 kHz.

# The emotion attributes, in the order A, V, D everywhere in sertool, and always addressed by name. The
# official baseline's internal order is [A, D, V]; positional guesswork between the two is a classic silent bug.
ATTRIBUTES: tuple[str, ...] = ("arousal", "valence", "dominance")
# What a score row holds: the CCC of each attribute, then their mean (the challenge's ranking score). A system of
# fewer attributes (train.attributes) has the CCC of each of its own, and "average" is the mean of those.
SCORE_NAMES: tuple[str, ...] = (*ATTRIBUTES, "average")

# The files of a run folder that more than the training loop reads or writes (the loop writes them; reproduce,
# the console, plot and the model store read them), and of a model folder.
CONFIG_NAME = "config.yaml"  # the resolved config of a run: a --config file for a new run
METRICS_NAME = "metrics.jsonl"  # one JSON line per logged step and per validation
SUMMARY_NAME = "summary.json"  # how a run ended (train), or what a baseline fitted (sertool baseline's --out)
ARGV_NAME = "argv.txt"  # the command line that started the run
BEST_NAME = "best.pt"  # the checkpoint of the best validation: what a run folder means as a model
LAST_NAME = "last.pt"  # the latest state, optimiser and samplers included: what --resume continues
MODEL_CONFIG_NAME = "config.json"  # a model folder's description: sertool's (sertool export) and the hub's alike


def attribute_subset(names: Iterable[str]) -> tuple[str, ...]:
    """``names``, a set of attributes a system predicts (``train.attributes``, a checkpoint's ``attributes``), in
    ``ATTRIBUTES`` order: the order of every column a system outputs, whatever order they were given in.

    Raises:
        ValueError: no name, an unknown name or one given twice (the message says which; callers name where).
    """
    names = list(names)
    unknown = [name for name in names if name not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"{', '.join(map(str, unknown))} is not one of {', '.join(ATTRIBUTES)}")
    repeated = sorted({name for name in names if names.count(name) > 1}, key=ATTRIBUTES.index)
    if repeated:
        raise ValueError(f"{', '.join(repeated)} is named twice")
    if not names:
        raise ValueError(f"no attribute: give one or more of {', '.join(ATTRIBUTES)}")
    return tuple(name for name in ATTRIBUTES if name in names)
