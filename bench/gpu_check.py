"""The GPU check: what a short loan of a GPU machine must measure, in one command of a few minutes.

    python bench/gpu_check.py --out gpu_check.json                 # on the GPU machine (a few minutes)
    python bench/gpu_check.py --device cpu --tiny --out x.json     # the same code path on a CPU, in seconds

For the paper's WavLM-Large fine-tuning (random weights of the real shape: no hub needed), on micro-batches
formed as training forms them (``EpochBatchSampler``: --max-batch-s 64, at least 8 items), the epoch's
largest batch included:

1. step time and peak memory under bf16 and under fp16 (with its GradScaler), each with and without
   gradient checkpointing;
2. model FLOPs utilisation (MFU): the step's FLOPs (counted by ``torch.utils.flop_counter`` on the same
   step) over its time, against the card's dense bf16/fp16 peak (a table below; unknown cards: none);
3. the agreement of bf16 and fp16 predictions with fp32 ones, eval mode, on the 1..7 scale (max difference
   and CCC against fp32);
4. with two or more GPUs visible, one DDP step on 2 GPUs (NCCL), its time and each rank's peak memory.

Each section stops early when the loan's time is short (``--budget-s``); the JSON says what ran.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's sertool and tests/

from sertool.core.config import ModelConfig, TrainConfig  # noqa: E402
from sertool.data.audio import SAMPLE_RATE  # noqa: E402
from sertool.models.ccc import ccc  # noqa: E402
from sertool.models.losses import SERLoss  # noqa: E402
from sertool.models.ser_model import SERModel  # noqa: E402
from sertool.training.optim import build_optimizer  # noqa: E402
from sertool.training.samplers import EpochBatchSampler  # noqa: E402
from tests.tiny_speech import save_tiny_wavlm  # noqa: E402

LARGE_WAVLM: dict[str, Any] = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, conv_dim=(512,) * 7,
    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, num_buckets=320, max_bucket_distance=800,
    feat_extract_norm="layer", do_stable_layer_norm=True, layerdrop=0.1)
TINY_WAVLM: dict[str, Any] = dict(feat_extract_norm="layer", do_stable_layer_norm=True)
# Dense tensor-core peaks in TFLOPS (bf16 where the card has it, fp16 otherwise), from the vendors' sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0,
               "V100": 125.0, "T4": 65.0, "RTX 4090": 165.0, "RTX 3090": 71.0}
MAX_BATCH_S = TrainConfig().max_batch_s  # 64 s: the paper config's micro-batch bound
MIN_BATCH_ITEMS = TrainConfig().min_batch_items  # 8
PLAN_UTTERANCES = 2_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON of every figure")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--tiny", action="store_true", help="a tiny WavLM instead of the Large shape (a dry run)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting new sections after this")
    arguments = parser.parse_args()
    device = torch.device(arguments.device)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = save_tiny_wavlm(Path(folder) / "wavlm", **(TINY_WAVLM if arguments.tiny else LARGE_WAVLM))
        config = ModelConfig(backbone="wavlm", backbone_path=str(path), aux=("gender",))
        report = check(config, device, steps=arguments.steps, deadline=started + arguments.budget_s,
                       tiny=arguments.tiny)
    report["seconds"] = round(time.perf_counter() - started, 1)
    arguments.out.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report))
    return 0


def check(config: ModelConfig, device: torch.device, *, steps: int, deadline: float, tiny: bool) -> dict[str, Any]:
    """Every section that fits before ``deadline``; see the module docstring."""
    durations_s = _msp_like_durations(PLAN_UTTERANCES)
    max_batch_s = MAX_BATCH_S
    if tiny:  # a dry run's batches: the same plan logic on a quarter of the audio
        durations_s, max_batch_s = durations_s / 4, max_batch_s / 4
    batches = _training_batches(durations_s, steps=steps, max_batch_s=max_batch_s)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict[str, Any] = {"device": name, "torch": torch.__version__, "peak_tflops": _peak_tflops(name),
                              "batches": [len(batch) for batch in batches],
                              "largest_batch_padded_s": round(max(len(b) * max(durations_s[b]) for b in batches), 1),
                              "training": [], "agreement": None, "ddp": None, "skipped": []}
    dtypes = [torch.bfloat16, torch.float16] if device.type == "cuda" else [torch.bfloat16]
    for dtype in dtypes:
        for checkpointing in (False, True):
            if time.perf_counter() > deadline:
                report["skipped"].append(f"training {dtype} checkpointing={checkpointing}")
                continue
            report["training"].append(_train(config, batches, durations_s, device, dtype=dtype,
                                             checkpointing=checkpointing, peak_tflops=report["peak_tflops"]))
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the variant's model and optimiser state are gone with _train's frame
    if time.perf_counter() < deadline:
        report["agreement"] = _agreement(config, durations_s, device, dtypes)
    else:
        report["skipped"].append("agreement")
    if device.type == "cuda" and torch.cuda.device_count() >= 2 and time.perf_counter() < deadline:
        report["ddp"] = _ddp_step(config, batches[:2], durations_s)
    elif device.type == "cuda" and torch.cuda.device_count() >= 2:
        report["skipped"].append("ddp")
    return report


def _msp_like_durations(count: int) -> np.ndarray:
    """MSP-Podcast's segment lengths, 2.75 to 11 s, spread evenly (seeded)."""
    return np.random.default_rng(2).uniform(2.75, 11.0, count)


