"""The evaluation figure: what a researcher looks at first after a run.

matplotlib is an optional dependency (setup.cfg's extra ``plot``), imported only when a figure is
drawn. The figure is drawn on an Agg canvas of its own rather than through ``pyplot``, so no global
backend is switched and no window opens, on a headless server or inside a notebook alike.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

import numpy as np

from sertool.core.errors import missing_package
from sertool.data.records import EMO_CLASSES, LABEL_MAX, LABEL_MIN
from sertool.inference.predictions import Predictions
from sertool.models.ccc import ccc_scores

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PANEL_SIZE_IN = (5.0, 4.5)  # inches per attribute panel
DPI = 100  # 100 dots per inch: a 3 x 2 panel figure is 1500 x 900 pixels


def plot_evaluation(predictions: Predictions, labels: np.ndarray, classes: Sequence[str | None] | None,
                    handle: IO[bytes]) -> Figure:
    """Write one PNG to ``handle`` (a file being committed through ``OutputPlan.writing``): per attribute,
    predicted vs true, and predictions by emotion class.

    Top row, one panel per attribute predicted: a scatter of predicted against true values with the identity line
    and the split's CCC in the title. Bottom row (when classes are known): box plots of the predictions
    per EmoClass with each class's mean true value marked, which shows at a glance which classes the model
    pulls towards the middle of the scale.

    Args:
        predictions: whole-file predictions on the 1..7 scale.
        labels: ``[N, len(predictions.attributes)]`` rater means of the predicted attributes in ``predictions.ids``
            order.
        classes: EmoClass code per row (None where unknown), or None; without any known class the
            bottom row is left out.
        handle: the binary stream the PNG goes to.

    Returns:
        The saved matplotlib ``Figure``, for callers who want to show it.

    Raises:
        SertoolError: matplotlib is not installed.
        ValueError: ``labels`` or ``classes`` do not match the predictions in length.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise missing_package("matplotlib", needed_for="plotting") from None
    labels = np.asarray(labels, dtype=np.float64)
    if labels.shape != predictions.values.shape:
        raise ValueError(f"plot_evaluation: labels of shape {labels.shape} for predictions {predictions.values.shape}")
    if classes is not None and len(classes) != len(predictions):
        raise ValueError(f"plot_evaluation: {len(classes)} classes for {len(predictions)} predictions")
    groups = _class_groups(classes)
    num_rows = 2 if groups else 1
    attributes = predictions.attributes
    figure = Figure(figsize=(PANEL_SIZE_IN[0] * len(attributes), PANEL_SIZE_IN[1] * num_rows), dpi=DPI,
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(num_rows, len(attributes), squeeze=False)
    scores = ccc_scores(predictions.values, labels, attributes=attributes)
    for column, name in enumerate(attributes):
        true, predicted = labels[:, column], predictions.values[:, column]
        # The whole rater scale is always shown, widened if values overshoot it, so figures of different
        # runs compare by eye.
        limits = (min(LABEL_MIN, true.min(), predicted.min()), max(LABEL_MAX, true.max(), predicted.max()))
        _scatter(axes[0, column], true, predicted, limits, name, scores[name])
        if groups:
            _boxes(axes[1, column], predicted, true, groups, limits, name)
    if groups:
        axes[1, 0].legend(loc="upper right", fontsize="small")
    figure.suptitle(f"{len(predictions)} files, average CCC {scores['average']:.3f}")
    figure.savefig(handle, format="png", dpi=DPI)
    return figure


def _scatter(axis, true: np.ndarray, predicted: np.ndarray, limits: tuple[float, float], name: str,
             score: float) -> None:
    low, high = limits
    # Dense splits (tens of thousands of points) need small, transparent markers to show density.
    axis.scatter(true, predicted, s=6, alpha=0.3 if len(true) > 1000 else 0.7, linewidths=0)
    axis.plot([low, high], [low, high], color="black", linewidth=1, label="identity")
    axis.set_xlim(low, high)
    axis.set_ylim(low, high)
    axis.set_aspect("equal")
    axis.set_xlabel(f"true {name}")
    axis.set_ylabel(f"predicted {name}")
    axis.set_title(f"{name}: CCC {score:.3f}")


def _boxes(axis, predicted: np.ndarray, true: np.ndarray, groups: dict[str, np.ndarray],
           limits: tuple[float, float], name: str) -> None:
    positions = np.arange(1, len(groups) + 1)
    axis.boxplot([predicted[rows] for rows in groups.values()], positions=positions, showfliers=False)
    axis.plot(positions, [true[rows].mean() for rows in groups.values()], "x", color="tab:red",
              label="mean true value")
    axis.set_xticks(positions, [f"{code}\nn={len(rows)}" for code, rows in groups.items()])
    axis.set_ylim(*limits)
    axis.set_ylabel(f"predicted {name}")
    axis.set_title(f"{name} by EmoClass")


def _class_groups(classes: Sequence[str | None] | None) -> dict[str, np.ndarray]:
    """Row indices per known class, in ``EMO_CLASSES`` order (codes it lacks last, sorted)."""
    if classes is None:
        return {}
    present = {code for code in classes if code is not None}
    order = [code for code in EMO_CLASSES if code in present] + sorted(present - set(EMO_CLASSES))
    codes = np.array([code if code is not None else "" for code in classes], dtype=object)
    return {code: np.flatnonzero(codes == code) for code in order}
