"""Opening a corpus: an MSP-Podcast root or a sertool manifest, detected from what the path holds."""
from __future__ import annotations

from pathlib import Path

from sertool.data.manifest import MANIFEST_NAME, read_manifest
from sertool.data.msp import MSP_LABELS, read_msp_podcast
from sertool.data.rows import Corpus, Progress
from sertool.errors import SertoolError


def open_corpus(path: str | Path, *, progress: Progress | None = None) -> Corpus:
    """Read the corpus at ``path``.

    ``path`` may be an MSP-Podcast root (holding ``Labels/labels_consensus.csv``), a manifest CSV file, or
    a folder holding ``manifest.csv``. Bad rows are dropped and recorded in ``Corpus.report``; they never
    raise. Audio durations come from file headers only.

    Raises:
        SertoolError: the path is missing or holds neither layout, or a label/manifest file is unusable
            as a whole (unreadable, wrong header).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SertoolError(f"--corpus {path}: no such file or folder")
    if path.is_file():
        return read_manifest(path, progress=progress)
    if (path / MSP_LABELS).is_file():
        return read_msp_podcast(path, progress=progress)
    if (path / MANIFEST_NAME).is_file():
        return read_manifest(path / MANIFEST_NAME, progress=progress)
    raise SertoolError(
        f"--corpus {path}: neither an MSP-Podcast root (no {MSP_LABELS}) nor a sertool manifest "
        f"(no {MANIFEST_NAME}); see `sertool data manifest --help` to make one from a folder and a CSV"
    )
