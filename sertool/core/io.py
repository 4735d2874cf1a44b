"""The text formats every command shares: strict JSON, and CSV files read one row per line.

Files are opened through the read guard (``sertool.guards.reads``) and written through the output guard
(``sertool.guards.outputs``); this module only parses and formats.
"""
from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from sertool.core.errors import SertoolError
from sertool.guards.reads import MAX_JSON_BYTES, MAX_TABLE_BYTES, open_user_file, read_user_text


def write_json_document(document: Any, handle: IO[str]) -> None:
    """Write ``document`` as strict JSON (a non-finite number becomes ``null``) to a text stream (a file being
    committed through ``OutputPlan.writing``, or ``sys.stdout``); indented, one trailing newline."""
    handle.write(json.dumps(_strict(document), indent=2, ensure_ascii=False) + "\n")
    handle.flush()


def _strict(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, Mapping):
        return {str(key): _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return value


def load_json(path: str | Path, *, what: str):
    """Parse the JSON file ``path``; ``what`` names it in errors ("ensemble plan").

    Raises:
        SertoolError: missing, unreadable or not JSON.
    """
    path = Path(path)
    text = read_user_text(path, what=what, max_bytes=MAX_JSON_BYTES)  # a byte-order mark (some editors) is fine
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SertoolError(f"{path}: not a readable JSON {what} ({error})") from None


# How many characters of an id a message shows: a 4,000-character id makes a message no one can read.
QUOTED_CHARS = 100
# What a damaged CSV row is reported as, by readers that drop bad rows instead of refusing the file.
DAMAGED_ROW = "damaged row"
# The longest field a CSV line may hold (the csv module's default limit): a longer one is damage, e.g. a
# binary file read as CSV; ``csv_text`` refuses to write one.
MAX_CSV_FIELD_CHARS = 128 * 1024


def read_csv_records(
    path: str | Path,
    required: Sequence[str | tuple[str, ...]] = (),
    *,
    what: str,
    hint: str = "",
    flags: Mapping[str, str] | None = None,
    on_damage: Callable[[int, str], None] | None = None,
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line number, row)`` for each data row of a CSV file whose first line is a header.

    sertool's CSV files (labels, manifests, metadata, transcripts, predictions) hold one row per line,
    and every row has one field per header column. Each line is parsed on its own, so damage stays on
    its line: a stray ``"`` would otherwise open a quoted field that swallows every following row (the
    csv module reads on to the next quote, through line breaks), and an unquoted comma would shift the
    columns after it. A damaged line, one with an unclosed quote, text after a closing quote, a field
    count that differs from the header's, a NUL byte or a field over ``MAX_CSV_FIELD_CHARS``, is reported
    through ``on_damage`` and skipped; without ``on_damage`` it is an error. Blank lines are skipped.

    The dialect, which ``csv_text`` writes: fields are separated by commas; an unquoted field is read
    stripped of surrounding white space (a hand-edited ``a.wav, 3.1``); a quoted field (``"..."``, a
    ``"`` inside doubled) is read exactly as written between its quotes, commas and spaces included.

    Args:
        path: the CSV file (UTF-8, with or without a byte-order mark; any line endings).
        required: columns the header must have; a tuple of names is satisfied by any one of them.
        what: how errors name the file ("labels file", "manifest").
        hint: what the header should hold, appended to the missing-column error.
        flags: column → the command-line flag that named it, for the missing-column error.
        on_damage: ``(line number, what is wrong)`` for each damaged line; None: raise instead.

    Yields:
        The line number (1 is the header) and the row as column → text (never None).

    Raises:
        SertoolError: the file is missing, unreadable or not UTF-8 text; its header is empty, damaged,
            repeats a column or lacks a required one; or (without ``on_damage``) a line is damaged.
    """
    path = Path(path)
    try:
        with open_user_file(path, newline="", encoding="utf-8-sig", what=what, max_bytes=MAX_TABLE_BYTES) as handle:
            lines = enumerate(handle, start=1)
            number, text = next(((number, text) for number, text in lines if text.strip()), (0, ""))
            if not number:
                raise SertoolError(f"{path}: the {what} is empty (no header row)")
            header = _split_csv_line(text)
            if isinstance(header, str):
                raise SertoolError(f"{path}:{number}: the header row is damaged: it {header}")
            header = [name.strip() for name in header]
            _check_header(path, header, required, hint=hint, flags=flags or {})
            for number, text in lines:
                if not text.strip():
                    continue
                fields = _split_row(text, len(header))
                if isinstance(fields, str):
                    if on_damage is None:
                        raise SertoolError(f"{path}:{number}: the row {fields}")
                    on_damage(number, fields)
                    continue
                yield number, dict(zip(header, fields, strict=True))
    except UnicodeDecodeError as error:
        raise SertoolError(f"{path}: the {what} is not UTF-8 text ({error.reason} at byte "
                           f"{error.start}); save it as UTF-8") from None
    except OSError as error:
        raise SertoolError(f"{path}: cannot read the {what} ({error.strerror or error})") from None


def _split_csv_line(text: str) -> list[str] | str:
    """The fields of one CSV line (the dialect of ``read_csv_records``), or what is wrong with the line."""
    if "\0" in text:
        return "holds a NUL byte (a binary or damaged file?)"
    line = text.rstrip("\r\n")
    fields = _split_quoted(line) if '"' in line else [field.strip() for field in line.split(",")]
    if isinstance(fields, list) and any(len(field) > MAX_CSV_FIELD_CHARS for field in fields):
        return f"holds a field longer than the field limit ({MAX_CSV_FIELD_CHARS:,} characters)"
    return fields


# One field and the comma after it (or the line's end): quoted, with white space around the quotes allowed,
# or unquoted (everything up to the next comma).
_QUOTED_FIELD = re.compile(r'\s*"(?P<text>(?:[^"]|"")*)"\s*(?P<end>,|\Z)')
_UNQUOTED_FIELD = re.compile(r"(?P<text>[^,]*)(?P<end>,|\Z)")
_CLOSED_QUOTE = re.compile(r'\s*"(?:[^"]|"")*"')


def _split_quoted(line: str) -> list[str] | str:
    """The fields of a line that holds a ``"``, or what is wrong with it."""
    fields: list[str] = []
    position = 0
    while True:
        match = _QUOTED_FIELD.match(line, position)
        if match:
            fields.append(match["text"].replace('""', '"'))
        else:
            match = _UNQUOTED_FIELD.match(line, position)
            assert match is not None  # it matches any text, the empty text included
            if match["text"].lstrip().startswith('"'):  # a quote opens the field but does not close it
                if _CLOSED_QUOTE.match(line, position):
                    return (f"has text after the closing quote of field {len(fields) + 1}; quote the whole field, "
                            'doubling any " inside it')
                return (f'opens a quote (") in field {len(fields) + 1} that is never closed on its line (a stray '
                        "quote?); remove it, or close it")
            fields.append(match["text"].strip())
        if not match["end"]:
            return fields
        position = match.end()


def _split_row(text: str, num_columns: int) -> list[str] | str:
    """The fields of one data line, one per header column, or what is wrong with the line."""
    fields = _split_csv_line(text)
    if isinstance(fields, list) and len(fields) != num_columns:
        return (f"has {len(fields)} field{'s' if len(fields) != 1 else ''} where the header has "
                f"{num_columns} (an unquoted comma, or a missing one?)")
    return fields


def _check_header(path: Path, header: list[str], required: Sequence[str | tuple[str, ...]], *, hint: str,
                  flags: Mapping[str, str]) -> None:
    repeated = [name for name, count in Counter(header).items() if count > 1]
    if repeated:
        raise SertoolError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header; "
                           "keep one of each")
    missing = []
    for column in required:
        options = column if isinstance(column, tuple) else (column,)
        if not any(option in header for option in options):
            name = " or ".join(options)
            missing.append(f"{name} ({flags[column]})" if isinstance(column, str) and column in flags else name)
    if missing:
        raise SertoolError(f"{path}: missing column(s) {', '.join(missing)}; its columns are "
                           f"{', '.join(header) or 'none'}" + (f"; {hint}" if hint else ""))


