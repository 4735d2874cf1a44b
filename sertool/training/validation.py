"""Validation during training: what a validation of the whole validation split decides, and what it keeps.

The loop predicts the split (``loop._Run._predict_valid``), rank 0 judges the predictions (``judge``: CCC per
attribute the model predicts over the whole split, never per batch, and their average; a model of fewer
attributes, ``train.attributes``, is judged on its own alone) and every rank takes its ``Verdict``: ranks that judged
apart could blend with other weights, or one could stop early and leave the others waiting for it in the
next step's all-reduce. ``keep_best`` then updates the ``TrainState`` (best.pt, early stopping).

A part of the model that takes part in validation does so through a ``ValidationHook``: the floor blend
(``--floor-blend``, ``FloorBlendHook``) is validated before the first step too, predicts with the network
alone, and chooses its blend with the floor at every validation.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from sertool.data.records import ATTRIBUTES, Utterance
from sertool.models.ccc import ccc_scores, collapsed_attributes
from sertool.models.heads import LabelScaling
from sertool.models.utterance_stats import BlendChoice, FloorBlend, choose_blend
from sertool.runtime.runner import ModelPredictions
from sertool.store.checkpoints import BEST_NAME
from sertool.training.state import Stop, TrainState


class ValidationHook:
    """What a part of the model adds to each validation; this one adds nothing (a model without a floor)."""

    validates_before_training = False  # validate the untrained model too, before the first step

    def predicting(self) -> AbstractContextManager[None]:
        """Around the validation's forward passes."""
        return contextlib.nullcontext()

    def choose(self, unit: np.ndarray, labels: np.ndarray, label_scaling: LabelScaling, *,
               attributes: Sequence[str]) -> tuple[np.ndarray, Any]:
        """On rank 0, given the network's finite ``[N, k]`` unit-scale predictions (float64) of the model's
        ``attributes`` and their ``[N, k]`` ratings: the predictions to score, and what was chosen (None:
        nothing), which every rank takes."""
        return unit, None

    def take(self, choice: Any) -> None:
        """On every rank: apply rank 0's ``choice`` to the model."""

    def logged(self, choice: Any) -> dict[str, Any]:
        """What the validation's metrics.jsonl record says of ``choice``."""
        return {}


class FloorBlendHook(ValidationHook):
    """``--floor-blend``: each validation chooses the network's weight against the floor per attribute
    (``choose_blend``: the weight whose gain over the floor best survives resampling the validation split's
    speakers), and the model predicts with it from then on (best.pt keeps that of its validation).

    The untrained network blended with the floor (the floor, unless noise helps it) is validated before the
    first step: it can become best.pt, so that best.pt is never worse than the floor on the validation split.
    """

    validates_before_training = True

    def __init__(self, floor: FloorBlend, floor_unit: np.ndarray, *, speakers: Sequence[str | None],
                 confidence: float) -> None:
        """``floor_unit``: the floor's ``[N, k]`` unit-scale predictions of the validation split, of the model's
        attributes (they never change: computed once, by ``setup_run.validation_hook``); ``speakers``: its
        utterances' speakers, which ``choose_blend`` resamples; ``confidence``: ``--floor-blend-confidence``."""
        self.floor = floor
        self.floor_unit = floor_unit
        self.speakers = list(speakers)
        self.confidence = confidence

    def predicting(self) -> AbstractContextManager[None]:
        return self.floor.left_out()  # the network alone: its blend with the floor is chosen here

    def choose(self, unit: np.ndarray, labels: np.ndarray, label_scaling: LabelScaling, *,
               attributes: Sequence[str]) -> tuple[np.ndarray, BlendChoice | None]:
        choice = choose_blend(unit, self.floor_unit, labels, label_scaling, speakers=self.speakers,
                              confidence=self.confidence, attributes=attributes)
        blend = choice.weights
        return blend * unit + (1 - blend) * self.floor_unit, choice

    def take(self, choice: BlendChoice | None) -> None:
        if choice is not None:
            self.floor.take_blend(choice.weights)

    def logged(self, choice: BlendChoice | None) -> dict[str, Any]:
        if choice is None:
            return {}
        return {"floor_blend": dict(zip(choice.attributes, choice.weights.tolist(), strict=True)),
                "floor_blend_why": choice.reasons()}


@dataclass
class Verdict:
    """What a validation decides: judged on rank 0 (``judge``), taken by every rank."""

    scores: dict[str, float]  # CCC per attribute of the model and "average"; NaN with non-finite predictions
    collapsed: list[str]  # attributes whose predictions were near-constant
    choice: Any  # what the hook chose (the floor blend: a BlendChoice, the network's weight per attribute), or None
    nonfinite: list[str]  # ids of the utterances whose predictions were not finite
    improved: bool  # a better average than every earlier validation: best.pt, patience, plateau schedule


