"""Turn any folder of audio plus a metadata CSV into a sertool manifest, with a speaker-disjoint split."""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sertool.core.errors import SertoolError
from sertool.core.io import DAMAGED_ROW, read_csv_records
from sertool.core.splits import HELD_OUT_SPLITS, TRAIN
from sertool.data.columns import ColumnMap
from sertool.data.fields import BadValue
from sertool.data.manifest import parse_manifest_row, write_manifest
from sertool.data.options import ManifestOptions
from sertool.data.records import ATTRIBUTES, LABEL_MAX, LABEL_MIN, Utterance
from sertool.data.report import LoadReport
from sertool.data.rows import Corpus, Progress, build_utterances
from sertool.guards.outputs import OutputPlan


def make_manifest(folder: str | Path, metadata: str | Path, options: ManifestOptions) -> Corpus:
    """`sertool data manifest`: ``metadata`` read (``import_metadata``, with ``options``' columns, label range,
    held-out fractions and seed) and written as the manifest ``options.out``, whose declaration is checked
    before anything is read.

    Returns:
        The manifest's corpus: its path, its utterances and the report of the rows dropped.

    Raises:
        SertoolError: ``out`` may not be written (``OutputPlan``), or as ``import_metadata``; no usable row.
    """
    outputs = OutputPlan(force=options.force)
    target = outputs.file(options.out, flag="--out")
    assert target is not None, "--out is required"
    utterances, report = import_metadata(folder, metadata, columns=options.columns, label_range=options.label_range,
                                         held_out_fractions=(options.dev_fraction, options.test_fraction),
                                         seed=options.seed)
    if not utterances:
        raise SertoolError(f"{metadata}: no usable rows ({report.summary()}); nothing written")
    with outputs.writing(target, newline="") as handle:
        write_manifest(utterances, handle, folder=target.parent, where=target)
    return Corpus(target, "manifest", utterances, report)


def import_metadata(
    folder: str | Path,
    metadata: str | Path,
    *,
    columns: ColumnMap,
    label_range: tuple[float, float] = (LABEL_MIN, LABEL_MAX),
    held_out_fractions: Sequence[float] = (0.15, 0.15),
    seed: int = 0,
    progress: Progress | None = None,
) -> tuple[list[Utterance], LoadReport]:
    """Read ``metadata`` (paths relative to ``folder``) into utterances.

    Args:
        folder: the folder the metadata's paths are relative to.
        metadata: a CSV with a header row.
        columns: the metadata column of each field (``ColumnMap.path`` is required).
        label_range: the scale of the metadata's A/V/D values; mapped linearly onto MSP-Podcast's 1..7
            (``(0, 1)`` turns x into 1 + 6x).
        held_out_fractions: shares of utterances for Development and Test1 when the metadata has no split
            column; speakers never cross splits.
        seed: seed of the speaker assignment.

    Returns:
        The utterances and a report of dropped rows (bad values, missing or unreadable audio, duplicates).

    Raises:
        SertoolError: the metadata is unreadable or lacks a named column (damaged lines are dropped rows).
    """
    folder, metadata = Path(folder), Path(metadata)
    if not folder.is_dir():
        raise SertoolError(f"{folder}: no such folder")
    low, high = label_range
    if not high > low:
        raise SertoolError(f"--label-range {low:g} {high:g}: the upper end must exceed the lower")
    report = LoadReport()
    rows = []
    named = {getattr(columns, spec.name): spec.metadata["flag"] for spec in dataclasses.fields(columns)
             if getattr(columns, spec.name) is not None}
    for line, record in read_csv_records(
        metadata, list(named), what="metadata CSV", flags=named,
        on_damage=lambda line, detail: report.drop(f"{metadata}:{line}", DAMAGED_ROW, detail),
    ):
        where = f"{metadata}:{line}"
        fields: dict[str, str | None] = {name: record[column] for name, column in dataclasses.asdict(columns).items()
                                         if column}
        fields.setdefault("split", HELD_OUT_SPLITS[0])  # placeholder until the speaker split below
        try:
            for name in ATTRIBUTES:
                fields[name] = _rescale(fields.get(name), name, low, high)
            rows.append(parse_manifest_row(fields, folder, where))
        except BadValue as error:
            report.drop(where, error.reason, error.detail)
    utterances = build_utterances(rows, report, progress=progress)
    if columns.split is None:
        utterances = speaker_disjoint_split(utterances, held_out_fractions, seed=seed)
    return utterances, report


