"""`sertool export --format onnx`: a trained model traced into one ONNX graph, then checked against itself.

The graph is ``SERModel.forward`` in eval mode from the padded waveforms and their sample mask (and, for an MM
model, the transcript's embedding) to the unit-scale emotion outputs (and the gender probabilities of a model
with a gender head): the backbone (fbank, WavLM, HuBERT, wav2vec2, the Whisper encoder, windowed or not,
with LoRA adapters or not), the projection, the pooling, the heads, the utterance statistics and the floor
blend. Batch and length are dynamic. The ratings stay in Python (``LabelScaling.ratings``), shared with the
torch path.

Why torch.onnx's TorchScript-based exporter (``dynamo=False``): with torch 2.13 the torch.export-based one
stops at the model's checks that read a tensor back (an utterance must keep a frame: pooling asks the mask)
and needs onnxscript besides; the trace records the shape arithmetic instead of its values, so one trace
serves every batch and length. What a trace cannot record — a branch on a value — the model avoids where it
matters: Whisper's log-mel and the utterance statistics are batched without reading a length back, and under
export the STFT returns real and imaginary parts (ONNX has no complex numbers) and every input is padded as
the shortest needs (``sertool.models.backbones.base``). The export then runs the graph on another batch size
and other lengths than it traced and compares it with the torch model (``CHECK_TOLERANCE``): a graph that kept
a shape of its example is refused, never written.

Refused, each with one line: a pretrained x-vector speaker embedding (it runs each utterance alone, as batched
x-vectors are not exact in transformers), and an MM model whose text encoder trains (LoRA: its embedding is
part of the model, while the graph takes the embedding as an input).
"""
from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from sertool.core.config import ModelConfig
from sertool.core.constants import SAMPLE_RATE
from sertool.core.errors import SertoolError
from sertool.models.backbones import WhisperBackbone
from sertool.models.heads import LabelScaling
from sertool.models.speaker_embedding import LOG_MEL_STATS
from sertool.models.text import TEXT_POOLING
from sertool.store.checkpoints import build_model
from sertool.store.onnx_folder import (
    EMOTION,
    GENDER_PROBABILITIES,
    GRAPH_NAME,
    SAMPLE_MASK,
    TEXT_EMBEDDINGS,
    WAVEFORMS,
    GraphSpec,
    TextEmbeddingSpec,
    import_onnx,
    import_onnxruntime,
)

if TYPE_CHECKING:
    from onnx import ModelProto

    from sertool.models.ser_model import SERModel

ONNX_OPSET = 17  # the first with an STFT operator
EXAMPLE_S = (1.5, 1.0)  # the traced batch: two clips, one padded
CHECK_S = (2.25, 0.5, 1.75)  # the batch the graph is checked on: another size, other lengths, other padding
# On the 1..7 scale. A float32 graph agrees with torch to about 1e-6; one that kept a shape of its example, far
# less (tests/test_onnx.py holds every backbone to 1e-4).
CHECK_TOLERANCE = 1e-3
_DYNAMIC_AXES: dict[str, dict[int, str]] = {
    WAVEFORMS: {0: "batch", 1: "samples"}, SAMPLE_MASK: {0: "batch", 1: "samples"}, TEXT_EMBEDDINGS: {0: "batch"},
    EMOTION: {0: "batch"}, GENDER_PROBABILITIES: {0: "batch"},
}


