"""Utterance records packed into numpy columns: a ``Sequence[Utterance]`` without a Python object per utterance.

A training run holds its utterances from set-up to the end, and every data-loader worker is a fork of it. As
a list of ``Utterance`` objects, each record is a dozen Python objects (the instance, its dict, its strings,
floats and ``Path``): about 1 kB per utterance in the run's process, and a worker that reads an item writes
to the reference counts of its objects, which copies the memory pages they lie on into the worker (copy on
access), so over an epoch every worker ends up with its own copy of the records. ``PackedUtterances`` holds
the same records as a few arrays per field (the texts of a field in one UTF-8 buffer with the end of each,
repeated texts such as classes, speakers and folders as codes into their distinct values, numbers as float64
beside a mask of the present ones; an id that is its file's name, and a field that is always None, not stored):
the texts and numbers themselves, about 100 to 200 bytes per utterance, in objects that a worker only reads.
Item ``i`` is built anew on each read, equal to the record it was packed from.
"""
from __future__ import annotations

import operator
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, SupportsIndex, overload

import numpy as np

from sertool.data.records import ATTRIBUTES, Utterance

# A text field whose distinct values are at most this share of its values is stored as codes into them.
_CODED_SHARE = 0.25


def _present(values: Sequence[object]) -> np.ndarray | None:
    """Which of ``values`` are not None; None where all are."""
    present = np.fromiter((value is not None for value in values), dtype=bool, count=len(values))
    return None if present.all() else present


class _Absent:
    """A column whose every value is None (no spans, ids that are all their files' names): nothing stored."""

    def __getitem__(self, index: int) -> None:
        return None

    def nbytes(self) -> int:
        return 0


class _Texts:
    """A column of texts (or None): one UTF-8 buffer (file names keep their raw bytes) and where each ends."""

    def __init__(self, values: Sequence[str | None]) -> None:
        encoded = [b"" if value is None else value.encode("utf-8", "surrogateescape") for value in values]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        self.ends = np.cumsum(lengths, dtype=np.int32 if lengths.sum() < 2**31 else np.int64)
        self.data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.present = _present(values)

    def __getitem__(self, index: int) -> str | None:
        return None if self.present is not None and not self.present[index] else self.text(index)

    def text(self, index: int) -> str:
        """Text ``index`` (an empty one where it is None)."""
        start = int(self.ends[index - 1]) if index else 0
        return self.data[start:int(self.ends[index])].tobytes().decode("utf-8", "surrogateescape")

    def nbytes(self) -> int:
        return self.ends.nbytes + self.data.nbytes + (0 if self.present is None else self.present.nbytes)


class _Codes:
    """A column of texts that repeat (splits, classes, speakers, genders): codes into the distinct values."""

    def __init__(self, values: Sequence[str | None], distinct: list[str | None]) -> None:
        number = {value: code for code, value in enumerate(distinct)}
        self.values = tuple(distinct)
        self.codes = np.fromiter(map(number.__getitem__, values), dtype=np.min_scalar_type(max(len(distinct) - 1, 0)),
                                 count=len(values))

    def __getitem__(self, index: int) -> str | None:
        return self.values[self.codes[index]]

    def nbytes(self) -> int:
        return self.codes.nbytes


class _Numbers:
    """A column of floats (or None): float64 values and, where some are None, a mask of the present ones."""

    def __init__(self, values: Sequence[float | None]) -> None:
        self.present = _present(values)
        self.values = np.fromiter((0.0 if value is None else value for value in values), dtype=np.float64,
                                  count=len(values))

    def __getitem__(self, index: int) -> float | None:
        return None if self.present is not None and not self.present[index] else float(self.values[index])

    def nbytes(self) -> int:
        return self.values.nbytes + (0 if self.present is None else self.present.nbytes)


def _texts(values: Sequence[str | None]) -> _Texts | _Codes | _Absent:
    """The column of ``values``: codes where few are distinct, else texts; nothing where all are None."""
    distinct = list(dict.fromkeys(values))
    if distinct == [None]:
        return _Absent()
    return _Codes(values, distinct) if len(distinct) <= _CODED_SHARE * len(values) else _Texts(values)


