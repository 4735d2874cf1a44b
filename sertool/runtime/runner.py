"""Running a model over utterances: whole clips, length-sorted batches, results in corpus order.

Used by validation during training and by `evaluate`, `predict` and `ensemble`. Batching never changes a
prediction: masks make a padded batch equal to one item at a time (tested per backbone).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from sertool.cache.frames import CachedFrames
from sertool.core.config import DEFAULT_EVAL_BATCH_S
from sertool.core.errors import SertoolError
from sertool.core.interrupts import quiet_worker
from sertool.core.progress import task
from sertool.data.dataset import Batch, UtteranceDataset, collate
from sertool.data.records import Utterance
from sertool.runtime.batching import length_sorted_batches
from sertool.runtime.distributed import Distributed, all_gather_objects


@dataclass
class ModelPredictions:
    """Raw model outputs in the order of the utterances they were asked for."""

    ids: list[str]
    emotion_unit: np.ndarray  # [N, len(model.attributes)] unit scale (all three: A, V, D)
    gender_probabilities: np.ndarray | None = None  # [N, 2] over GENDERS, with a gender head


# One padded batch → its emotion outputs [B, attributes] on the unit scale and, with a gender head, the gender
# probabilities [B, 2]: a torch module (``run_model``) or an exported graph (an ONNX session) behind it.
BatchForward = Callable[[Batch], tuple[np.ndarray, np.ndarray | None]]


@torch.no_grad()
def run_model(
    model: torch.nn.Module,
    utterances: Sequence[Utterance],
    *,
    device: torch.device,
    text_embeddings: Mapping[str, torch.Tensor] | None = None,
    frames: CachedFrames | None = None,
    max_batch_s: float = DEFAULT_EVAL_BATCH_S,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    context: Distributed | None = None,
    description: str = "predicting",
    finite_only: bool = True,
) -> ModelPredictions:
    """Predict every utterance (whole, never cropped) and return the outputs in input order.

    Every output is checked (``require_finite``): a NaN or infinite prediction stops the run, naming its
    utterance, instead of reaching a score or a file.

    Args:
        model: an ``SERModel`` (or its DDP wrapper); switched to eval mode and back.
        utterances: what to predict.
        device: where the model is.
        text_embeddings: id → cached transcript embedding, for MM models with a frozen text encoder.
        frames: the backbone's cached frames of every utterance (``sertool.runtime.frames``): read instead of
            running the backbone.
        max_batch_s: bound on batch size × longest clip in seconds.
        num_workers: data-loader processes.
        amp_dtype: autocast dtype (None: full precision).
        context: under DDP, each rank predicts a share and every rank gets the whole result.
        description: what the pass is for, as its progress bar names it (``sertool.core.progress.task``, with the
            utterance count added); the bar counts this rank's utterances.
        finite_only: False returns NaN or infinite outputs as they are, for a caller with its own policy
            (validation during training records them and never counts them as an improvement).
    """
    core = getattr(model, "module", model)  # DDP hands the module out; evaluation needs no gradient sync
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

    def forward(batch: Batch) -> tuple[np.ndarray, np.ndarray | None]:
        batch = batch.to(device)
        with autocast:
            output = core(batch.waveforms, batch.sample_mask, frames=batch.frames, frame_mask=batch.frame_mask,
                          text_embeddings=batch.text_embeddings, texts=batch.texts if core.needs_texts else None)
        gender = None if output.gender_logits is None else output.gender_logits.float().softmax(-1).cpu().numpy()
        return output.emotion.float().cpu().numpy(), gender

    was_training = core.training
    core.eval()
    try:
        return run_batches(forward, utterances, width=len(cast(Sequence[str], core.attributes)),
                           text_embeddings=text_embeddings, frames=frames, max_batch_s=max_batch_s,
                           num_workers=num_workers, pin_memory=device.type == "cuda", context=context,
                           description=description, finite_only=finite_only)
    finally:
        core.train(was_training)


def run_batches(
    forward: BatchForward,
    utterances: Sequence[Utterance],
    *,
    width: int,
    text_embeddings: Mapping[str, torch.Tensor] | None = None,
    frames: CachedFrames | None = None,
    max_batch_s: float = DEFAULT_EVAL_BATCH_S,
    num_workers: int = 0,
    pin_memory: bool = False,
    context: Distributed | None = None,
    description: str = "predicting",
    finite_only: bool = True,
) -> ModelPredictions:
    """What ``run_model`` does for any ``forward``: whole utterances read by a data loader, batched longest first
    up to ``max_batch_s`` padded seconds, each batch through ``forward``, every output checked
    (``require_finite``, unless ``finite_only`` is False), the results in input order (gathered from every rank
    under DDP). The arguments are ``run_model``'s; ``width`` is the number of emotion columns (the model's
    attributes), ``pin_memory`` pins the batches for a copy to a GPU.
    """
    context = context or Distributed()
    dataset = UtteranceDataset(utterances, to_unit=float, text_embeddings=text_embeddings, frames=frames)
    batches = length_sorted_batches([utt.duration_s for utt in utterances], max_batch_s=max_batch_s)
    mine = batches[context.rank::context.world_size]
    mine_total = sum(len(indices) for indices in mine)  # what the progress counts: this rank's utterances
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=mine, collate_fn=collate, num_workers=num_workers,
                                         pin_memory=pin_memory, worker_init_fn=quiet_worker)
    ids: list[str] = []
    emotion, gender = [], []
    with task(f"{description} ({len(utterances):,} utterances)") as progress:
        for batch in loader:
            if batch.skipped:
                raise SertoolError(f"cannot predict {batch.skipped[0]}")
            batch_emotion, batch_gender = forward(batch)
            ids.extend(batch.ids)
            emotion.append(batch_emotion)
            if finite_only:
                require_finite(batch.ids, batch_emotion, utterances)
            if batch_gender is not None:
                gender.append(batch_gender)
                if finite_only:
                    require_finite(batch.ids, batch_gender, utterances)
            progress(len(ids), mine_total)
    local = (ids, np.concatenate(emotion) if emotion else np.zeros((0, width)),
             np.concatenate(gender) if gender else None)
    position = {utt.id: index for index, utt in enumerate(utterances)}
    all_ids, all_emotion, all_gender = [], [], []
    for part_ids, part_emotion, part_gender in all_gather_objects(local, context):
        all_ids.extend(part_ids)
        all_emotion.append(part_emotion)
        if part_gender is not None:
            all_gender.append(part_gender)
    order = np.argsort([position[utt_id] for utt_id in all_ids], kind="stable")
    return ModelPredictions(
        ids=[all_ids[index] for index in order],
        emotion_unit=np.concatenate(all_emotion)[order],
        gender_probabilities=np.concatenate(all_gender)[order] if all_gender else None,
    )


def require_finite(ids: Sequence[str], outputs: np.ndarray, utterances: Sequence[Utterance]) -> None:
    """Refuse model outputs (one row per id) that are not all finite.

    Raises:
        SertoolError: naming the first utterance (its file, and its span for a window of a long file).
    """
    bad = ~np.isfinite(outputs).reshape(len(ids), -1).all(axis=1)
    if bad.any():
        utt_id = ids[int(np.argmax(bad))]
        utt = next(utt for utt in utterances if utt.id == utt_id)
        where = f"{utt.audio_path}" + (f" [{utt.span_s[0]:.2f}–{utt.span_s[1]:.2f} s]" if utt.span_s else "")
        raise SertoolError(
            f"{where}: the model's prediction for {utt_id} is not finite ({outputs[int(np.argmax(bad))]}): the "
            "model's weights are not finite (a training that diverged) or this input is degenerate "
            f"({int(bad.sum())} of the {len(ids)} utterances of its batch are affected)"
        )