class _Graph(nn.Module):
    """What the graph computes: the model's unit-scale emotion ``[B, attributes]``, and the gender probabilities
    ``[B, 2]`` of a model with a gender head (as ``run_model`` computes them), in float32."""

    def __init__(self, model: SERModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, waveforms: Tensor, sample_mask: Tensor,
                text_embeddings: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        output = self.model(waveforms, sample_mask, text_embeddings=text_embeddings)
        if output.gender_logits is None:
            return output.emotion.float()
        return output.emotion.float(), output.gender_logits.float().softmax(-1)


def check_exportable(model_config: ModelConfig, *, source: str) -> None:
    """Refuse, before any work, a model that one graph of any batch cannot hold (see the module docstring).

    Raises:
        SertoolError: naming ``source``, the part and what to do.
    """
    speaker = model_config.speaker_embedding
    if speaker and speaker != LOG_MEL_STATS:
        raise SertoolError(f"{source}: --format onnx cannot hold its speaker embedding ({speaker}): the x-vector model "
                           "runs each utterance alone (batched x-vectors are not exact in transformers); export it "
                           "without --format onnx")
    if model_config.text and model_config.lora_rank > 0:
        raise SertoolError(f"{source}: --format onnx cannot hold this MM model's text encoder, which trains (LoRA, "
                           f"--lora-rank {model_config.lora_rank}): the graph takes the text embedding as an input; "
                           "export it without --format onnx")


def onnx_graph(payload: dict[str, Any], model_config: ModelConfig, *,
               text_model: str | None) -> tuple[ModelProto, GraphSpec]:
    """The model of ``payload`` as an ONNX graph, checked against the torch model, and its description.

    Args:
        payload: what ``load_model`` returned.
        model_config: the model to build (``payload``'s, with this machine's pretrained model locations).
        text_model: the text model an MM model's folder names for computing its embedding (the recorded one,
            not this machine's location of it).

    Raises:
        SertoolError: onnx or onnxruntime missing, a model ``check_exportable`` refuses, a pretrained model that
            cannot be loaded, or a graph that does not reproduce the model.
    """
    onnx = import_onnx(needed_for="sertool export --format onnx")
    onnxruntime = import_onnxruntime(needed_for="sertool export --format onnx")
    source = str(payload.get("exported_from"))
    check_exportable(model_config, source=source)
    model = build_model(payload, model_config, source=source).eval()
    graph = _Graph(model).eval()
    spec = _spec(model, text_model)
    scaling = LabelScaling.from_dict(payload.get("label_scaling") or LabelScaling().to_dict())
    with tempfile.TemporaryDirectory() as temporary, torch.no_grad():
        path = Path(temporary) / GRAPH_NAME
        with warnings.catch_warnings():
            # The trace's notes on values it keeps as constants (checks, shapes of constants), the legacy
            # exporter's deprecation, the real-valued STFT's: what they warn of, the check below measures.
            warnings.simplefilter("ignore")
            inputs = _example(spec, EXAMPLE_S, seed=0)
            torch.onnx.export(graph, tuple(inputs.values()), str(path), dynamo=False, opset_version=ONNX_OPSET,
                              input_names=list(spec.inputs), output_names=list(spec.outputs),
                              dynamic_axes={name: _DYNAMIC_AXES[name] for name in (*spec.inputs, *spec.outputs)})
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        _check(graph, session, spec, scaling, source=source)
        return onnx.load(str(path)), spec


def _spec(model: SERModel, text_model: str | None) -> GraphSpec:
    backbone = model.backbone
    text = model.text_encoder
    return GraphSpec(
        inputs=(WAVEFORMS, SAMPLE_MASK, *((TEXT_EMBEDDINGS,) if text is not None else ())),
        outputs=(EMOTION, *((GENDER_PROBABILITIES,) if model.gender_head is not None else ())),
        max_input_samples=backbone.max_input_samples if isinstance(backbone, WhisperBackbone) else None,
        text_embedding=None if text is None else TextEmbeddingSpec(
            model=text_model or text.model_name_or_path, pooling=TEXT_POOLING, max_tokens=text.max_tokens,
            dim=text.output_dim),
        opset=ONNX_OPSET)


def _example(spec: GraphSpec, lengths_s: tuple[float, ...], *, seed: int) -> dict[str, Tensor]:
    """A padded batch of speech-like noise (loud noise in the padding, which the mask must hide), clips no
    longer than the graph takes, and random text embeddings for an MM graph."""
    generator = torch.Generator().manual_seed(seed)
    limit = spec.max_input_samples or max(round(length * SAMPLE_RATE) for length in lengths_s)
    lengths = [min(round(length * SAMPLE_RATE), limit) for length in lengths_s]
    waveforms = torch.randn(len(lengths), max(lengths), generator=generator)
    envelope = 1.0 + torch.sin(2 * torch.pi * 3.0 * torch.arange(max(lengths)) / SAMPLE_RATE)
    sample_mask = torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(-1)
    waveforms = torch.where(sample_mask, 0.1 * envelope * waveforms, waveforms)
    inputs = {WAVEFORMS: waveforms, SAMPLE_MASK: sample_mask}
    if spec.text_embedding is not None:
        inputs[TEXT_EMBEDDINGS] = torch.randn(len(lengths), spec.text_embedding.dim, generator=generator)
    return inputs


def _check(graph: _Graph, session: Any, spec: GraphSpec, scaling: LabelScaling, *, source: str) -> None:
    """Run the graph (onnxruntime) and the model (torch) on ``CHECK_S``: every output must agree.

    Raises:
        SertoolError: a difference beyond ``CHECK_TOLERANCE`` on the 1..7 scale (or in a probability).
    """
    inputs = _example(spec, CHECK_S, seed=1)
    expected = graph(*inputs.values())
    expected = [expected] if isinstance(expected, Tensor) else list(expected)
    got = session.run(list(spec.outputs), {name: value.numpy() for name, value in inputs.items()})
    differences = [float(np.abs(scaling.ratings(ours) - scaling.ratings(theirs.numpy())).max())
                   if name == EMOTION else float(np.abs(ours - theirs.numpy()).max())
                   for name, ours, theirs in zip(spec.outputs, got, expected, strict=True)]
    if not max(differences) <= CHECK_TOLERANCE:
        raise SertoolError(f"{source}: the exported ONNX graph does not reproduce the model on a batch it was not "
                           f"traced on (largest difference {max(differences):.3g}; at most {CHECK_TOLERANCE:g} "
                           "expected): this model has a part the export does not support; export it without --format "
                           "onnx, and report it")


def onnx_card_lines(spec: GraphSpec, scaling: LabelScaling, *, attributes: Sequence[str]) -> list[str]:
    """The model card's section on the graph: its inputs and outputs, and how to run it without sertool (the
    ``emotion`` columns are ``attributes``)."""
    text = spec.text_embedding
    low, high = scaling.minimum, scaling.maximum
    feeds = '{"waveforms": audio[None], "sample_mask": np.ones((1, len(audio)), dtype=bool)' + (
        ', "text_embeddings": embedding[None]}' if text is not None else "}")
    return [
        "## ONNX",
        "",
        f"This folder holds the model as one ONNX graph (`{GRAPH_NAME}`, opset {spec.opset}, float32) for onnxruntime; "
        "sertool runs it wherever it takes a model, with onnx and onnxruntime installed (sertool's extra `onnx`). "
        "Batch and length are dynamic:",
        "",
        *(f"- input `{name}`: {description}" for name, description in spec.to_dict()["inputs"].items()),
        *(f"- output `{name}`: {description}" for name, description in spec.to_dict()["outputs"].items()),
        *([f"- It takes clips of at most {spec.max_input_samples / SAMPLE_RATE:g} s."]
          if spec.max_input_samples else []),
        *([f"- The text embedding: `{text.model}`'s last hidden states averaged over the real tokens ({text.pooling}), "
           f"at most {text.max_tokens} tokens, {text.dim} wide."] if text is not None else []),
        "",
        "Without sertool (16-kHz mono audio; the ratings are the unit-scale outputs mapped as above):",
        "",
        "```python",
        "import numpy as np, onnxruntime, soundfile",
        'audio, rate = soundfile.read("talk.wav", dtype="float32")  # 16 kHz mono',
        f'session = onnxruntime.InferenceSession("{GRAPH_NAME}")',
        f"emotion = session.run([\"{EMOTION}\"], {feeds})[0]",
        f"{', '.join(attributes)}{',' if len(attributes) == 1 else ''} = "
        f"np.clip({low:g} + {high - low:g} * emotion[0], {low:g}, {high:g})",
        "```",
    ]