def judge(predictions: ModelPredictions, valid_set: Sequence[Utterance], label_scaling: LabelScaling,
          hook: ValidationHook, *, best_average: float, attributes: Sequence[str] = ATTRIBUTES) -> Verdict:
    """What the validation of ``predictions`` decides, against the best average CCC so far.

    Predictions are scored as inference outputs them (clipped ratings), so best.pt is chosen on what it
    predicts. A score of predictions that are not all finite is NaN (null in metrics.jsonl) and never an
    improvement; the CCC of finite predictions and labels is always finite (``sertool.models.ccc``).

    ``attributes`` are the model's (``SERModel.attributes``), the columns of ``predictions``: each is scored
    against its own labels, and "average", which best.pt, the patience and the plateau schedule follow, is
    the mean of theirs alone.
    """
    nonfinite = [utt_id for utt_id, row in zip(predictions.ids, predictions.emotion_unit, strict=True)
                 if not np.isfinite(row).all()]
    if nonfinite:  # ccc_scores refuses them
        return Verdict(scores=dict.fromkeys((*attributes, "average"), math.nan), collapsed=[], choice=None,
                       nonfinite=nonfinite, improved=False)
    columns = [ATTRIBUTES.index(name) for name in attributes]
    labels = np.array([utt.labels() for utt in valid_set]).reshape(len(valid_set), len(ATTRIBUTES))[:, columns]
    unit, choice = hook.choose(predictions.emotion_unit.astype(np.float64), labels, label_scaling,
                               attributes=attributes)
    values = label_scaling.ratings(unit)
    scores = ccc_scores(values, labels, attributes=attributes)
    return Verdict(scores=scores, collapsed=collapsed_attributes(values, labels, attributes=attributes),
                   choice=choice, nonfinite=[], improved=scores["average"] > best_average)


def validation_record(verdict: Verdict, state: TrainState, *, split: str, utterances: int,
                      hook: ValidationHook) -> dict[str, Any]:
    """The validation's metrics.jsonl record (and ``TrainState.history``'s)."""
    record = {"type": "valid", "step": state.step, "epoch": state.epoch_of_last_step(), "split": split,
              "utterances": utterances, **{f"ccc_{name}": value for name, value in verdict.scores.items()},
              "improved": verdict.improved, "collapsed": verdict.collapsed, **hook.logged(verdict.choice)}
    if verdict.nonfinite:
        record.update(nonfinite_predictions=len(verdict.nonfinite), first_nonfinite=verdict.nonfinite[0])
    return record


def keep_best(state: TrainState, verdict: Verdict, *, per_attribute: bool, patience: int) -> list[str]:
    """After a validation: the best scores and the count of validations without improvement in ``state``,
    early stopping after ``patience`` of them (0: never).

    Returns:
        The checkpoints to write with this validation's weights: ``best.pt`` on an improvement, and with
        ``per_attribute`` (``select_best="per-attribute"``) ``best_<attribute>.pt`` per attribute of the model
        that improved.
    """
    names = []
    if verdict.improved:
        state.best, state.best_step = verdict.scores, state.step
        state.validations_without_improvement = 0
        names.append(BEST_NAME)
    else:
        state.validations_without_improvement += 1
    if per_attribute and not verdict.nonfinite:
        for name in (name for name in ATTRIBUTES if name in verdict.scores):
            if verdict.scores[name] > state.best_per_attribute.get(name, -math.inf):
                state.best_per_attribute[name] = verdict.scores[name]
                names.append(f"best_{name}.pt")
    if patience > 0 and state.validations_without_improvement >= patience:
        state.stopped = Stop.EARLY_STOPPING
    return names


def no_finite_validation(state: TrainState, valid_set: Sequence[Utterance], *, split: str, last_path: str) -> str:
    """The error of a run whose every validation score was NaN or infinite, with its likely cause."""
    last = state.history[-1] if state.history else {}
    # The CCC of finite predictions is finite: only NaN or infinite predictions leave a run without best.pt.
    if not last:
        cause = "the run validated nothing"
    elif last.get("nonfinite_predictions") == len(valid_set):
        cause = ("every prediction was NaN or infinite, so the weights are: lower --lr-heads/--lr-backbone, "
                 "try --amp off, or check the training labels and audio")
    else:
        cause = (f"{last.get('nonfinite_predictions')} of {len(valid_set)} {split} predictions were NaN or "
                 f"infinite (first: {last.get('first_nonfinite')}): check that audio (e.g. samples far outside "
                 "[-1, 1]) or leave it out of the split")
    return (f"no validation of this run gave a finite CCC ({len(state.history)} on {len(valid_set)} {split} "
            f"utterances), so there is no best.pt: {cause}. {last_path} holds the last state")
