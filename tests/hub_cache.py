"""A model-hub cache written by hand, so hub ids resolve offline (``HF_HOME=<root>``, ``HF_HUB_OFFLINE=1``)."""
from __future__ import annotations

import shutil
from pathlib import Path

COMMIT = "0" * 40


def cache_as_hub_id(hf_home: Path, repo_id: str, folder: Path) -> Path:
    """Copy ``folder`` into ``hf_home``'s hub cache as the current snapshot of model ``repo_id``.

    Returns:
        The snapshot folder.
    """
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot
