"""Which metadata column holds each manifest field (`sertool data manifest`); import-light for the CLI."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sertool.core.config import option


def _column(flag: str, what: str, *, default: str | None = None) -> Any:
    """A ``ColumnMap`` field: its default column, and the flag that sets it, whose help says the column holds
    ``what``."""
    return option(default, f"Column with {what}.", flag=flag, metavar="NAME")


@dataclass
class ColumnMap:
    """Which metadata column holds each manifest field; None: the field is absent.

    Each field's ``flag`` metadata is the CLI option that sets it (used by the CLI and in messages).
    """

    path: str = _column("--path-column", "audio paths relative to FOLDER", default="path")
    id: str | None = _column("--id-column", "utterance ids (default: the file name)")
    split: str | None = _column("--split-column", "split names (default: a speaker-disjoint split is made)")
    arousal: str | None = _column("--arousal-column", "arousal values")
    valence: str | None = _column("--valence-column", "valence values")
    dominance: str | None = _column("--dominance-column", "dominance values")
    emo_class: str | None = _column("--class-column", "emotion classes (codes like N or names like neutral)")
    speaker: str | None = _column("--speaker-column", "speaker labels")
    gender: str | None = _column("--gender-column", "gender (male/female/m/f)")
    transcript: str | None = _column("--transcript-column", "transcripts")
