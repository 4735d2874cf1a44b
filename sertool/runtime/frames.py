"""Filling the feature cache: a frozen backbone's frames of every utterance a run reads, computed once.

``fill_frame_cache`` runs the backbone over the utterances whose frames the cache lacks (whole
utterances, length-sorted batches, as ``run_model``), saving every ``GROUP_UTTERANCES`` as one shard, and
returns every utterance's frames, read back from the cache. Under DDP each rank fills a share, then every
rank reads all.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from sertool.cache.frames import CachedFrames, FrameCache
from sertool.core.config import DEFAULT_EVAL_BATCH_S
from sertool.core.errors import SertoolError
from sertool.core.interrupts import quiet_worker
from sertool.data.dataset import UtteranceDataset, collate
from sertool.data.records import Utterance
from sertool.runtime import distributed
from sertool.runtime.batching import length_sorted_batches
from sertool.runtime.distributed import Distributed


def fill_frame_cache(
    backbone: torch.nn.Module,
    utterances: Sequence[Utterance],
    cache: FrameCache,
    *,
    frame_rate: float,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    max_batch_s: float = DEFAULT_EVAL_BATCH_S,
    num_workers: int = 0,
    read_waveforms: bool = False,
    context: Distributed | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CachedFrames:
    """The backbone's frames of every utterance, computing only those not cached yet.

    Args:
        backbone: ``(waveforms [B, S], sample_mask [B, S]) → (frames [B, T, D], frame_mask [B, T])``, frozen.
        utterances: whole utterances (training crops are cut from these frames later).
        cache: where the frames are kept (its key must name ``backbone`` and ``amp_dtype``).
        frame_rate: the backbone's frames per second.
        device: where the backbone is.
        amp_dtype: autocast dtype of the computation (None: full precision).
        max_batch_s: bound on batch size × longest clip in seconds.
        num_workers: data-loader processes reading the audio.
        read_waveforms: the model also reads the audio beside the frames (recorded in the result).
        context: under DDP, each rank computes a share; every rank returns all.
        progress: ``(done, total)`` over the utterances this rank computes.

    Raises:
        SertoolError: audio that cannot be read (naming it), or a cache file that cannot be read or written.
    """
    context = context or Distributed()
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()

    @torch.no_grad()
    def compute(batch_utterances: list[Utterance]) -> list[np.ndarray]:
        dataset = UtteranceDataset(batch_utterances, to_unit=float)
        batches = length_sorted_batches([utt.duration_s for utt in batch_utterances], max_batch_s=max_batch_s)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                             num_workers=num_workers, pin_memory=device.type == "cuda",
                                             worker_init_fn=quiet_worker)
        computed: list[np.ndarray] = [np.zeros(0)] * len(batch_utterances)
        for positions, batch in zip(batches, loader, strict=True):
            if batch.skipped:
                raise SertoolError(f"cannot compute the cached frames of {batch.skipped[0]}: fix or remove that "
                                   "file (or train without --feature-cache)")
            with autocast:
                frames, frame_mask = backbone(batch.waveforms.to(device), batch.sample_mask.to(device))
            for position, row, length in zip(positions, frames, frame_mask.sum(dim=1).tolist(), strict=True):
                computed[position] = row[:length].float().cpu().numpy()
        return computed

    was_training = backbone.training
    backbone.eval()
    try:
        distributed.fill_in_shares(lambda share: cache.get(share, compute, progress=progress), utterances, context)
        frames = cache.get(utterances, compute, progress=progress)
    finally:
        backbone.train(was_training)
    return CachedFrames({utt.id: entry for utt, entry in zip(utterances, frames, strict=True)},
                        frame_rate=frame_rate, read_waveforms=read_waveforms)
