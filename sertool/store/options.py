"""What `sertool export` takes: its options dataclass, each field a flag (``sertool.core.config.option``, made into
flags by ``sertool.cli.flags``). Imports no torch."""
from __future__ import annotations

from dataclasses import dataclass

from sertool.core.config import option

EXPORT_SAFETENSORS = "safetensors"  # the weights for sertool's torch model (sertool.store.model_folder)
EXPORT_ONNX = "onnx"  # one graph for onnxruntime (sertool.store.onnx_folder)
EXPORT_FORMATS: tuple[str, ...] = (EXPORT_SAFETENSORS, EXPORT_ONNX)

@dataclass
class ExportOptions:
    """`sertool export`: the model folder to write, and where to upload it."""

    out: str = option(None, "The model folder to write: config.json, model.safetensors (weights, no pickle) or "
                      "model.onnx, training_ids.json, README.md (the model card).", metavar="DIR", required=True)
    file_format: str = option(EXPORT_SAFETENSORS, "safetensors: the weights, for sertool; onnx: one graph with every "
                              "weight, for onnxruntime (needs onnx and onnxruntime; docs/api.md).",
                              choices=EXPORT_FORMATS, flag="--format")
    backbone_path: str | None = option(None, "With --format onnx: where the model's speech backbone lives here (hub id "
                                       "or folder), if not where it was trained.")
    text_model: str | None = option(None, "With --format onnx: where an MM model's text encoder lives here (hub id or "
                                    "folder); the folder still names the recorded one.")
    push_to_hub: str | None = option(None, "Also upload the folder to the model hub as REPO (owner/name); needs a "
                                     "token (hf auth login).", metavar="REPO")
    license: str | None = option(None, "The model card's license (a hub license id, e.g. cc-by-nc-4.0: mind the "
                                 "training corpus's terms); unset: the card says none was given.", metavar="ID")
    datasets: tuple[str, ...] = option((), "The training corpus's dataset id or name for the card (repeatable).",
                                       flag="--dataset", metavar="ID")
    scores: tuple[str, ...] = option((), "Scores for the card's model-index, as `sertool evaluate --scores` wrote "
                                     "them, each on a split the model never trained on (repeatable).",
                                     metavar="JSON")
    force: bool = option(False, "Overwrite the model files of an earlier export in --out.")