def _rescale(text: str | None, name: str, low: float, high: float) -> str | None:
    """Map a value on [low, high] to 1..7, as text for the manifest parser (which checks it)."""
    text = (text or "").strip()
    if not text or (low, high) == (LABEL_MIN, LABEL_MAX):
        return text
    try:
        value = float(text)
    except ValueError:
        raise BadValue("bad label", f"{name}={text!r} is not a number") from None
    if not low <= value <= high:
        raise BadValue("label out of range", f"{name}={text} is outside --label-range [{low:g}, {high:g}]")
    # Four decimals: far below rater precision, and no float noise like 6.1899999999999995 in the manifest.
    return f"{LABEL_MIN + (LABEL_MAX - LABEL_MIN) * (value - low) / (high - low):.4f}"


def speaker_disjoint_split(
    utterances: Sequence[Utterance], held_out_fractions: Sequence[float], *, seed: int = 0
) -> list[Utterance]:
    """Assign Train / Development / Test1 so that no speaker is in two splits.

    Speakers are shuffled (by ``seed``) within each gender; each held-out split then takes, in that order,
    every speaker that still fits in its share of that gender's utterances (at least one speaker when its
    share is non-zero). Train keeps at least one speaker of every gender.
    An utterance with no speaker label counts as a speaker of its own.

    Raises:
        SertoolError: the fractions are negative or leave nothing for Train.
    """
    if any(fraction < 0 for fraction in held_out_fractions) or sum(held_out_fractions) >= 1:
        raise SertoolError(f"held-out fractions {list(held_out_fractions)} must be ≥ 0 and sum to less than 1")
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for index, utt in enumerate(utterances):
        by_speaker[utt.speaker if utt.speaker is not None else f"\0{utt.id}"].append(index)
    by_gender: dict[str, list[str]] = defaultdict(list)
    for speaker, indices in by_speaker.items():
        by_gender[utterances[indices[0]].gender or ""].append(speaker)

    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    for gender in sorted(by_gender):
        queue = sorted(by_gender[gender])
        rng.shuffle(queue)
        total = sum(len(by_speaker[speaker]) for speaker in queue)
        for split, fraction in zip(HELD_OUT_SPLITS, held_out_fractions, strict=True):
            chosen = _fill(queue, {speaker: len(by_speaker[speaker]) for speaker in queue}, fraction * total)
            split_of.update(dict.fromkeys(chosen, split))
            queue = [speaker for speaker in queue if speaker not in chosen]
        split_of.update(dict.fromkeys(queue, TRAIN))
    speaker_of = {index: speaker for speaker, indices in by_speaker.items() for index in indices}
    return [dataclasses.replace(utt, split=split_of[speaker_of[index]]) for index, utt in enumerate(utterances)]


def _fill(queue: list[str], sizes: dict[str, int], target: float) -> set[str]:
    """Speakers from ``queue`` (in order) whose sizes add up to at most ``target``; at least one (the
    smallest) when ``target`` > 0, never the last speaker of the queue."""
    chosen: set[str] = set()
    taken = 0
    for speaker in queue[:-1]:
        if taken + sizes[speaker] <= target:
            chosen.add(speaker)
            taken += sizes[speaker]
    if not chosen and target > 0 and len(queue) > 1:
        chosen.add(min(queue[:-1], key=lambda speaker: sizes[speaker]))
    return chosen
