"""Opening a corpus: an MSP-Podcast root or a sertool manifest, detected from what the path holds."""
from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from pathlib import Path

from sertool.cache.scan import ScanCache
from sertool.core.errors import SertoolError
from sertool.data.manifest import MANIFEST_NAME, read_manifest
from sertool.data.msp import MSP_LABELS, read_msp_podcast
from sertool.data.rows import Corpus, Progress
from sertool.data.snapshot import load_snapshot, save_snapshot


def open_corpus(path: str | Path, *, progress: Progress | None = None,
                cache_dir: str | os.PathLike[str] | None = None) -> Corpus:
    """Read the corpus at ``path``.

    ``path`` may be an MSP-Podcast root (holding ``Labels/labels_consensus.csv``), a manifest CSV file, or
    a folder holding ``manifest.csv``. Bad rows are dropped and recorded in ``Corpus.report``; they never
    raise. Audio durations come from file headers only, read once and then kept in the scan cache under
    ``cache_dir`` (None: ``$SERTOOL_CACHE`` or ``~/.cache/sertool``) until the file changes.

    Raises:
        SertoolError: the path is missing or holds neither layout, or a label/manifest file is unusable
            as a whole (unreadable, wrong header).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SertoolError(f"--corpus {path}: no such file or folder")
    # exists(), not is_file(): a labels file or manifest that is a pipe or a device is the reader's to refuse,
    # by name (sertool.guards.reads), not a reason to call the folder something else.
    if not path.is_dir():
        kind, read = "manifest", lambda scan: read_manifest(path, progress=progress, scan=scan)
    elif (path / MSP_LABELS).exists():
        kind, read = "msp-podcast", lambda scan: read_msp_podcast(path, progress=progress, scan=scan)
    elif (path / MANIFEST_NAME).exists():
        kind, read = "manifest", lambda scan: read_manifest(path / MANIFEST_NAME, progress=progress, scan=scan)
    else:
        raise SertoolError(
            f"--corpus {path}: neither an MSP-Podcast root (no {MSP_LABELS}) nor a sertool manifest "
            f"(no {MANIFEST_NAME}); see `sertool data manifest --help` to make one from a folder and a CSV"
        )
    scan = ScanCache(cache_dir)
    with _collector_paused():
        snapshot = load_snapshot(scan, str(path), kind)
        if snapshot is not None:
            utterances, report = snapshot
            if progress is not None:
                progress(len(utterances), len(utterances))
            root = path / MANIFEST_NAME if kind == "manifest" and path.is_dir() else path
            return Corpus(root=root, kind=kind, utterances=utterances, report=report)
        corpus = read(scan)
        save_snapshot(scan, str(path), kind, corpus.utterances, corpus.report)
        return corpus


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while a corpus is built, back as it was after (also on an error).

    Opening MSP-Podcast makes hundreds of thousands of objects that live on (utterances, their paths, the
    stat keys compared): each 700 new ones start a collection, and every so often one that walks every
    object of the process (torch's included). That was a third of a warm open; the records hold no
    cycles, and whatever cyclic garbage the scan leaves is collected once the collector is back.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