def csv_text(header: Sequence[str], rows: Iterable[Sequence[str]], *, destination: str | Path | IO[str]) -> str:
    """A whole CSV file in the dialect ``read_csv_records`` reads: the header line, then one line per row.

    Every sertool CSV is written through here, so that what it writes is what it reads: a field is quoted
    (a ``"`` inside doubled) when it holds a comma or a ``"``, or has white space at either end (the reader
    strips unquoted fields), or is empty and its line's only field (which would read as a blank line).
    Anything else is written as it is: non-ASCII, ``\\xNN`` escapes, a leading ``=``, ``+``, ``-`` or ``@``.

    Args:
        header: the column names.
        rows: one text per column each.
        destination: where the text goes, for the error message (a path or a text stream).

    Returns:
        The file's text, every line ending in ``\\n``; nothing is written before every field is known to be
        writable.

    Raises:
        SertoolError: a field a CSV line cannot hold (a line break, a carriage return, a NUL byte, more
            than ``MAX_CSV_FIELD_CHARS`` characters, or text that is not valid Unicode), naming the
            destination, the column and the field.
    """
    return "".join(_csv_line(cells, header, destination) for cells in itertools.chain([header], rows))


def _csv_line(cells: Sequence[str], header: Sequence[str], destination: str | Path | IO[str]) -> str:
    fields = []
    for column, cell in zip(header, cells, strict=True):
        problem = _unwritable(cell)
        if problem:
            raise SertoolError(f"{destination_name(destination)}: cannot write {column} {quoted(cell)}: it {problem}; "
                               "nothing was written")
        needs_quotes = "," in cell or '"' in cell or cell != cell.strip() or (not cell and len(header) == 1)
        escaped = cell.replace('"', '""')
        fields.append(f'"{escaped}"' if needs_quotes else cell)
    return ",".join(fields) + "\n"


