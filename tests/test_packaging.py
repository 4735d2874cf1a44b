"""What an installed sertool holds and tells its users: package data, install hints, offline model folders."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sertool.core import hub
from sertool.core.errors import SertoolError, missing_package
from sertool.experiments.grid import PAPER_GRID, read_grid
from tests.tiny_text import HIDDEN_SIZE, save_tiny_text_encoder

ROOT = Path(__file__).resolve().parent.parent
# What a wheel is built from: the package and the build's own files (setup.cfg reads README.md).
BUILD_INPUTS = ("sertool", "setup.cfg", "setup.py", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The file names inside a wheel built from a copy of the checkout (offline: the venv's setuptools)."""
    source = tmp_path_factory.mktemp("source")
    for name in BUILD_INPUTS:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (ROOT / name).is_dir() else {}))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "--wheel-dir", str(out), str(source)], check=True, capture_output=True)
    [wheel] = out.glob("sertool-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def test_wheel_ships_every_config_in_the_package(wheel_files: set[str]) -> None:
    configs = sorted(str(path.relative_to(ROOT)) for path in (ROOT / "sertool" / "configs").rglob("*.yaml"))
    assert "sertool/configs/paper/grid.yaml" in configs
    assert [name for name in configs if name not in wheel_files] == []


def test_every_system_of_the_packaged_grid_has_its_config_beside_it(wheel_files: set[str]) -> None:
    grid = read_grid(PAPER_GRID)
    configs = {grid.variants[system].of if system in grid.variants else system for system in grid.systems}
    needed = {f"sertool/configs/paper/{system}.yaml" for system in configs}
    assert needed <= wheel_files


def test_reproduce_finds_the_paper_grid_outside_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sertool.experiments.options import ReproduceOptions
    from sertool.experiments.reproduce import reproduce

    monkeypatch.chdir(tmp_path)  # no configs/ here: the default grid must come from the package
    with pytest.raises(SertoolError, match=r"--systems nosuch: not in the paper tables of .*sertool/configs/paper/grid\.yaml; they have wavlm"):
        reproduce(ReproduceOptions(corpus=tmp_path, scale="demo", out=tmp_path / "out", systems="nosuch"))


def test_missing_package_names_the_package_and_its_declared_bound() -> None:
    message = str(missing_package("matplotlib", needed_for="plotting"))
    assert re.fullmatch(r"plotting needs matplotlib, which is not installed: pip install 'matplotlib(>=3\.7)?'",
                        message), message
    assert str(missing_package("no-such-package", needed_for="x")).endswith("pip install 'no-such-package'")


def test_no_message_or_doc_installs_sertool_from_pypi() -> None:
    # The PyPI name sertool belongs to another project: `pip install 'sertool[...]'` would install that.
    pattern = re.compile(r"pip install ['\"]?sertool\b")
    texts = [*(ROOT / "sertool").rglob("*.py"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md",
             ROOT / "scripts" / "install.sh"]
    assert [str(path) for path in texts if pattern.search(path.read_text(encoding="utf-8"))] == []


def test_a_model_folder_on_the_shelf_loads_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoConfig

    monkeypatch.setattr(hub, "MODEL_SHELF", tmp_path / "shelf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    save_tiny_text_encoder(tmp_path / "shelf" / "someone" / "tiny-text")
    config = hub.load_pretrained(AutoConfig.from_pretrained, "someone/tiny-text", flag="--text-model")
    assert config.hidden_size == HIDDEN_SIZE
    with pytest.raises(SertoolError, match=r"`hf download someone/other --local-dir DIR`"):
        hub.load_pretrained(AutoConfig.from_pretrained, "someone/other", flag="--text-model")
