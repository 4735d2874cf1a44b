"""Filling the feature cache: a frozen backbone's hidden states of every utterance a run reads, computed once.

``fill_frame_cache`` runs the backbone over the utterances whose states the cache lacks (whole utterances,
length-sorted batches as ``run_model``, or one at a time for an encoder whose states depend on the padding),
saving a group of utterances at a time as one shard, and returns every utterance's frames, read back from
the cache. A frame's row holds every state the model mixes (``layer_states``), side by side. Under DDP each
rank fills a share, then every rank reads all.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from sertool.cache.frames import STORED_DTYPE, CachedFrames, FrameCache
from sertool.core.config import DEFAULT_EVAL_BATCH_S
from sertool.core.constants import SAMPLE_RATE
from sertool.core.errors import SertoolError
from sertool.core.interrupts import quiet_worker
from sertool.data.dataset import UtteranceDataset, collate
from sertool.data.records import Utterance
from sertool.runtime import distributed
from sertool.runtime.batching import length_sorted_batches
from sertool.runtime.distributed import Distributed

STORED_MAX = float(np.finfo(STORED_DTYPE).max)  # 65504: a larger value would be stored as infinity


class StateEncoder(Protocol):
    """What the fill needs of a backbone (``sertool.models.backbones.SpeechBackbone`` is one)."""

    training: bool
    frame_rate: float

    def layer_states(self, waveforms: Tensor, sample_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, S]`` waveforms and mask → states ``[B, T, L, D]`` and frame mask ``[B, T]``."""
        ...

    @property
    def padding_invariant(self) -> bool:
        """Whether a padded batch gives each utterance its states alone."""
        ...

    def frame_count(self, num_samples: int) -> int:
        """Frames of ``num_samples`` samples of audio."""
        ...

    def train(self, mode: bool = True) -> Any:
        """Training (True) or eval mode."""
        ...


def fill_frame_cache(
    backbone: StateEncoder,
    utterances: Sequence[Utterance],
    cache: FrameCache,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    max_batch_s: float = DEFAULT_EVAL_BATCH_S,
    num_workers: int = 0,
    read_waveforms: bool = False,
    crop_s: float | None = None,
    context: Distributed | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CachedFrames:
    """The backbone's frames (its ``layer_states``, each frame's states in one row) of every utterance,
    computing only those not cached yet.

    Args:
        backbone: the frozen encoder.
        utterances: whole utterances (training crops are cut from these frames later).
        cache: where the frames are kept (its key must name ``backbone``, its layers and ``amp_dtype``; its
            width L × D).
        device: where the backbone is.
        amp_dtype: autocast dtype of the computation (None: full precision).
        max_batch_s: bound on batch size × longest clip in seconds (an encoder that is not
            ``padding_invariant`` takes one utterance at a time).
        num_workers: data-loader processes reading the audio.
        read_waveforms: the model also reads the audio beside the frames (recorded in the result).
        crop_s: the training crop (``--max-duration-s``), whose frame count the result records.
        context: under DDP, each rank computes a share; every rank returns all.
        progress: ``(done, total)`` over the utterances this rank computes.

    Raises:
        SertoolError: audio that cannot be read (naming it), states beyond float16's range, or a cache
            file that cannot be read or written.
    """
    context = context or Distributed()
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    # An utterance's states must not depend on the batch it was computed in: the cache serves it to any batch.
    batch_s = max_batch_s if backbone.padding_invariant else 0.0

    @torch.no_grad()
    def compute(batch_utterances: list[Utterance]) -> list[np.ndarray]:
        dataset = UtteranceDataset(batch_utterances, to_unit=float)
        batches = length_sorted_batches([utt.duration_s for utt in batch_utterances], max_batch_s=batch_s)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                             num_workers=num_workers, pin_memory=device.type == "cuda",
                                             worker_init_fn=quiet_worker)
        computed: list[np.ndarray] = [np.zeros(0)] * len(batch_utterances)
        for positions, batch in zip(batches, loader, strict=True):
            if batch.skipped:
                raise SertoolError(f"cannot compute the cached frames of {batch.skipped[0]}: fix or remove that "
                                   "file (or train without --feature-cache)")
            with autocast:
                states, frame_mask = backbone.layer_states(batch.waveforms.to(device), batch.sample_mask.to(device))
            for position, row, length in zip(positions, states, frame_mask.sum(dim=1).tolist(), strict=True):
                computed[position] = _storable(row[:length].flatten(1), batch_utterances[position])
        return computed

    was_training = backbone.training
    backbone.train(False)
    try:
        distributed.fill_in_shares(lambda share: cache.get(share, compute, progress=progress), utterances, context)
        frames = cache.get(utterances, compute, progress=progress)
    finally:
        backbone.train(was_training)
    crop_frames = backbone.frame_count(round(crop_s * SAMPLE_RATE)) if crop_s else None
    return CachedFrames({utt.id: entry for utt, entry in zip(utterances, frames, strict=True)},
                        frame_rate=backbone.frame_rate, read_waveforms=read_waveforms, crop_frames=crop_frames)


def _storable(states: Tensor, utt: Utterance) -> np.ndarray:
    """One utterance's ``[T, L × D]`` states as float32 numpy, once they are known to fit float16.

    Raises:
        SertoolError: a value float16 cannot hold (it would be read back as infinity), naming the utterance.
    """
    array = states.float().cpu().numpy()
    largest = float(np.abs(array).max(initial=0.0))
    if not largest <= STORED_MAX:  # also catches NaN
        raise SertoolError(f"--feature-cache: the encoder's states of {utt.id} ({utt.audio_path}) reach {largest:g}, "
                           f"beyond what float16 holds ({STORED_MAX:g}): train this model without --feature-cache")
    return array
