"""GPU section (only where ``torch.cuda.is_available()``): a tiny and a WavLM-Large-sized model on the GPU.

Random weights from a config (no hub): the Large model has WavLM-Large's shape (24 layers, 1024 wide,
512-channel CNN), so its speed and memory are the real model's. Batches come from an ``EpochBatchSampler``
plan over MSP-Podcast-like durations, filled with random audio on the device (the model's throughput, not
the disk's). Training uses bf16 autocast and AdamW as ``sertool train --amp bf16`` does; inference runs
the length-sorted batches ``run_model`` plans, against one clip at a time.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from time import perf_counter
from typing import Any

import torch

from measure import Figure, msp_like_durations
from sertool.core.config import DEFAULT_EVAL_BATCH_S, ModelConfig, TrainConfig
from sertool.data.audio import SAMPLE_RATE
from sertool.models.losses import SERLoss
from sertool.models.ser_model import SERModel
from sertool.runtime.batching import length_sorted_batches
from sertool.training.optim import build_optimizer
from sertool.training.samplers import EpochBatchSampler
from tests.tiny_speech import save_tiny_wavlm

LARGE_WAVLM: dict[str, Any] = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, conv_dim=(512,) * 7,
    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, num_buckets=320, max_bucket_distance=800)
CONFIGS: dict[str, dict[str, Any]] = {"tiny WavLM": {}, "WavLM-Large size": LARGE_WAVLM}
PLAN_UTTERANCES = 2_000
MAX_BATCH_S = TrainConfig().max_batch_s


def gpu_benchmarks(folder: Path, device: torch.device, *, configs: Mapping[str, Mapping[str, Any]] = CONFIGS,
                   warmup_steps: int = 3, steps: int = 10, inference_clips: int = 200,
                   amp_dtype: torch.dtype = torch.bfloat16) -> list[Figure]:
    """Per model size: training (duration-bucketed vs fixed-size batches) and inference (length-sorted
    batches vs one clip at a time), with utterances/s and peak device memory.

    Args:
        folder: where the random models are saved.
        device: a CUDA device (any device works; peak memory is reported for CUDA only).
        configs: name → ``WavLMConfig`` overrides of ``save_tiny_wavlm``.
        warmup_steps: untimed steps first (cuDNN autotuning, allocator growth).
        steps: timed optimiser steps per training variant.
        inference_clips: clips each inference variant predicts.
        amp_dtype: autocast dtype.
    """
    durations_s = msp_like_durations(PLAN_UTTERANCES, seed=2)
    codes = [None] * len(durations_s)
    batch_size = int(MAX_BATCH_S // durations_s.max())
    plans = {
        "bucketed": EpochBatchSampler(codes, durations_s, sampling="whole", max_batch_s=MAX_BATCH_S).plan(0),
        "fixed": EpochBatchSampler(codes, durations_s, sampling="whole", batch_size=batch_size).plan(0),
    }
    clips_s = durations_s[:inference_clips]
    inference_plans = {"batched": length_sorted_batches(clips_s, max_batch_s=DEFAULT_EVAL_BATCH_S),
                       "one_at_a_time": [[index] for index in range(len(clips_s))]}
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    figures = []
    for name, overrides in configs.items():
        path = save_tiny_wavlm(folder / name.replace(" ", "-"), **overrides)
        config = ModelConfig(backbone="wavlm", backbone_path=str(path))
        key = name.split()[0].lower().replace("-", "_")
        training = {label: _train_steps(config, plan[: warmup_steps + steps], durations_s, device,
                                        warmup_steps=warmup_steps, amp_dtype=amp_dtype)
                    for label, plan in plans.items()}
        inference = {label: _predict(config, plan, clips_s, device, warmup_batches=warmup_steps, amp_dtype=amp_dtype)
                     for label, plan in inference_plans.items()}
        figures.append(Figure(
            key=f"gpu_training_{key}", benchmark=f"GPU bf16 training, {name}",
            value=training["bucketed"]["utterances_per_s"] / training["fixed"]["utterances_per_s"], unit="×", target=None,
            compared=(f"{device_name}: max_batch_s {MAX_BATCH_S:g} vs batch_size {batch_size}, {steps} timed steps "
                      f"each: {_summary(training)}"),
            details={**training, "batch_size": batch_size}))
        figures.append(Figure(
            key=f"gpu_inference_{key}", benchmark=f"GPU bf16 inference, {name}",
            value=inference["batched"]["utterances_per_s"] / inference["one_at_a_time"]["utterances_per_s"], unit="×",
            target=None,
            compared=(f"{device_name}: {len(clips_s)} clips, length-sorted batches of ≤ {DEFAULT_EVAL_BATCH_S:g} padded s "
                      f"vs one clip at a time: {_summary(inference)}"),
            details=inference))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return figures


def _summary(results: Mapping[str, Mapping[str, Any]]) -> str:
    return "; ".join(f"{label} {result['utterances_per_s']:.1f} utt/s"
                     + (f", {result['peak_memory_gb']:.1f} GB peak" if result["peak_memory_gb"] is not None else "")
                     for label, result in results.items())


def _random_batch(batch: list[int], durations_s, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random audio of the batch's durations, zero-padded, and its sample mask."""
    lengths = torch.tensor([int(durations_s[item] * SAMPLE_RATE) for item in batch], device=device)
    sample_mask = torch.arange(int(lengths.max()), device=device)[None, :] < lengths[:, None]
    return 0.1 * torch.randn(sample_mask.shape, device=device) * sample_mask, sample_mask