def _unwritable(cell: str) -> str | None:
    """Why ``cell`` cannot be one field of a CSV line, or None."""
    for character, name in (("\n", "a line break"), ("\r", "a carriage return"), ("\0", "a NUL byte")):
        if character in cell:
            return f"holds {name}, which no one-line CSV row can hold; rename the file"
    if len(cell) > MAX_CSV_FIELD_CHARS:
        return f"is longer than the field limit of a CSV line ({MAX_CSV_FIELD_CHARS:,} characters)"
    try:
        cell.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode text (a file name's undecodable bytes?); rename the file"
    return None


def destination_name(destination: str | Path | IO[str]) -> str:
    """How a message names where output goes: a path as given, a stream by its name (``<stdout>``)."""
    return str(destination) if isinstance(destination, (str, Path)) else getattr(destination, "name", "output")


class SeenIds:
    """Where each id of one input was first read: the one rule for an id read twice.

    A later row never silently replaces an earlier one. An input read whole (a predictions or transcripts
    file, an ensemble plan, the inputs of one command) refuses the repeat, naming both places
    (``refuse_repeat``); a corpus (labels file, manifest, metadata) drops the repeat and names it in its
    report (``repeat_of``), keeping the first.

    Args:
        what: how messages name an id, e.g. ``"FileName"`` or ``"input"``.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._first: dict[str, str] = {}

    def repeat_of(self, item_id: str, where: str) -> str | None:
        """Record ``item_id`` as read at ``where``; None the first time, else what a message about ``where``
        says of the repeat (``FileName 'a.wav' already appears at line 2``). The first place is kept."""
        first = self._first.get(item_id)
        if first is None:
            self._first[item_id] = where
            return None
        return f"{self.what} {quoted(item_id)} already appears at {_place(first, where)}"

    def refuse_repeat(self, item_id: str, where: str, *, fix: str) -> None:
        """Record ``item_id`` as read at ``where``, refusing it when it was read before.

        Raises:
            SertoolError: ``<where>: <what> '<id>' already appears at <first place>; <fix>``.
        """
        repeat = self.repeat_of(item_id, where)
        if repeat is not None:
            raise SertoolError(f"{where}: {repeat}; {fix}")


def quoted(text: str) -> str:
    """An id as a one-line message shows it: in single quotes, as it is (``'caf\\xe9.wav'``, not doubled
    backslashes); one holding a line break or another unprintable character as a Python literal; one over
    ``QUOTED_CHARS`` characters cut short, with its length."""
    shown = text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS] + "…"
    shown = f"'{shown}'" if shown.isprintable() else repr(shown)
    return shown if len(text) <= QUOTED_CHARS else f"{shown} ({len(text):,} characters)"


def _place(first: str, where: str) -> str:
    """``first`` as a message about ``where`` names it: without the file both share (``line 2``,
    ``predictions[0]``), else in full."""
    head, separator, tail = first.rpartition(":")
    if separator and where.rpartition(":")[0] == head:
        return f"line {tail}" if tail.isdigit() else tail.strip()
    return first


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that is not valid UTF-8 written as ``\\xNN`` escapes.

    Python decodes such names with lone surrogates (``café`` in Latin-1 becomes ``caf\\udce9``), which
    no UTF-8 file or terminal accepts; ids and messages use this form instead (``caf\\xe9``).
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
