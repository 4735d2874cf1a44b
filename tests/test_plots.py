"""The evaluation figure: a valid PNG of the intended size, with or without classes; an install hint otherwise."""
from __future__ import annotations

import functools
import io
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from sertool.core.errors import SertoolError
from sertool.inference.plots import DPI, PANEL_SIZE_IN, plot_evaluation
from sertool.inference.predictions import Predictions
from sertool.models.ccc import ccc_scores
from tests.corpus_files import commit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header: the signature, then the IHDR chunk (length, type, width, height)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    length, chunk_type, width, height = struct.unpack(">I4sII", data[8:24])
    assert chunk_type == b"IHDR" and length == 13
    return width, height


def evaluation_case(num_files: int = 300) -> tuple[Predictions, np.ndarray, list[str | None]]:
    rng = np.random.default_rng(3)
    labels = rng.uniform(1, 7, size=(num_files, 3))
    values = labels + rng.normal(0, 1.0, size=labels.shape)
    classes = rng.choice(["N", "H", "S", "A", "O", "X"], size=num_files).tolist()
    classes[:20] = [None] * 20  # unknown classes are left out of the box plots, not an error
    return Predictions(ids=[f"{i}.wav" for i in range(num_files)], values=values), labels, classes


def test_figure_with_classes(tmp_path: Path) -> None:
    predictions, labels, classes = evaluation_case()
    path = tmp_path / "eval.png"
    figure = commit(path, lambda handle: plot_evaluation(predictions, labels, classes, handle), mode="wb")
    assert png_size(path) == (round(3 * PANEL_SIZE_IN[0] * DPI), round(2 * PANEL_SIZE_IN[1] * DPI))
    scores = ccc_scores(predictions.values, labels)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles[:3] == [f"{name}: CCC {scores[name]:.3f}" for name in ("arousal", "valence", "dominance")]
    # Box plots follow the EmoClass order, one per known class, with the count of each.
    ticks = [label.get_text() for label in figure.axes[3].get_xticklabels()]
    assert ticks == [f"{code}\nn={classes.count(code)}" for code in ("A", "S", "H", "N", "O", "X")]


def test_figure_without_classes(tmp_path: Path) -> None:
    predictions, labels, _ = evaluation_case(40)
    for classes in (None, [None] * 40):
        path = tmp_path / "eval.png"
        figure = commit(path, functools.partial(plot_evaluation, predictions, labels, classes), mode="wb")
        assert png_size(path) == (round(3 * PANEL_SIZE_IN[0] * DPI), round(PANEL_SIZE_IN[1] * DPI))
        assert len(figure.axes) == 3


def test_mismatched_inputs(tmp_path: Path) -> None:
    predictions, labels, classes = evaluation_case(40)
    with pytest.raises(ValueError):
        plot_evaluation(predictions, labels[:10], None, io.BytesIO())
    with pytest.raises(ValueError):
        plot_evaluation(predictions, labels, classes[:10], io.BytesIO())


def test_missing_matplotlib_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail, as if matplotlib were not installed.
    for name in [name for name in sys.modules if name == "matplotlib" or name.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    predictions, labels, _ = evaluation_case(10)
    with pytest.raises(SertoolError, match=r"plotting needs matplotlib, which is not installed: pip install 'matplotlib(>=[\d.]+)?'"):
        commit(tmp_path / "x.png", lambda handle: plot_evaluation(predictions, labels, None, handle), mode="wb")
    assert sorted(tmp_path.iterdir()) == []
