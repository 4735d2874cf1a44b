"""What a run's checkpoints hold, and how ``last.pt`` gives a resumed run its exact state back.

Every checkpoint (``best.pt``, ``best_<attribute>.pt``, ``last.pt``) holds the model and where it came from:
``model_description``, fixed once the run is set up, plus the weights, the step and the validation metrics
(``checkpoint_payload``). ``last.pt`` adds the whole training state under "training" (``training_state``):
the optimiser, the GradScaler, the schedule, the sampler's position in its epoch, every rank's random
states, and under "progress" the ``TrainState`` with the data fingerprint. ``restore_training`` takes it back.

The loop writes the checkpoints (rank 0, atomically: ``store.checkpoints.save_checkpoint``), ``last.pt`` only
at an optimiser-step boundary. Checkpoints are read with ``torch.load(weights_only=True)``: plain types only.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sertool.core.config import DEFAULT_BACKBONE_IDS, Config
from sertool.core.errors import SertoolError
from sertool.data.records import Utterance
from sertool.data.selection import UNKNOWN_TRAINING_DATA
from sertool.models.ser_model import SERModel
from sertool.runtime import random_state
from sertool.runtime.distributed import Distributed
from sertool.store.checkpoints import LAST_NAME, provenance, stored_state
from sertool.training.optim import LRSchedule, load_optimizer_state
from sertool.training.run_folder import CONFIG_NAME
from sertool.training.samplers import EpochBatchSampler
from sertool.training.state import TrainState


def model_description(config: Config, model: SERModel, *, speakers: list[str], training_ids: Sequence[str],
                      backbone_weights: str, train_set: Sequence[Utterance], valid_set: Sequence[Utterance],
                      selection_summary: str, unknown_training_data: Sequence[str] = ()) -> dict[str, Any]:
    """The part of every checkpoint that is fixed once the run is set up: enough to rebuild the model and to
    know where it came from.

    ``training_ids`` holds the ``--init-from`` model's too (kept as given, e.g. packed: each checkpoint stores a
    list of them); ``unknown_training_data`` names the initial models whose training data is unknown (stored
    under ``UNKNOWN_TRAINING_DATA`` only where there are any)."""
    model_config = config.model
    return {
        "config": config.to_dict(),
        "label_scaling": model.label_scaling.to_dict(),
        "attributes": list(model.attributes),  # its heads' (train.attributes); older checkpoints: all three
        "pretrained": {"backbone": model_config.backbone_path or DEFAULT_BACKBONE_IDS[model_config.backbone],
                       "text_model": model_config.text_model if model_config.text else None,
                       "speaker_embedding": model_config.speaker_embedding},
        "speakers": speakers,
        # What the model saw, its --init-from model's included: `evaluate` and `reproduce` score it only on
        # other utterances.
        "training_ids": training_ids,
        **({UNKNOWN_TRAINING_DATA: list(unknown_training_data)} if unknown_training_data else {}),
        "backbone_weights": backbone_weights,
        # What the model learnt from and what its metrics were measured on (model cards quote it).
        "data": {"corpus": str(config.data.corpus), "train_split": config.data.train_split,
                 "train_utterances": len(train_set), "valid_split": config.data.valid_split,
                 "valid_utterances": len(valid_set), "selection": selection_summary},
    }


def checkpoint_payload(description: dict[str, Any], model: SERModel, state: TrainState,
                       metrics: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint of ``model`` at ``state``'s step holds, with the ``metrics`` it is kept for."""
    return {**description, "training_ids": list(description["training_ids"]), "model_state": stored_state(model),
            "epoch": state.epoch, "step": state.step, "metrics": metrics, "provenance": provenance()}


def training_state(state: TrainState, *, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   schedule: LRSchedule, sampler: EpochBatchSampler, rng: list[dict[str, Any]], world_size: int,
                   data_fingerprint: str) -> dict[str, Any]:
    """``last.pt``'s "training": what continues the run exactly where ``state`` is, at a step boundary.

    Args:
        rng: every rank's ``random_state.process_state()``, in rank order.
        data_fingerprint: ``run_folder.data_fingerprint`` of the run's data (``check_same_data``).
    """
    return {
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "schedule": schedule.state_dict(),
        # After the last step of an epoch the next epoch has not started: its position is 0.
        "sampler": (sampler.state_dict(batches_consumed=state.batches_in_epoch) if sampler.epoch == state.epoch
                    else None),
        "rng": {"world_size": world_size, "ranks": rng},
        "progress": {**state.state_dict(), "data_fingerprint": data_fingerprint},
    }


def restore_training(training: dict[str, Any], state: TrainState, *, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, schedule: LRSchedule, sampler: EpochBatchSampler,
                     context: Distributed, seed: int, run_dir: Path) -> str | None:
    """Give the run the state ``training_state`` saved: the optimiser, scaler, schedule, ``state``, the
    sampler's position (when its epoch had started) and this rank's random states.

    Returns:
        A warning when the random states could not be restored and the ranks were seeded afresh (a checkpoint
        of another number of processes), else None.

    Raises:
        SertoolError: the training state is incomplete or damaged.
    """
    try:
        load_optimizer_state(optimizer, training["optimizer"])
        scaler.load_state_dict(training["scaler"])
        schedule.load_state_dict(training["schedule"])
        state.load_state_dict(training["progress"])
        sampler_state = training["sampler"]
        if sampler_state is not None and sampler_state["epoch"] == state.epoch:
            sampler.load_state_dict(sampler_state)
            state.batches_in_epoch = sampler.batches_done
        return random_state.restore_process_state(training["rng"], rank=context.rank, world_size=context.world_size,
                                                  device=context.device, seed=seed)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise SertoolError(f"{run_dir / LAST_NAME}: its training state is incomplete or damaged "
                           f"({type(error).__name__}: {str(error)[:120]}); start the run again with `sertool train "
                           f"--config {run_dir / CONFIG_NAME} --out {run_dir} --force`") from None


def check_same_data(training: dict[str, Any], fingerprint: str, *, config: Config, train_utterances: int,
                    valid_utterances: int, run_dir: Path) -> None:
    """Refuse to continue a run on other data than it trained on (a moved or changed corpus): ``fingerprint``
    against the one ``training`` (``last.pt``'s) recorded.

    Raises:
        SertoolError: they differ, naming the corpus.
    """
    progress = training.get("progress")
    recorded = progress.get("data_fingerprint") if isinstance(progress, dict) else None
    if recorded is not None and recorded != fingerprint:
        raise SertoolError(
            f"--corpus {config.data.corpus}: not the data this run trained on ({train_utterances} training and "
            f"{valid_utterances} validation utterances here, but their ids, durations or labels differ from those "
            f"recorded in {run_dir / LAST_NAME}); resume with the run's own corpus")