def _training_batches(durations_s: np.ndarray, *, steps: int, max_batch_s: float) -> list[list[int]]:
    """A warm-up batch, then ``steps`` batches of an epoch's plan with the epoch's largest one first: the batch
    that decides whether a run fits in memory."""
    plan = EpochBatchSampler([None] * len(durations_s), durations_s, sampling="whole", max_batch_s=max_batch_s,
                             min_batch_items=MIN_BATCH_ITEMS).plan(0)
    largest = max(plan, key=lambda batch: len(batch) * max(durations_s[batch]))
    others = [batch for batch in plan if batch is not largest]
    return [others[0], largest, *others[1:steps]]


def _audio(batch: list[int], durations_s: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([int(durations_s[item] * SAMPLE_RATE) for item in batch], device=device)
    sample_mask = torch.arange(int(lengths.max()), device=device)[None, :] < lengths[:, None]
    generator = torch.Generator(device=device).manual_seed(len(batch))
    noise = torch.randn(sample_mask.shape, device=device, generator=generator)
    return 0.1 * noise * sample_mask, sample_mask


def _train(config: ModelConfig, batches: list[list[int]], durations_s: np.ndarray, device: torch.device, *,
           dtype: torch.dtype, checkpointing: bool, peak_tflops: float | None) -> dict[str, Any]:
    """Optimiser steps as ``sertool train`` takes them (autocast, GradScaler for fp16, clipping, AdamW)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = SERModel(config, gradient_checkpointing=checkpointing).to(device).train()
    loss_fn = SERLoss(config)
    optimizer = build_optimizer(model.parameter_groups(), TrainConfig())
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    trainable = [parameter for group in optimizer.param_groups for parameter in group["params"]]

    def step(batch: list[int]) -> None:
        waveforms, sample_mask = _audio(batch, durations_s, device)
        with torch.autocast(device.type, dtype=dtype):
            output = model(waveforms, sample_mask)
        targets = torch.rand(len(batch), 3, device=device)
        loss, _ = loss_fn(output, targets, gender_ids=torch.randint(0, 2, (len(batch),), device=device))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, TrainConfig().grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()

    step(batches[0])  # warm-up: allocator growth, cuDNN autotuning
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, utterances = [], 0
    for batch in batches[1:]:
        started = time.perf_counter()
        step(batch)
        _synchronize(device)
        seconds.append(time.perf_counter() - started)
        utterances += len(batch)
    counter = FlopCounterMode(display=False)
    with counter:
        step(batches[1])
    flops = counter.get_total_flops()
    largest_s = seconds[0]
    result = {"dtype": str(dtype).removeprefix("torch."), "gradient_checkpointing": checkpointing,
              "largest_batch_step_s": round(largest_s, 3), "mean_step_s": round(float(np.mean(seconds)), 3),
              "utterances_per_s": round(utterances / sum(seconds), 2),
              "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
              if device.type == "cuda" else None,
              "largest_batch_gflop": round(flops / 1e9, 1),
              "mfu": round(flops / largest_s / (peak_tflops * 1e12), 3) if peak_tflops else None}
    return result


@torch.no_grad()
def _agreement(config: ModelConfig, durations_s: np.ndarray, device: torch.device,
               dtypes: list[torch.dtype]) -> dict[str, Any]:
    """Eval-mode predictions (1..7) of one model on 64 clips, in fp32 and under each autocast dtype."""
    torch.manual_seed(0)
    model = SERModel(config).to(device).eval()
    clips = [list(range(start, start + 8)) for start in range(0, 64, 8)]

    def predict(dtype: torch.dtype | None) -> np.ndarray:
        rows = []
        for batch in clips:
            waveforms, sample_mask = _audio(batch, durations_s, device)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                rows.append(model.label_scaling.ratings(model(waveforms, sample_mask).emotion.float().cpu().numpy()))
        return np.concatenate(rows).astype(np.float64)

    reference = predict(None)
    result: dict[str, Any] = {"clips": len(reference)}
    for dtype in dtypes:
        values = predict(dtype)
        agreement = ccc(torch.from_numpy(values), torch.from_numpy(reference), dim=0)
        result[str(dtype).removeprefix("torch.")] = {
            "max_abs_difference": round(float(np.abs(values - reference).max()), 5),
            "ccc_with_fp32": [round(float(value), 5) for value in agreement]}
    return result


def _ddp_step(config: ModelConfig, batches: list[list[int]], durations_s: np.ndarray) -> dict[str, Any]:
    """One bf16 optimiser step of DistributedDataParallel on 2 GPUs (NCCL), after one warm-up step."""
    import torch.multiprocessing as multiprocessing

    results = multiprocessing.get_context("spawn").Manager().dict()
    multiprocessing.spawn(_ddp_rank, args=(config, batches, durations_s, results), nprocs=2, join=True)
    return dict(results)


def _ddp_rank(rank: int, config: ModelConfig, batches: list[list[int]], durations_s: np.ndarray, results) -> None:
    import os

    import torch.distributed as distributed
    from torch.nn.parallel import DistributedDataParallel

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    distributed.init_process_group("nccl", rank=rank, world_size=2)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = DistributedDataParallel(SERModel(config).to(device).train(), device_ids=[rank],
                                    find_unused_parameters=True)
    loss_fn = SERLoss(config)
    optimizer = build_optimizer(model.module.parameter_groups(), TrainConfig())
    seconds = 0.0
    for index, batch in enumerate(batches):
        torch.cuda.synchronize(device)
        started = time.perf_counter()
        waveforms, sample_mask = _audio(batch, durations_s, device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            output = model(waveforms, sample_mask)
        loss, _ = loss_fn(output, torch.rand(len(batch), 3, device=device),
                          gender_ids=torch.randint(0, 2, (len(batch),), device=device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize(device)
        if index:
            seconds = time.perf_counter() - started
    results[rank] = {"step_s": round(seconds, 3),
                     "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)}
    distributed.destroy_process_group()


def _peak_tflops(name: str) -> float | None:
    return next((peak for card, peak in PEAK_TFLOPS.items() if card in name), None)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def render(report: dict[str, Any]) -> str:
    """The figures as a markdown table, for docs/performance.md."""
    lines = [f"{report['device']}, torch {report['torch']}; micro-batches of ≤ {MAX_BATCH_S:g} padded s and ≥ "
             f"{MIN_BATCH_ITEMS} clips (sizes {report['batches']}; the largest {report['largest_batch_padded_s']} s)",
             "", "| precision | checkpointing | largest batch step (s) | mean step (s) | utt/s | peak GB | MFU |",
             "|---|---|---|---|---|---|---|"]
    for row in report["training"]:
        lines.append(f"| {row['dtype']} | {'yes' if row['gradient_checkpointing'] else 'no'} | "
                     f"{row['largest_batch_step_s']} | {row['mean_step_s']} | {row['utterances_per_s']} | "
                     f"{row['peak_memory_gb']} | {row['mfu']} |")
    if report["agreement"]:
        lines.append("")
        lines.append("agreement with fp32 (1..7 scale): " + "; ".join(
            f"{name}: max |Δ| {value['max_abs_difference']}, CCC {value['ccc_with_fp32']}"
            for name, value in report["agreement"].items() if isinstance(value, dict)))
    if report["ddp"]:
        lines.append(f"DDP, 2 GPUs, bf16: {report['ddp']}")
    if report["skipped"]:
        lines.append(f"skipped (time budget): {', '.join(report['skipped'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
