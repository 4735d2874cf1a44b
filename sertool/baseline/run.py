"""`sertool baseline`: fit the ridge floor on a corpus and write a predictions CSV per split.

The floor sees the same data as a trained system: it fits on the training split, the validation split
only chooses the regularisation strength (as it only chooses a trained system's checkpoint), and every
other split is held out. Every split except the training split gets a predictions CSV that `evaluate`,
`ensemble` and `predict --submission` accept (labels beside the predictions where the split has them).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sertool.baseline.options import BaselineOptions
from sertool.core.constants import ATTRIBUTES, SUMMARY_NAME
from sertool.data.corpus import open_corpus
from sertool.data.report import LoadReport
from sertool.data.selection import require_enough_labels, select
from sertool.guards.outputs import OutputPlan
from sertool.inference.predictions import Predictions
from sertool.inference.predictor import PredictorOutput
from sertool.inference.workflows import Scores, score
from sertool.inference.writers import write_predictions_file
from sertool.models.floor_features import floor_feature_rows, floor_feature_setup
from sertool.models.ridge import ALPHAS, fit_ridge

SYSTEM_NAME = "ridge baseline"  # the scores' system, followed by the features: "ridge baseline (egemaps)"


@dataclass
class BaselineResult:
    """What `sertool baseline` did.

    Attributes:
        system: the scores' name of the system, naming its features (``ridge baseline (egemaps)``).
        alphas: the chosen regularisation strength of each attribute.
        scores: split name → CCC on that split (labelled splits other than the training split).
        train_utterances: how many utterances the ridge was fitted on.
        load_report: rows the corpus read dropped.
        written: the files written, predictions first.
    """

    system: str
    alphas: dict[str, float]
    scores: dict[str, Scores]
    train_utterances: int
    load_report: LoadReport
    written: list[Path] = field(default_factory=list)


def run_baseline(options: BaselineOptions, *, progress: Callable[[int, int], None] | None = None) -> BaselineResult:
    """Fit the ridge floor on ``options.train_split`` of ``options.corpus`` and write ``OUT/<split>.csv`` for every
    split but the training split, and ``OUT/summary.json`` (features, alpha grid, validation curve, chosen alphas,
    scores), into ``options.out`` (created if missing; files already there are kept unless ``options.force``).

    Args:
        options: the corpus, the splits the ridge is fitted on and that choose alpha per attribute (by CCC), the
            features it reads (``FLOOR_FEATURES``), the output folder, sertool's cache folder for the corpus scan
            and the features (None: the default), and the processes that compute the features not cached yet
            (0: this one).
        progress: ``progress(done, total)`` while the features are computed.

    Raises:
        SertoolError: an openSMILE feature set without the ``opensmile`` package (before any work), bad splits
            (see ``data.selection.select``), unreadable audio, or an unusable ``options.out``.
    """
    setup = floor_feature_setup(options.features)
    system = f"{SYSTEM_NAME} ({options.features})"
    train_split, valid_split, cache_dir = options.train_split, options.valid_split, options.cache_dir
    outputs = OutputPlan(force=options.force)
    out_dir = outputs.folder(options.out, flag="--out")
    opened = open_corpus(options.corpus, cache_dir=cache_dir)
    selection = select(opened.utterances, train_split=train_split, valid_split=valid_split)
    require_enough_labels(selection, train_split=train_split, valid_split=valid_split)
    held_out = {name: opened.split(name) for name in opened.split_names() if name != train_split}
    # Split names come from the data: each becomes a plain file name inside --out (OutputPlan.in_folder).
    targets = {name: outputs.in_folder(out_dir, f"{name}.csv", flag="--out") for name in held_out}
    summary_path = outputs.file(out_dir / SUMMARY_NAME, flag="--out")
    assert summary_path is not None

    # Every utterance's features in one pass (the same clip is read once even if it is in two lists).
    everything = {utt.id: utt for group in [selection.train, selection.valid, *held_out.values()] for utt in group}
    rows = floor_feature_rows(list(everything.values()), setup, cache_dir=cache_dir, num_workers=options.num_workers,
                              progress=progress)
    table = dict(zip(everything, rows, strict=True))

    def features(utterances):
        return np.array([table[utt.id] for utt in utterances]).reshape(len(utterances), -1)

    def labels(utterances):
        return np.array([utt.labels() for utt in utterances], dtype=np.float64).reshape(len(utterances), -1)

    model, curve = fit_ridge(features(selection.train), labels(selection.train), features(selection.valid),
                             labels(selection.valid))
    alphas = dict(zip(ATTRIBUTES, map(float, model.alphas), strict=True))
    result = BaselineResult(system, alphas, {}, len(selection.train), opened.report)
    for name, utterances in held_out.items():
        predictions = Predictions([utt.id for utt in utterances], model.predict(features(utterances)))
        labelled = bool(utterances) and all(utt.has_labels for utt in utterances)
        write_predictions_file(outputs, targets[name], predictions, labels=labels(utterances) if labelled else None)
        result.written.append(targets[name])
        if labelled:
            result.scores[name] = score(system, PredictorOutput(predictions), utterances, labels(utterances))

    with outputs.writing(summary_path) as handle:
        json.dump({
            "system": system, "corpus": str(options.corpus), "train_split": train_split,
            "valid_split": valid_split,
            "train_utterances": len(selection.train), "valid_utterances": len(selection.valid),
            "features": options.features, "feature_setup": {"name": setup.name, **setup.metadata},
            "num_features": setup.dim,
            "alpha_grid": list(ALPHAS), "alphas": result.alphas,
            "valid_ccc_by_alpha": {name: curve[:, k].tolist() for k, name in enumerate(ATTRIBUTES)},
            "scores": {name: {"utterances": s.num_utterances, "ccc": s.ccc, "collapsed": s.collapsed,
                              "role": "chose alpha" if name == valid_split else "held out"}
                       for name, s in result.scores.items()},
        }, handle, indent=2)
    result.written.append(summary_path)
    return result