def _numbers(values: Sequence[float | None]) -> _Numbers | _Absent:
    """The column of ``values``; nothing where all are None."""
    return _Absent() if all(value is None for value in values) else _Numbers(values)


class PackedTexts(Sequence[str]):
    """Texts packed as one UTF-8 buffer (a run's training ids): a ``Sequence[str]`` without a Python object per
    text; each read decodes its text anew."""

    def __init__(self, texts: Sequence[str]) -> None:
        self._texts = _Texts(texts)
        self._length = len(texts)

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: SupportsIndex) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: SupportsIndex | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(self._length))]
        return self._texts.text(_position(index, self._length))

    def __iter__(self) -> Iterator[str]:
        return map(self.__getitem__, range(self._length))


def _position(index: SupportsIndex, length: int) -> int:
    """``index`` as a position in ``[0, length)`` (negative: from the end)."""
    position = operator.index(index)
    if position < 0:
        position += length
    if not 0 <= position < length:
        raise IndexError(f"item {operator.index(index)} of {length}")
    return position


_TEXTS = ("split", "emo_class", "speaker", "gender", "transcript")
_NUMBERS = ("duration_s", *ATTRIBUTES)
# The fields packed: every field of Utterance (audio_path a text, span_s two numbers; tests/test_memory.py checks).
PACKED_FIELDS = ("id", *_TEXTS, *_NUMBERS, "audio_path", "span_s")


class PackedUtterances(Sequence[Utterance]):
    """``utterances`` packed into numpy columns (see the module); reads give back equal ``Utterance`` records,
    ``audio_path`` always a ``Path``. Packing packed utterances shares their columns."""

    def __init__(self, utterances: Sequence[Utterance]) -> None:
        if isinstance(utterances, PackedUtterances):
            self._columns: dict[str, Any] = utterances._columns
            self._length = len(utterances)
            return
        records = list(utterances)
        self._length = len(records)
        self._columns = {name: _texts([getattr(utt, name) for utt in records]) for name in _TEXTS}
        self._columns.update({name: _numbers([getattr(utt, name) for utt in records]) for name in _NUMBERS})
        # A path as its folder (a few distinct ones: codes) and its file name.
        paths = [os.path.split(os.fspath(utt.audio_path)) for utt in records]
        self._columns["audio_folder"] = _texts([folder for folder, _ in paths])
        self._columns["audio_name"] = _Texts([name for _, name in paths])
        # An id is most often its file's name (MSP-Podcast's always): stored only where it is not (None here).
        self._columns["id"] = _texts([None if utt.id == name else utt.id
                                      for utt, (_, name) in zip(records, paths, strict=True)])
        spans = [utt.span_s for utt in records]
        self._columns["span_start_s"] = _numbers([None if span is None else span[0] for span in spans])
        self._columns["span_end_s"] = _numbers([None if span is None else span[1] for span in spans])

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: SupportsIndex) -> Utterance: ...

    @overload
    def __getitem__(self, index: slice) -> list[Utterance]: ...

    def __getitem__(self, index: SupportsIndex | slice) -> Utterance | list[Utterance]:
        if isinstance(index, slice):
            return [self._record(position) for position in range(*index.indices(self._length))]
        return self._record(_position(index, self._length))

    def __iter__(self) -> Iterator[Utterance]:
        return map(self._record, range(self._length))

    def durations_s(self) -> np.ndarray:
        """Every utterance's ``duration_s``, as one read-only float64 array (no record built)."""
        column = self._columns["duration_s"]
        durations = column.values.view() if isinstance(column, _Numbers) else np.full(self._length, np.nan)
        durations.flags.writeable = False
        return durations

    def nbytes(self) -> int:
        """Bytes the columns' arrays hold (what the records cost, beside a few objects per field)."""
        return sum(column.nbytes() for column in self._columns.values())

    def _record(self, position: int) -> Utterance:
        columns = self._columns
        start_s = columns["span_start_s"][position]
        span_s = None if start_s is None else (start_s, columns["span_end_s"][position])
        name, own_id = columns["audio_name"][position], columns["id"][position]
        return Utterance(id=name if own_id is None else own_id,
                         audio_path=Path(os.path.join(columns["audio_folder"][position], name)), span_s=span_s,
                         **{field: columns[field][position] for field in (*_TEXTS, *_NUMBERS)})
