"""Which utterances train and which validate (the data options of the paper's Table 5), and which are
drawn for the speaker figure (``choose_utterances``).

O ("other") and X ("no agreement") utterances have A/V/D labels but no emotion class. They are usually
dropped; the paper finds they help, and studies: dropping the O/X of Train, dropping the non-O/X of Train,
and moving the O/X of Development into training (they then leave the validation set). Its best single
data setting combines the last two.

"− non-O/X (Train)" has two readings, and sertool offers both (docs/training.md says which the grid uses):
``only`` keeps Train's O/X utterances alone (about a fifth of Train); ``drop-as-many-non-ox`` drops a random
set of non-O/X utterances as large as the O/X set, so the training set is exactly as large as with
``drop`` and the two ablations differ only in *which* utterances are missing.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sertool.core.config import TRAIN_OX_CHOICES
from sertool.core.errors import SertoolError
from sertool.core.splits import DEVELOPMENT, TRAIN
from sertool.data.records import NO_CLASS_CODES, Utterance


@dataclass(frozen=True)
class Selection:
    """The training and validation utterances, with what was left out or moved, for the log.

    Attributes:
        train: the kept utterances of the training split in corpus order, then the moved validation O/X.
        valid: the validation split's labelled utterances that stayed there, in corpus order.
        train_ox_dropped: O/X utterances of the training split dropped by ``train_ox="drop"``.
        train_non_ox_dropped: other utterances of the training split dropped by ``train_ox="only"`` or
            ``"drop-as-many-non-ox"``.
        dev_ox_moved: O/X utterances moved from validation to training by ``dev_ox_to_train``.
        unlabeled_skipped: utterances of the two splits without all three A/V/D labels (used by neither).
    """

    train: list[Utterance]
    valid: list[Utterance]
    train_ox_dropped: int = 0
    train_non_ox_dropped: int = 0
    dev_ox_moved: int = 0
    unlabeled_skipped: int = 0

    def describe(self) -> str:
        """One line for the training log."""
        return (
            f"{len(self.train)} training / {len(self.valid)} validation utterances "
            f"(O/X dropped from training: {self.train_ox_dropped}; non-O/X dropped from training: "
            f"{self.train_non_ox_dropped}; O/X moved from validation to training: {self.dev_ox_moved}; "
            f"without labels, skipped: {self.unlabeled_skipped})"
        )


def is_ox(record: Utterance) -> bool:
    """Whether the utterance is O (other) or X (no agreement); a missing class code is not O/X."""
    return record.emo_class in NO_CLASS_CODES


def select(
    records: Sequence[Utterance],
    *,
    train_split: str = TRAIN,
    valid_split: str = DEVELOPMENT,
    train_ox: str = "keep",
    dev_ox_to_train: bool = False,
    seed: int = 0,
) -> Selection:
    """Split a corpus into training and validation utterances.

    Only utterances with all three A/V/D labels take part; the others are counted and skipped. O/X means
    EmoClass O or X; an utterance without a class code counts as non-O/X (it is not known to be O/X).

    Args:
        records: the whole corpus (other splits are ignored).
        train_split: the split to train on (``--train-split``).
        valid_split: the split to validate on (``--valid-split``).
        train_ox: ``"keep"`` every labelled training utterance; ``"drop"`` the O/X ones (the usual
            practice, "− O/X (Train)" in the paper); ``"only"`` keep only the O/X ones ("− non-O/X (Train)"
            read literally); ``"drop-as-many-non-ox"`` drop a random set of non-O/X utterances as large as
            the O/X set ("− non-O/X (Train)" at the training-set size of "− O/X (Train)").
        dev_ox_to_train: move the validation split's O/X utterances into training ("+ O/X (Development)");
            they then leave the validation set, which stays disjoint from training.
        seed: the random draw of ``"drop-as-many-non-ox"`` (the same seed, the same utterances).

    Returns:
        The ``Selection``.

    Raises:
        SertoolError: an unknown ``train_ox``; equal splits; a split with no labelled utterances; O/X
            options on a corpus without class codes; or options that leave training or validation empty.
            Messages name the flag.
    """
    if train_ox not in TRAIN_OX_CHOICES:
        raise SertoolError(f"train_ox (--train-ox) must be one of {', '.join(TRAIN_OX_CHOICES)}, got '{train_ox}'")
    if train_split == valid_split:
        raise SertoolError(
            f"train_split and valid_split (--train-split, --valid-split) are both '{train_split}': "
            "validation must be held out from training; choose two different splits"
        )
    splits_present = sorted({record.split for record in records})
    labeled_train = _labeled(records, train_split, "train_split (--train-split)", splits_present)
    labeled_valid = _labeled(records, valid_split, "valid_split (--valid-split)", splits_present)
    unlabeled = sum(record.split in (train_split, valid_split) for record in records)
    unlabeled -= len(labeled_train) + len(labeled_valid)

    ox_flags = [f"--train-ox {train_ox}"] * (train_ox != "keep") + ["--dev-ox-to-train"] * dev_ox_to_train
    if ox_flags and all(record.emo_class is None for record in labeled_train + labeled_valid):
        # Without class codes these options would silently do nothing (or empty the training set).
        raise SertoolError(
            f"{' and '.join(ox_flags)} need(s) EmoClass codes, but no utterance of '{train_split}' or "
            f"'{valid_split}' has one; leave these options at their defaults for this corpus"
        )

    ox_in_train = sum(is_ox(record) for record in labeled_train)
    if train_ox == "keep":
        train = list(labeled_train)
    elif train_ox == "drop-as-many-non-ox":
        non_ox = [index for index, record in enumerate(labeled_train) if not is_ox(record)]
        if ox_in_train > len(non_ox):
            raise SertoolError(
                f"--train-ox {train_ox} (train_ox): '{train_split}' has {ox_in_train} O/X but only {len(non_ox)} "
                "non-O/X utterances, too few to drop as many; use --train-ox only"
            )
        dropped = set(np.random.default_rng(seed).choice(non_ox, size=ox_in_train, replace=False).tolist())
        train = [record for index, record in enumerate(labeled_train) if index not in dropped]
    else:
        train = [record for record in labeled_train if is_ox(record) == (train_ox == "only")]
    moved = [record for record in labeled_valid if dev_ox_to_train and is_ox(record)]
    valid = [record for record in labeled_valid if not (dev_ox_to_train and is_ox(record))]

    if not train and not moved:
        kind = "O/X" if train_ox == "only" else "non-O/X"
        raise SertoolError(
            f"--train-ox {train_ox} (train_ox) left no training utterances: none of the {len(labeled_train)} "
            f"labelled '{train_split}' utterances is {kind}; use --train-ox keep or add --dev-ox-to-train"
        )
    if not valid:
        raise SertoolError(
            f"--dev-ox-to-train (dev_ox_to_train) moved all {len(labeled_valid)} labelled '{valid_split}' "
            "utterances into training, leaving nothing to validate on; drop the flag or choose another "
            "--valid-split"
        )
    return Selection(
        train=train + moved,
        valid=valid,
        train_ox_dropped=ox_in_train if train_ox == "drop" else 0,
        train_non_ox_dropped={"only": len(labeled_train) - ox_in_train, "drop-as-many-non-ox": ox_in_train}.get(
            train_ox, 0),
        dev_ox_moved=len(moved),
        unlabeled_skipped=unlabeled,
    )


# The fewest labelled clips training and validation each need, with labels that are not all the same: the
# floor's ridge fit and the feature standardisation need two rows, and a CCC (the loss, and the validation
# score that chooses best.pt and the ridge's alpha) is undefined over one clip or over identical labels.
MIN_LABELLED_CLIPS = 2


def require_enough_labels(selection: Selection, *, train_split: str = TRAIN, valid_split: str = DEVELOPMENT) -> None:
    """Refuse, before any work, a selection that nothing can be learnt from or chosen on (`train` and
    `baseline` alike): either side with fewer than ``MIN_LABELLED_CLIPS`` labelled clips, or with clips that
    all share one A/V/D label.

    Raises:
        SertoolError: naming the split, its flag, how many clips it has and how many it needs.
    """
    for utterances, flag, split, why in (
        (selection.train, "--train-split", train_split, "training learns from how the labels of clips differ"),
        (selection.valid, "--valid-split", valid_split, "a CCC over one clip, or over identical labels, is "
                                                          "undefined, so no checkpoint could be chosen on it"),
    ):
        labels = {utt.labels() for utt in utterances}
        if len(utterances) >= MIN_LABELLED_CLIPS and len(labels) > 1:
            continue
        found = f"{len(utterances)} labelled clip{'' if len(utterances) == 1 else 's'}"
        if len(utterances) >= MIN_LABELLED_CLIPS:
            found += ", all with the A/V/D labels " + "/".join(f"{value:g}" for value in labels.pop())
        raise SertoolError(f"{flag} {split}: {found}; it needs at least {MIN_LABELLED_CLIPS} labelled clips whose "
                           f"labels differ ({why})")


@dataclass(frozen=True)
class HeldOut:
    """The utterances a trained system may be scored on, and what was left out.

    Attributes:
        utterances: the given utterances the system did not train on, in their order.
        excluded: how many were left out because the system trained on them.
        known: False where the system's training data is unknown (predictions CSVs, checkpoints written
            before sertool recorded it): nothing could be left out, and a score should say so.
    """

    utterances: list[Utterance]
    excluded: int
    known: bool


# The checkpoint key that names the initial models (``train --init-from``) whose training data is unknown: an
# authors' released model, a hub model, a checkpoint older than ``training_ids``. Their utterances are not in
# the run's ``training_ids``, so a score "on held-out utterances" may include some of them.
UNKNOWN_TRAINING_DATA = "training_data_unknown_from"


def unknown_training_data(payload: dict[str, Any]) -> tuple[str, ...]:
    """The initial models of a checkpoint (or model folder) ``payload`` whose training data is unknown."""
    return tuple(str(name) for name in payload.get(UNKNOWN_TRAINING_DATA) or ())


def training_data_note(name: str, unknown_from: Sequence[str]) -> str | None:
    """The one line every score of a system started from a model of unknown training data carries (evaluate's
    table and JSON, ensemble's, reproduce's tables); None where there is no such model.

    Args:
        name: the system scored (a checkpoint, a grid system, "ensemble").
        unknown_from: the initial models whose training data is unknown (``unknown_training_data``).
    """
    if not unknown_from:
        return None
    initial = ", ".join(dict.fromkeys(unknown_from))
    return (f"{name}: started from {initial} (--init-from), whose training data is unknown: the held-out "
            "utterances scored may include some that model trained on")


def held_out(utterances: Sequence[Utterance], training_ids: frozenset[str] | None) -> HeldOut:
    """Leave out the utterances a system trained on (e.g. Development's O/X of a ``--dev-ox-to-train`` run).

    Args:
        utterances: a split to score on.
        training_ids: the ids the system trained on (a checkpoint's ``training_ids``); None: unknown.
    """
    if training_ids is None:
        return HeldOut(list(utterances), 0, known=False)
    kept = [utt for utt in utterances if utt.id not in training_ids]
    return HeldOut(kept, len(utterances) - len(kept), known=True)


def _labeled(records: Sequence[Utterance], split: str, flag: str, splits_present: list[str]) -> list[Utterance]:
    in_split = [record for record in records if record.split == split]
    needs = f"it needs at least {MIN_LABELLED_CLIPS} labelled clips"
    if not in_split:
        raise SertoolError(f"no utterance in split '{split}' ({flag}); splits present: {', '.join(splits_present)} "
                           f"({needs})")
    labeled = [record for record in in_split if record.has_labels]
    if not labeled:
        raise SertoolError(
            f"none of the {len(in_split)} utterances of split '{split}' ({flag}) has all three A/V/D labels; "
            f"choose a labelled split ({needs})"
        )
    return labeled


# How the speakers of `sertool data speakers`' figure are chosen (CLI: --speakers).
SPEAKER_CHOICES: tuple[str, ...] = ("random", "most-frequent")


def choose_utterances(utterances: Sequence[Utterance], *, num_speakers: int, per_speaker: int,
                      seed: int = 0, speakers: str = "random") -> list[Utterance]:
    """``per_speaker`` utterances of each of ``num_speakers`` speakers.

    Args:
        utterances: where to choose from (one split).
        num_speakers: how many speakers.
        per_speaker: utterances per speaker; only speakers with at least that many take part.
        seed: the random draw of speakers (``"random"``) and of each speaker's utterances.
        speakers: ``"random"``, a seeded draw among the speakers with enough utterances (the paper's 10
            random speakers), or ``"most-frequent"``, those with the most utterances (ties by name).

    Raises:
        SertoolError: an unknown ``speakers``, or fewer than two speakers have enough utterances.
    """
    if speakers not in SPEAKER_CHOICES:
        raise SertoolError(f"--speakers {speakers!r}: choose one of {', '.join(SPEAKER_CHOICES)}")
    by_speaker: dict[str, list[Utterance]] = defaultdict(list)
    for utt in utterances:
        if utt.speaker is not None:
            by_speaker[utt.speaker].append(utt)
    eligible = sorted((s for s, items in by_speaker.items() if len(items) >= per_speaker),
                      key=lambda s: (-len(by_speaker[s]), s))
    if len(eligible) < 2:
        raise SertoolError(f"fewer than two speakers have {per_speaker} utterances; lower --per-speaker")
    rng = np.random.default_rng(seed)
    if speakers == "random":
        # Sorted first so the draw depends on the seed, not on the corpus's row order.
        eligible = [eligible[index] for index in sorted(rng.choice(len(eligible), min(num_speakers, len(eligible)),
                                                                   replace=False))]
    else:
        eligible = eligible[:num_speakers]
    chosen: list[Utterance] = []
    for speaker in eligible:
        items = by_speaker[speaker]
        chosen.extend(items[index] for index in sorted(rng.choice(len(items), per_speaker, replace=False)))
    return chosen
