"""The typed record of one utterance, shared by every reader and command."""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sertool.core.constants import ATTRIBUTES

# MSP-Podcast's column for each attribute, in ATTRIBUTES order (arousal: EmoAct, valence: EmoVal, dominance: EmoDom).
ATTRIBUTE_COLUMNS: dict[str, str] = dict(zip(ATTRIBUTES, ("EmoAct", "EmoVal", "EmoDom"), strict=True))
# Rater means lie on a 1..7 scale.
LABEL_MIN, LABEL_MAX = 1.0, 7.0

# MSP-Podcast EmoClass codes. O and X carry A/V/D labels but no categorical class.
EMO_CLASSES: dict[str, str] = {
    "A": "angry", "S": "sad", "H": "happy", "U": "surprise", "F": "fear", "D": "disgust",
    "C": "contempt", "N": "neutral", "O": "other", "X": "no agreement",
}
NO_CLASS_CODES = frozenset({"O", "X"})
# The header of MSP-Podcast's Labels/labels_consensus.csv (read by data.msp, written by data.demo).
MSP_LABELS_HEADER: tuple[str, ...] = ("FileName", "EmoClass", *ATTRIBUTE_COLUMNS.values(), "SpkrID", "Gender",
                                      "Split_Set")
GENDERS: tuple[str, ...] = ("Male", "Female")


@dataclass(frozen=True)
class Utterance:
    """One utterance of a corpus.

    Attributes:
        id: the corpus' file name, e.g. ``MSP-PODCAST_0001_0008.wav`` (what submissions are keyed by).
        audio_path: absolute path of the audio file.
        split: one of ``SPLITS`` for MSP-Podcast; any name for a manifest.
        duration_s: length read from the file header.
        arousal, valence, dominance: rater means on 1..7, or None where withheld (Test3).
        emo_class: an ``EMO_CLASSES`` code, or None where unknown.
        speaker: speaker label, or None where unknown.
        gender: ``"Male"``, ``"Female"`` or None where unknown.
        transcript: one line of text, or None where the corpus has none.
        span_s: ``(start_s, end_s)`` of a window of the audio file (a stretch of a long file that
            `predict` cuts into windows; ``duration_s`` is then ``end_s - start_s``), or None for the whole
            file. Readers read exactly the span, never past its end.
    """

    id: str
    audio_path: Path
    split: str
    duration_s: float
    arousal: float | None = None
    valence: float | None = None
    dominance: float | None = None
    emo_class: str | None = None
    speaker: str | None = None
    gender: str | None = None
    transcript: str | None = None
    span_s: tuple[float, float] | None = None

    @classmethod
    def many(cls, **columns: Sequence[Any]) -> list[Utterance]:
        """The utterances whose fields are given as equal-length columns (a field left out takes its default),
        the same as calling ``Utterance(...)`` once per row, without the frozen dataclass' ``__init__``
        (a call per field): a warm start on MSP-Podcast builds 150,000 from a corpus snapshot, where that
        ``__init__`` costs a third more than filling each instance's attributes in one update.

        Raises:
            ValueError: a column names no field, a field without a default is missing, or the columns differ
                in length.
        """
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = set(columns) - set(fields)
        missing = [name for name, field in fields.items()
                   if name not in columns and field.default is dataclasses.MISSING]
        if unknown or missing:
            raise ValueError(f"Utterance.many: unknown columns {sorted(unknown)}, missing columns {missing}")
        if len({len(column) for column in columns.values()}) > 1:
            raise ValueError("Utterance.many: columns of different lengths")
        names = list(fields)
        rows = zip(*(columns[name] if name in columns else itertools.repeat(fields[name].default) for name in names),
                   strict=False)  # the defaults repeat; the columns' lengths were checked above
        new = object.__new__
        utterances = []
        for row in rows:
            utterance = new(cls)
            utterance.__dict__.update(zip(names, row, strict=True))
            utterances.append(utterance)
        return utterances

    @property
    def has_labels(self) -> bool:
        """Whether all three attributes are present."""
        # Spelt out, not a loop over ATTRIBUTES: corpus summaries ask this of 150,000 utterances.
        return self.arousal is not None and self.valence is not None and self.dominance is not None

    def window(self, start_s: float, end_s: float, *, id: str) -> Utterance:
        """The stretch ``[start_s, end_s)`` of this utterance (seconds from its start) as an utterance of its
        own, named ``id``, with the same labels and transcript."""
        base_s = self.span_s[0] if self.span_s is not None else 0.0
        return replace(self, id=id, span_s=(base_s + start_s, base_s + end_s), duration_s=end_s - start_s)

    def labels(self) -> tuple[float, float, float]:
        """The attributes in ``ATTRIBUTES`` order; raises ``ValueError`` where withheld."""
        if not self.has_labels:
            raise ValueError(f"{self.id} has no A/V/D labels (split {self.split})")
        # The ignore below: has_labels just checked that none of the three is None.
        return (self.arousal, self.valence, self.dominance)  # type: ignore[return-value]
