"""Parsing the values of one corpus row, shared by the MSP-Podcast and manifest readers.

Each parser returns the value or raises ``BadValue`` with a message; the readers turn that into a
dropped row that names the file and line.
"""
from __future__ import annotations

import math

from sertool.data.records import EMO_CLASSES, LABEL_MAX, LABEL_MIN

_CODES = {code: code for code in EMO_CLASSES}
_CLASS_NAMES = {name: code for code, name in EMO_CLASSES.items()}
# Common spellings of class names in other corpora's metadata.
_CLASS_NAMES.update({"anger": "A", "sadness": "S", "happiness": "H", "joy": "H", "surprised": "U",
                     "fearful": "F", "disgusted": "D", "contemptuous": "C", "no_agreement": "X"})
_GENDERS = {"male": "Male", "m": "Male", "female": "Female", "f": "Female"}
_UNKNOWN = {"", "unknown", "none", "nan", "n/a", "na", "-1"}


class BadValue(ValueError):
    """A value that makes its row unusable; the message says what is wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_label(text: str | None, column: str, *, required: bool) -> float | None:
    """A rater mean on MSP-Podcast's 1..7 scale; empty gives None unless ``required``."""
    text = (text or "").strip()
    if not text:
        if required:
            raise BadValue("missing label", f"{column} is empty")
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadValue("bad label", f"{column}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise BadValue("bad label", f"{column}={text} is not finite")
    if not LABEL_MIN <= value <= LABEL_MAX:
        raise BadValue("label out of range", f"{column}={text} is outside [{LABEL_MIN:g}, {LABEL_MAX:g}]")
    return value


def parse_class(text: str | None) -> str | None:
    """An EmoClass code (``N``) or a class name (``neutral``, ``anger``); empty gives None."""
    text = (text or "").strip()
    if not text:
        return None
    if text.upper() in EMO_CLASSES and len(text) == 1:
        # The code's one string, not a copy per row: a training run keeps every row's code (its sampler's), and
        # 100,000 copies would pin memory the scan freed around them.
        return _CODES[text.upper()]
    code = _CLASS_NAMES.get(text.lower())
    if code is None:
        known = ", ".join(f"{code} ({name})" for code, name in EMO_CLASSES.items())
        raise BadValue("unknown class", f"EmoClass {text!r} is not one of {known}")
    return code


def parse_gender(text: str | None) -> str | None:
    """``Male`` or ``Female``; anything else is unknown (None), as MSP-Podcast intends."""
    return _GENDERS.get((text or "").strip().lower())


def parse_speaker(text: str | None) -> str | None:
    """A speaker label; ``Unknown`` and empty give None."""
    text = (text or "").strip()
    return None if text.lower() in _UNKNOWN else text
