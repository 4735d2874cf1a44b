"""Benchmark 12: CPU inference of an ONNX folder (`sertool export --format onnx`) in onnxruntime against torch.

Four variants of one model, each through the predictor a user gets (``open_predictor``: the same reading,
length-sorted batches and ratings), on the same clips: torch float32, torch ``--quantize int8``, onnxruntime
float32 (the exported folder), and onnxruntime's dynamic int8 quantisation of that graph
(``onnxruntime.quantization.quantize_dynamic`` of its MatMul weights, one scale per output channel, as
``--quantize int8`` quantises torch's linear layers; its convolutions stay float32).
"""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from measure import Figure, Target, interleaved, median, ratio_of_rounds, timed
from sertool.core.config import Config, ModelConfig
from sertool.data.records import Utterance
from sertool.inference.options import InferenceOptions
from sertool.inference.predictor import open_predictor
from sertool.models.ser_model import SERModel
from sertool.store.checkpoints import save_checkpoint, stored_state
from sertool.store.export import export_model
from sertool.store.onnx_folder import GRAPH_NAME
from sertool.store.options import EXPORT_ONNX, ExportOptions

VARIANTS = ("torch float32", "torch int8", "onnxruntime float32", "onnxruntime int8")
AGREEMENT_TARGET = 0.99  # CCC of a variant's predictions against torch float32's, as benchmark 10's


def onnx_folders(source: Path, folder: Path) -> dict[str, Path]:
    """``source`` (a run folder or checkpoint) exported as an ONNX folder, and a copy of that folder whose graph
    onnxruntime's dynamic quantisation turned int8 (its metadata, the export id, kept)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float32 = export_model(source, ExportOptions(out=str(folder / "float32"), file_format=EXPORT_ONNX)).folder
    int8 = folder / "int8"
    shutil.copytree(float32, int8)
    quantize_dynamic(float32 / GRAPH_NAME, int8 / GRAPH_NAME, per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    return {"onnxruntime float32": float32, "onnxruntime int8": int8}


def _predictors(source: Path, folders: dict[str, Path]) -> dict[str, object]:
    cpu = InferenceOptions(device="cpu")
    return {"torch float32": open_predictor(source, cpu),
            "torch int8": open_predictor(source, InferenceOptions(device="cpu", quantize="int8")),
            **{label: open_predictor(path, cpu) for label, path in folders.items()}}


def onnx_inference(folder: Path, utterances: Sequence[Utterance], config: ModelConfig, *, name: str,
                   rounds: int) -> list[Figure]:
    """Utterances/s of the four variants of a random ``config`` model on ``utterances``, interleaved rounds:
    onnxruntime float32 against torch float32, and onnxruntime int8 against torch int8."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SERModel(config).eval()
    whole = Config()
    whole.model = config
    checkpoint = folder / "model.pt"
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"config": whole.to_dict(), "label_scaling": model.label_scaling.to_dict(),
                     "model_state": stored_state(model), "speakers": []}, checkpoint)
    predictors = _predictors(checkpoint, onnx_folders(checkpoint, folder))
    values = {label: predictor.predict(utterances).predictions.values  # warm-up, and the predictions compared
              for label, predictor in predictors.items()}

    def run(label: str):
        return lambda _: timed(lambda: predictors[label].predict(utterances))[0]

    seconds = interleaved({label: run(label) for label in VARIANTS}, rounds=rounds)
    per_s = {label: round(len(utterances) / median(seconds[label]), 2) for label in VARIANTS}
    differences = {label: float(np.abs(values[label] - values["torch float32"]).max()) for label in VARIANTS}
    details = {"seconds": {k: [round(s, 3) for s in v] for k, v in seconds.items()}, "utterances_per_s": per_s,
               "max_abs_difference_1_to_7_vs_torch_float32": differences, "torch_threads": torch.get_num_threads()}
    audio_s = sum(utt.duration_s for utt in utterances)
    clips = f"{len(utterances)} clips ({audio_s:.0f} s of audio)"
    figures = []
    for faster, reference, what in (("onnxruntime float32", "torch float32", "float32"),
                                    ("onnxruntime int8", "torch int8", "int8")):
        ratio, per_round = ratio_of_rounds(seconds[reference], seconds[faster])
        figures.append(Figure(
            key=f"onnx_speed_{what}_{name.replace(' ', '_')}", benchmark=f"12. CPU inference onnxruntime {what}, {name}",
            value=ratio, unit="×", target=None,
            compared=(f"utterances/s through each predictor on the CPU, {clips}: onnxruntime {what} "
                      f"({per_s[faster]:.2f}/s) vs torch {what} ({per_s[reference]:.2f}/s)"
                      f"{'' if reference == 'torch float32' else f'; torch float32 {per_s[VARIANTS[0]]:.2f}/s'}; "
                      "predictions differ from torch float32's by ≤ "
                      f"{differences[faster]:.1e} (onnxruntime) and {differences[reference]:.1e} (torch) on the 1–7 "
                      "scale, random heads"),
            details={**details, "per_round_ratio": per_round}))
    return figures


def onnx_agreement(run_dir: Path, folder: Path, utterances: Sequence[Utterance], *, name: str) -> Figure:
    """CCC of each variant's predictions against torch float32's, for a trained run on ``utterances`` (clips it
    never trained on): the figure is onnxruntime int8's lowest per-attribute CCC (target ≥ 0.99), beside
    torch int8's and onnxruntime float32's."""
    from sertool.models.ccc import ccc_scores

    predictors = _predictors(run_dir, onnx_folders(run_dir, folder))
    values = {label: predictor.predict(utterances).predictions.values for label, predictor in predictors.items()}
    agreement = {label: ccc_scores(values[label], values["torch float32"]) for label in VARIANTS[1:]}
    lowest = {label: min(value for attribute, value in scores.items() if attribute != "average")
              for label, scores in agreement.items()}
    differences = {label: float(np.abs(values[label] - values["torch float32"]).max()) for label in VARIANTS[1:]}
    spread = values["torch float32"].std(axis=0)
    return Figure(
        key=f"onnx_agreement_{name.replace(' ', '_')}", benchmark=f"12. onnxruntime int8 vs torch float32, {name}",
        value=lowest["onnxruntime int8"], unit="", target=Target(">=", AGREEMENT_TARGET),
        compared=(f"lowest per-attribute CCC against torch float32's predictions, {len(utterances)} held-out clips: "
                  f"onnxruntime int8 {lowest['onnxruntime int8']:.4f} (max |Δ| {differences['onnxruntime int8']:.3f}), "
                  f"torch int8 {lowest['torch int8']:.4f} (max |Δ| {differences['torch int8']:.3f}), onnxruntime "
                  f"float32 {lowest['onnxruntime float32']:.6f} (max |Δ| {differences['onnxruntime float32']:.1e}); "
                  f"float32 sd {' / '.join(f'{x:.2f}' for x in spread)} (A / V / D)"),
        details={"ccc_vs_torch_float32": agreement, "max_abs_difference_1_to_7": differences,
                 "prediction_spread_1_to_7": [round(float(x), 4) for x in spread], "clips": len(utterances)})
