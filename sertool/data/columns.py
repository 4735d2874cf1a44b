"""Which metadata column holds each manifest field (`sertool data manifest`); import-light for the CLI."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ColumnMap:
    """Which metadata column holds each manifest field; None: the field is absent.

    Each field's ``flag`` metadata is the CLI option that sets it (used by the CLI and in messages).
    """

    path: str = field(default="path", metadata={"flag": "--path-column", "help": "audio paths relative to FOLDER"})
    id: str | None = field(default=None, metadata={"flag": "--id-column", "help": "utterance ids (default: the file name)"})
    split: str | None = field(default=None, metadata={"flag": "--split-column", "help": "split names (default: a speaker-disjoint split is made)"})
    arousal: str | None = field(default=None, metadata={"flag": "--arousal-column", "help": "arousal values"})
    valence: str | None = field(default=None, metadata={"flag": "--valence-column", "help": "valence values"})
    dominance: str | None = field(default=None, metadata={"flag": "--dominance-column", "help": "dominance values"})
    emo_class: str | None = field(default=None, metadata={"flag": "--class-column", "help": "emotion classes (codes like N or names like neutral)"})
    speaker: str | None = field(default=None, metadata={"flag": "--speaker-column", "help": "speaker labels"})
    gender: str | None = field(default=None, metadata={"flag": "--gender-column", "help": "gender (male/female/m/f)"})
    transcript: str | None = field(default=None, metadata={"flag": "--transcript-column", "help": "transcripts"})
