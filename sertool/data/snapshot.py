"""A whole corpus scan kept on disk: what ``open_corpus`` returned, and every file it depended on.

The per-file scan cache (``sertool.cache.scan``) spares a second scan the reading of each file, but
not the parsing of the labels file or the building of rows and intermediate records, which then cost as
much as the reading did. A snapshot holds the finished utterances and load report in columns, with the
stat key of every dependency: the labels file or manifest, each audio file, each transcript, and the
folders whose listing the reader used (``Audios/`` for unlabelled Test3 files, ``Transcripts/``, where a
new file changes the folder's stat). A later open stats every dependency and, where all are unchanged,
builds the corpus from the columns; any change falls back to a scan, which the per-file cache keeps
cheap. Written once per scan through ``atomic_write``; a damaged snapshot is ignored with a warning.

Layout: ``<cache_dir>/scans/corpora/<hash of the corpus path>.npz``.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sertool.cache.scan import ScanCache, _strings, _unstrings, stat_key
from sertool.data.records import ATTRIBUTES, Utterance
from sertool.data.report import LoadReport, Problem
from sertool.guards.outputs import write_cache_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: NUL-separated texts (scan_cache._strings)
_OPTIONAL_TEXTS = ("emo_class", "speaker", "gender", "transcript")
_NUMBERS = ("duration_s", *ATTRIBUTES)  # float64; NaN where None (an attribute is an Utterance field)


def snapshot_path(scan: ScanCache, given: str) -> Path:
    """Where the snapshot of the corpus at ``given`` (as the user named it, made absolute) lives."""
    digest = hashlib.sha256(os.fsencode(os.path.abspath(given))).hexdigest()[:32]
    return scan.folder / "corpora" / f"{digest}.npz"


def load_snapshot(scan: ScanCache, given: str, kind: str) -> tuple[list[Utterance], LoadReport] | None:
    """The utterances and report of the last scan of ``given``, if no file it depended on has changed."""
    path = snapshot_path(scan, given)
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        _damaged(path, str(error))
        return None
    try:
        header = json.loads(_unstrings(arrays["header"], None)[0])
        if header["format"] != FORMAT_VERSION or header["given"] != given or header["kind"] != kind:
            return None  # another spelling of the path, or a corpus of another layout there now
        dependencies = _unstrings(arrays["dependencies"], arrays["dependency_offsets"])
        keys = arrays["dependency_keys"].astype(np.int64).reshape(len(dependencies), 4)
        now = np.array([stat_key(dependency) for dependency in dependencies], dtype=np.int64).reshape(-1, 4)
        if not np.array_equal(now, keys):
            return None
        ids = _unstrings(arrays["id"], arrays["id_offsets"])
        audio = _unstrings(arrays["audio_path"], arrays["audio_path_offsets"])
        splits = _unstrings(arrays["split"], arrays["split_offsets"])
        numbers = {name: [None if math.isnan(value) else value for value in arrays[name].astype(np.float64).tolist()]
                   for name in _NUMBERS}
        texts = {}
        for name in _OPTIONAL_TEXTS:
            values, present = _unstrings(arrays[name], arrays[f"{name}_offsets"]), arrays[f"{name}_present"].tolist()
            texts[name] = [value if here else None for value, here in zip(values, present, strict=True)]
        utterances = Utterance.many(id=ids, audio_path=_paths(audio), split=splits, **numbers, **texts)
        report = LoadReport(dropped=[Problem(*problem) for problem in header["dropped"]],
                            warnings=[Problem(*problem) for problem in header["warnings"]])
    except (KeyError, ValueError, TypeError, IndexError, UnicodeDecodeError) as error:
        _damaged(path, str(error))
        return None
    return utterances, report


def save_snapshot(scan: ScanCache, given: str, kind: str, utterances: list[Utterance], report: LoadReport) -> None:
    """Keep this scan's result, unless a dependency changed too recently for its stat key to tell a later
    change (``ScanCache.settled``) or an utterance is a window of a file (corpora hold whole files)."""
    if not scan.settled or any(utt.span_s is not None for utt in utterances):
        return
    header = {"format": FORMAT_VERSION, "given": given, "kind": kind,
              "dropped": [[p.where, p.reason, p.detail, p.split] for p in report.dropped],
              "warnings": [[p.where, p.reason, p.detail, p.split] for p in report.warnings]}
    arrays: dict[str, Any] = {"header": _strings([json.dumps(header)])[0],
              "dependency_keys": np.array(scan.dependency_keys, dtype=np.int64).reshape(-1, 4)}
    arrays["dependencies"], arrays["dependency_offsets"] = _strings(scan.dependency_paths)
    for name, values in (("id", [utt.id for utt in utterances]),
                         ("audio_path", [os.fspath(utt.audio_path) for utt in utterances]),
                         ("split", [utt.split for utt in utterances])):
        arrays[name], arrays[f"{name}_offsets"] = _strings(values)
    for name in _NUMBERS:
        values = [getattr(utt, name) for utt in utterances]
        arrays[name] = np.array([math.nan if value is None else value for value in values], dtype=np.float64)
    for name in _OPTIONAL_TEXTS:
        values = [getattr(utt, name) for utt in utterances]
        arrays[name], arrays[f"{name}_offsets"] = _strings([value or "" for value in values])
        arrays[f"{name}_present"] = np.array([value is not None for value in values], dtype=bool)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_cache_file(snapshot_path(scan, given), buffer.getvalue())


def _paths(texts: list[str]) -> list[Path]:
    """``Path`` objects of normalised path strings (as ``os.fspath`` of a ``Path`` writes them).

    Parsing 150,000 paths costs more than the rest of a warm open; a child of an already parsed folder
    needs no parsing. CPython's pathlib has no public way to make one (``joinpath`` parses its argument),
    so its internal one is used where it exists and gives the same path as parsing, else ``Path``.
    """
    parents: dict[str, Callable[[str], Path]] = {}
    paths = []
    for text in texts:
        parent, _, name = text.rpartition(os.sep)
        make = parents.get(parent)
        if make is None:
            folder = Path(parent or os.sep)
            make = getattr(folder, "_make_child_relpath", None)
            if make is None or not parent or make(name) != Path(text) or str(make(name)) != text:
                make = lambda child, folder=folder: folder / child  # noqa: E731
            parents[parent] = make
        paths.append(make(name))
    return paths


def _damaged(path: Path, why: str) -> None:
    log.warning("warning: ignoring the corpus snapshot %s (%s); the corpus is scanned again", path, why)
