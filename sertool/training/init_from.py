"""`train --init-from MODEL`: a run that starts from the weights of another model.

MODEL is anything ``sertool.store.model_folder.load_model`` reads: a run folder, a checkpoint, a model folder
(``sertool export``, or one of the authors' released models) or a hub id. The run's model section starts
from MODEL's (``training.setup.resolve_train_config``), so by default the architecture matches and every
weight is taken over. Model flags may still change what does not touch the weights (freezing, dropout,
loss weights), add auxiliary heads, which then start fresh, or add LoRA adapters (``--lora-rank``,
``--text-lora-rank``), which start as a zero update of MODEL's weights; a change that leaves MODEL's weights
without a place (another backbone, pooling, head width) is refused before training. The run may predict other
attributes than MODEL (``--attributes``): the head of an attribute MODEL lacks starts fresh, and MODEL's heads of
attributes the run does not predict are left behind.

What MODEL trained on is part of what the run trained on (``inherited_training_data``): the run records the
union of both as its ``training_ids``, so it is scored only on utterances neither saw, and names under
``selection.UNKNOWN_TRAINING_DATA`` the initial models whose training data is unknown (every score says so).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from sertool.core.constants import ATTRIBUTES
from sertool.core.errors import SertoolError
from sertool.data.selection import unknown_training_data
from sertool.store.checkpoints import WEIGHTS_FILE, check_fitted, check_stored_tensors, payload_attributes

# Heads whose weights may start fresh (a task added by a flag) or be left behind (a task dropped, or a
# speaker head whose classes are the speakers of another corpus).
_TASK_HEADS = ("gender_head.", "speaker_head.")
# LoRA adapters a run adds: they start at B = 0, a zero update, so the model starts exactly as MODEL.
_ADAPTERS = (".lora_a", ".lora_b")
_EMOTION_HEADS = "emotion_heads.heads."  # then an attribute's name: the weights of its head (``EmotionHeads``)


def load_initial_weights(model: nn.Module, payload: dict[str, Any], *, source: str) -> list[str]:
    """Copy ``payload``'s weights into a freshly built ``model``.

    Every weight of the model must come from ``payload``, except auxiliary heads, heads of attributes
    ``payload``'s model does not predict and LoRA adapters the run adds and, when the backbone's weights are the
    published ones, the frozen backbone weights the model already loaded. A linear layer the run wraps in LoRA
    takes ``payload``'s weights of the plain layer.

    Args:
        model: the run's ``SERModel``, built with ``payload``'s ``backbone_weights``.
        payload: what ``load_model(source)`` returned.
        source: the ``--init-from`` value, for messages.

    Returns:
        Notes for the user: auxiliary or emotion heads whose weights start fresh or are not used.

    Raises:
        SertoolError: a weight of ``payload`` without a place in the model, of another shape, or a model
            weight ``payload`` does not provide (outside the task heads), naming the first one; a tensor of
            another dtype than the model's, or a fitted part left unfitted (as ``load_stored_state``).
    """
    expected = model.state_dict()
    state = dict(payload["model_state"])
    for key in expected:  # a layer wrapped in LoRA keeps its weights under .base
        plain = key.replace(".base.", ".")
        if ".base." in key and key not in state and plain in state:
            state[key] = state.pop(plain)
    weights_file = f"--init-from {payload.get(WEIGHTS_FILE, source)}"
    # Shapes are checked below: a shape that differs is a flag that changed the architecture.
    check_stored_tensors(state, expected, source=weights_file, shapes=False)
    published = tuple(f"{name}." for name in getattr(model, "published_modules", ()))
    added, dropped = _attributes_apart(model, payload, source=weights_file)
    optional = (*_TASK_HEADS, *(f"{_EMOTION_HEADS}{name}." for name in (*added, *dropped)))
    unfit = [key for key in state if key not in expected or state[key].shape != expected[key].shape]
    missing = [key for key in expected if key not in state and not key.startswith(published)
               and not key.endswith(_ADAPTERS)]
    blocking = [key for key in [*unfit, *missing] if not key.startswith(optional)]
    if blocking:
        key = blocking[0]
        what = ("has no place in" if key not in expected else "has another shape in" if key in state
                else "is not in it but needed by")
        raise SertoolError(
            f"--init-from {source}: its weight {key} {what} the model the run's settings describe; leave out the "
            "model flags (or --config keys) that change the architecture, or start from another model"
        )
    model.load_state_dict({key: value for key, value in state.items() if key not in unfit}, strict=False)
    check_fitted(model, source=weights_file)
    fresh = sorted({key.split(".", 1)[0] for key in expected if key.startswith(_TASK_HEADS)
                    and (key not in state or key in unfit)})
    fresh += [f"{name} head" for name in added]
    unused = sorted({key.split(".", 1)[0] for key in unfit if not key.startswith(_EMOTION_HEADS)})
    unused += [f"{name} head" for name in dropped]
    notes = []
    if fresh:
        notes.append(f"--init-from {source}: {', '.join(fresh)} not in that model (or of another shape): it starts "
                     "from random weights")
    if unused:
        notes.append(f"--init-from {source}: its {', '.join(unused)} weights do not fit this run and are not used")
    return notes


def _attributes_apart(model: nn.Module, payload: dict[str, Any], *, source: str) -> tuple[list[str], list[str]]:
    """The attributes the run predicts and ``payload``'s model does not (their heads start fresh), and those
    ``payload``'s model predicts and the run does not (their heads stay behind), in ``ATTRIBUTES`` order."""
    ours, theirs = set(getattr(model, "attributes", ATTRIBUTES)), set(payload_attributes(payload, source=source))
    return ([name for name in ATTRIBUTES if name in ours - theirs],
            [name for name in ATTRIBUTES if name in theirs - ours])


def inherited_training_data(payload: dict[str, Any], *, source: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """What the initial model ``payload`` (``load_model(source)``) trained on, for the run to record as its own.

    Returns:
        Its recorded ``training_ids`` (which hold those of its own initial models), and the initial models
        whose training data is unknown: those it names under ``UNKNOWN_TRAINING_DATA``, and ``source`` itself
        where it records no ``training_ids`` (an authors' released model, a hub model, an older checkpoint).
    """
    recorded = payload.get("training_ids")
    unknown = unknown_training_data(payload)
    if recorded is None:
        unknown = (*unknown, source)
    return frozenset(recorded or ()), tuple(dict.fromkeys(unknown))