def _train_steps(config: ModelConfig, plan: list[list[int]], durations_s, device: torch.device, *, warmup_steps: int,
                 amp_dtype: torch.dtype) -> dict[str, Any]:
    """Train a fresh model on ``plan``'s batches of random audio; time the steps after ``warmup_steps``."""
    torch.manual_seed(0)
    model = SERModel(config).to(device).train()
    loss_fn = SERLoss(config)
    optimizer = build_optimizer(model.parameter_groups(), TrainConfig())
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    _reset_peak(device)
    utterances, started = 0, perf_counter()
    for index, batch in enumerate(plan):
        if index == warmup_steps:
            _synchronize(device)
            utterances, started = 0, perf_counter()
        waveforms, sample_mask = _random_batch(batch, durations_s, device)
        with torch.autocast(device.type, dtype=amp_dtype):
            output = model(waveforms, sample_mask)
        loss, _ = loss_fn(output, torch.rand(len(batch), 3, device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, TrainConfig().grad_clip_norm)
        optimizer.step()
        utterances += len(batch)
    return _result(device, utterances, started)


@torch.no_grad()
def _predict(config: ModelConfig, plan: list[list[int]], durations_s, device: torch.device, *, warmup_batches: int,
             amp_dtype: torch.dtype) -> dict[str, Any]:
    """Run a fresh model in eval mode over ``plan`` (after ``warmup_batches`` untimed batches of it)."""
    torch.manual_seed(0)
    model = SERModel(config).to(device).eval()
    for batch in plan[:warmup_batches]:
        with torch.autocast(device.type, dtype=amp_dtype):
            model(*_random_batch(batch, durations_s, device))
    _reset_peak(device)
    _synchronize(device)
    utterances, started = 0, perf_counter()
    for batch in plan:
        with torch.autocast(device.type, dtype=amp_dtype):
            model(*_random_batch(batch, durations_s, device)).emotion.float().cpu()  # run_model's copy to the host
        utterances += len(batch)
    return _result(device, utterances, started)


def _result(device: torch.device, utterances: int, started: float) -> dict[str, Any]:
    _synchronize(device)
    seconds = perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"utterances_per_s": utterances / seconds, "seconds": round(seconds, 3), "utterances": utterances,
            "peak_memory_gb": None if peak is None else round(peak, 2)}


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
