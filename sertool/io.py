"""The text formats every command shares: strict JSON, and CSV files read one row per line.

Files are opened through the read guard (``sertool.guards.reads``) and written through the output guard
(``sertool.guards.outputs``); this module only parses and formats.
"""
from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from sertool.errors import SertoolError
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


# What a damaged CSV row is reported as, by readers that drop bad rows instead of refusing the file.
DAMAGED_ROW = "damaged row"


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
    columns after it. A damaged line, one with an unclosed quote, a field count that differs from the
    header's, a NUL byte or an oversized field, is reported through ``on_damage`` and skipped; without
    ``on_damage`` it is an error. Blank lines are skipped; header names are stripped of spaces.

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
    """The fields of one CSV line, or what is wrong with the line."""
    if "\0" in text:
        return "holds a NUL byte (a binary or damaged file?)"
    if '"' not in text:  # the common case, and exactly what the csv module would make of it
        return text.rstrip("\r\n").split(",")
    try:
        fields = next(csv.reader([text if text.endswith(("\n", "\r")) else text + "\n"]))
    except csv.Error as error:  # a field over csv.field_size_limit()
        return f"cannot be parsed ({error})"
    # One physical line holds no line break but its own end: a field that contains one was opened by a
    # quote that is never closed.
    unclosed = next((index for index, field in enumerate(fields) if "\n" in field or "\r" in field), None)
    if unclosed is not None:
        return (f'opens a quote (") in field {unclosed + 1} that is never closed on its line (a stray quote?); '
                "remove it, or close it")
    return fields


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


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that is not valid UTF-8 written as ``\\xNN`` escapes.

    Python decodes such names with lone surrogates (``café`` in Latin-1 becomes ``caf\\udce9``), which
    no UTF-8 file or terminal accepts; ids and messages use this form instead (``caf\\xe9``).
    """
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
