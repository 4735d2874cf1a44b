"""Where a WavLM-Base-sized forward pass spends its CPU time, float32 and ``--quantize int8`` (benchmark 10's
profile in docs/performance.md).

Per-module CPU time (``time.process_time`` in forward hooks: other processes on a shared machine do not
count), one torch thread, one clip of random speech-like audio, the fastest of a few passes. The float32
attention block hides its four projections inside ``F.multi_head_attention_forward``; they are timed apart
as ``nn.Linear`` layers of the same shape.

Usage::

    python bench/quantize_profile.py [--seconds 10] [--passes 5]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from infer_bench import save_base_sized_wavlm  # noqa: E402
from train_bench import wavlm_config  # noqa: E402

# the attention's four projections (a row of their own)
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def timed_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules whose time is recorded, by row name (a module may feed several rows)."""
    wavlm = model.backbone.model
    rows: dict[str, nn.Module] = {f"CNN layer {i}": layer for i, layer in enumerate(wavlm.feature_extractor.conv_layers)}
    rows["feature projection"] = wavlm.feature_projection
    rows["positional conv (grouped, k=128)"] = wavlm.encoder.pos_conv_embed
    for i, layer in enumerate(wavlm.encoder.layers):
        rows[f"attention {i}"] = layer.attention
        for name in ATTENTION_PROJECTIONS:
            rows[f"projection {i} {name}"] = getattr(layer.attention, name)
        rows[f"feed-forward {i}"] = layer.feed_forward
        rows[f"layer norms {i} a"] = layer.layer_norm
        rows[f"layer norms {i} b"] = layer.final_layer_norm
    rows["pooling"] = model.pooling
    rows["heads"] = model.emotion_heads
    rows["whole model"] = model
    return rows


def profile(models: dict[str, nn.Module], waveform: torch.Tensor, *, passes: int) -> dict[str, dict[str, float]]:
    """CPU seconds per row of each model, from its fastest whole pass; the models take turns, so that a
    change in the machine's load meets them alike."""
    seconds: dict[str, dict[str, float]] = {label: defaultdict(float) for label in models}
    starts: dict[str, float] = {}
    for label, model in models.items():
        for name, module in timed_modules(model).items():
            module.register_forward_pre_hook(
                lambda _m, _i, key=(label, name): starts.__setitem__(key, time.process_time()))
            module.register_forward_hook(
                lambda _m, _i, _o, label=label, name=name:
                seconds[label].__setitem__(name, seconds[label][name] + time.process_time() - starts[(label, name)]))
    mask = torch.ones_like(waveform, dtype=torch.bool)
    best: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for model in models.values():
            model(waveform, mask)  # warm-up
        for _ in range(passes):
            for label, model in models.items():
                seconds[label].clear()
                model(waveform, mask)
                if label not in best or seconds[label]["whole model"] < best[label]["whole model"]:
                    best[label] = dict(seconds[label])
    return best


def linear_seconds(frames: int, *, layers: int, passes: int) -> float:
    """CPU seconds of ``layers`` × the four float32 768 → 768 attention projections on ``frames`` frames."""
    linear, hidden = nn.Linear(768, 768), torch.randn(1, frames, 768)
    with torch.inference_mode():
        linear(hidden)
        best = float("inf")
        for _ in range(passes):
            start = time.process_time()
            for _ in range(layers * len(ATTENTION_PROJECTIONS)):
                linear(hidden)
            best = min(best, time.process_time() - start)
    return best


def grouped(seconds: dict[str, float], *, float_projections: float | None) -> dict[str, float]:
    """Rows summed over the transformer layers; the attention row without its projections."""
    rows: dict[str, float] = defaultdict(float)
    for name, value in seconds.items():
        if name.startswith(("attention ", "projection ", "feed-forward ", "layer norms ")):
            kind = name.split(" ")[0]
            if kind == "projection":
                rows["attention projections (q, k, v, out)"] += value
                rows["attention: products, position bias, softmax"] -= value
            elif kind == "attention":
                rows["attention: products, position bias, softmax"] += value
            else:
                rows[{"feed-forward": "feed-forward (768 → 3072 → 768)", "layer": "layer norms"}[kind]] += value
        else:
            rows[name] += value
    if float_projections is not None:
        rows["attention projections (q, k, v, out)"] = float_projections
        rows["attention: products, position bias, softmax"] -= float_projections
    accounted = sum(value for name, value in rows.items() if name != "whole model")
    rows["other (normalisation of the input, masks, ...)"] = rows["whole model"] - accounted
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--passes", type=int, default=5, help="timed passes per variant (the fastest is kept)")
    args = parser.parse_args()
    from measure import write_speechlike
    from sertool.acceleration.cpu import quantize_int8
    from sertool.data.audio import load_audio
    from sertool.models.ser_model import SERModel

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        write_speechlike(Path(folder) / "clip.wav", duration_s=args.seconds, rng=np.random.default_rng(0))
        waveform = load_audio(Path(folder) / "clip.wav").unsqueeze(0)
        config = wavlm_config(save_base_sized_wavlm(Path(folder) / "wavlm"))
        torch.manual_seed(0)
        model = SERModel(config).eval()
        frames = int(model.backbone.model._get_feat_extract_output_lengths(torch.tensor(waveform.shape[-1])))
        seconds = profile({"float32": model, "int8": quantize_int8(copy.deepcopy(model))}, waveform,
                          passes=args.passes)
        results = {"float32": grouped(seconds["float32"],
                                      float_projections=linear_seconds(frames, layers=12, passes=args.passes)),
                   "int8": grouped(seconds["int8"], float_projections=None)}
    total = {label: rows["whole model"] for label, rows in results.items()}
    print(f"{args.seconds:.0f}-s clip, 1 thread, CPU ms (share of the pass)")
    print("| part | float32 | int8 | speed-up |\n|---|---:|---:|---:|")
    for name in results["float32"]:
        f32, i8 = results["float32"][name], results["int8"].get(name, 0.0)
        print(f"| {name} | {1e3 * f32:.0f} ({100 * f32 / total['float32']:.0f} %) | "
              f"{1e3 * i8:.0f} ({100 * i8 / total['int8']:.0f} %) | {f32 / i8 if i8 > 0 else float('nan'):.2f}× |")


if __name__ == "__main__":
    main()
