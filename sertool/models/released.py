"""The authors' released dimensional models, as sertool systems.

The paper's authors released two A/V/D models trained on MSP-Podcast (the vox-profile release):

- ``tiantiaf/wavlm-large-msp-podcast-emotion-dim`` (WavLM-Large),
- ``tiantiaf/whisper-large-v3-msp-podcast-emotion-dim`` (the Whisper-Large-v3 encoder).

A folder of theirs holds what huggingface_hub's ``PyTorchModelHubMixin`` saves: ``config.json`` with the
constructor arguments of their wrapper class and ``model.safetensors`` with the wrapper's whole state,
backbone included. Their architecture is expressible as a sertool ``ModelConfig`` (``released_model_config``),
so sertool runs, evaluates, ensembles and fine-tunes them with its own code; this module only maps their
parameter names onto ``SERModel``'s (``convert_released_state``), strictly: a folder whose names differ is
refused, and nothing is left at its random initialisation.

=============================================  ===============================================================
their wrapper (``*_emotion_dim.py``)           sertool
=============================================  ===============================================================
``backbone_model`` (transformers WavLMModel)   ``backbone.model`` (every weight stored in their file)
LoRA (loralib, unmerged) on the feed-forward   merged once: ``W + B·A·(alpha / rank)``, loralib's alpha 1
dense layers of layers > num_layers // 2
``weights``: softmax over num_layers + 1       ``backbone.layer_weights.logits`` (``layer_weighting="weighted"``;
hidden states (WavLM)                          the last state after the final layer norm, as transformers 4.46)
``backbone_model.encoder`` + ``embed_positions``  ``backbone.encoder`` with the 750-position table their forward
(Whisper: clips padded to 15 s, no mask,       installs (``whisper_window_s=15``, ``layer_weighting="last"``)
last hidden state)
``model_seq``: Conv1d(D→H,1) ReLU Dropout      ``projection`` (``projection_dim=H``; Linear ≡ 1×1 conv)
Conv1d(H→H,1) ReLU Dropout Conv1d(H→H,1)
mean over the real frames                      ``pooling="mean"``
``<attribute>_layer``: Linear ReLU Linear      ``emotion_heads`` (``head_norm=False``, ``head_dropout=0``,
Sigmoid                                        ``head_output="sigmoid"``)
``gender_layer`` (``predict_gender``)          ``gender_head`` (``aux=("gender",)``)
=============================================  ===============================================================

Their code and documentation give no mapping of the sigmoid outputs to the 1..7 rating scale; sertool uses
``1 + 6·y`` (``LabelScaling``), the inverse of the challenge baseline's ``(y − 1) / 6`` training targets. It
is inferred, not documented by the authors.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor

from sertool.core.config import ModelConfig
from sertool.core.errors import SertoolError
from sertool.data.records import ATTRIBUTES
from sertool.models.lora import RELEASE_ALPHA, release_layers

RELEASED_MODEL_IDS: tuple[str, ...] = (
    "tiantiaf/wavlm-large-msp-podcast-emotion-dim",
    "tiantiaf/whisper-large-v3-msp-podcast-emotion-dim",
)
# Their wrapper's constructor defaults: a config.json written by an older huggingface_hub lists only the
# arguments that were passed.
CONSTRUCTOR_DEFAULTS: dict[str, Any] = {
    "pretrain_model": "wavlm_large", "hidden_dim": 256, "finetune_method": "lora", "lora_rank": 16,
    "freeze_params": True, "output_class_num": 4, "use_conv_output": True, "detailed_class_num": 17,
    "predict_gender": False,
}
# Their ``pretrain_model`` → sertool's backbone and the hub id its architecture (config, not weights) comes from.
BACKBONES: dict[str, tuple[str, str]] = {
    "wavlm_large": ("wavlm", "microsoft/wavlm-large"),
    "whisper_large": ("whisper", "openai/whisper-large-v3"),
}
WHISPER_WINDOW_S = 15.0  # their Whisper wrapper pads every clip to 15 s and keeps 750 positions (20 ms each)
# The longest clips their training data kept (their model cards: at most 15 s): what the models were made for,
# recorded as the payload's training crop (``data.max_duration_s``) so that `predict` runs such clips whole.
RELEASED_INPUT_S = 15.0
# Which finetune_method values give LoRA layers: their WavLM wrapper adds them for both, their Whisper
# wrapper rebuilds its layers (and so adds LoRA) for "lora" only.
_LORA_METHODS = {"wavlm": ("lora", "combined"), "whisper": ("lora",)}
# The linear layers their LoRA wraps, per backbone (below backbone_model.encoder.layers.<i>.).
_LORA_TARGETS = {"wavlm": ("feed_forward.intermediate_dense", "feed_forward.output_dense"), "whisper": ("fc1", "fc2")}
# Fixed names: theirs → sertool's (weight and bias alike).
_HEAD_NAMES = {
    **{f"{name}_layer.{theirs}": f"emotion_heads.heads.{name}.{ours}"
       for name in ATTRIBUTES for theirs, ours in (("0", "1"), ("2", "5"))},
    "gender_layer.0": "gender_head.mlp.1", "gender_layer.2": "gender_head.mlp.5",
    **{f"model_seq.{index}": f"projection.{index}" for index in (0, 3, 6)},
}
# Weight-norm names of transformers' positional convolution before torch's parametrizations.
_LEGACY_WEIGHT_NORM = {".weight_g": ".parametrizations.weight.original0",
                       ".weight_v": ".parametrizations.weight.original1"}
# Parts of their Whisper wrapper that its dimensional forward never uses: the decoder (they keep the whole
# WhisperModel; only its encoder runs), the categorical heads of the same wrapper class, and the layer
# weights (their Whisper forward reads the last hidden state only).
_WHISPER_UNUSED_PREFIXES = ("backbone_model.decoder.", "emotion_layer.", "detailed_out_layer.")
_WHISPER_UNUSED_NAMES = ("weights",)
_LAYER = re.compile(r"^backbone_model\.encoder\.layers\.(\d+)\.")


def is_released_config(data: Any) -> bool:
    """Whether a ``config.json`` holds their wrapper's constructor arguments (and nothing else)."""
    return isinstance(data, dict) and bool(data) and set(data) <= set(CONSTRUCTOR_DEFAULTS)


def released_arguments(data: dict[str, Any], *, source: str) -> dict[str, Any]:
    """Their constructor arguments with defaults filled in, checked to be a model sertool supports.

    Raises:
        SertoolError: a backbone other than WavLM-Large / Whisper-Large, or settings their dimensional
            models do not use.
    """
    arguments = {**CONSTRUCTOR_DEFAULTS, **data}
    if arguments["pretrain_model"] not in BACKBONES:
        raise SertoolError(
            f"{source}: a released model on {arguments['pretrain_model']!r}; sertool supports the dimensional "
            f"emotion models on {' and '.join(BACKBONES)} ({', '.join(RELEASED_MODEL_IDS)})"
        )
    backbone, _ = BACKBONES[arguments["pretrain_model"]]
    if backbone == "wavlm" and arguments["use_conv_output"] is not True:
        raise SertoolError(f"{source}: use_conv_output={arguments['use_conv_output']!r}; sertool supports the released "
                           "layer weighting over the embeddings and every layer (use_conv_output true)")
    for name in ("hidden_dim", "lora_rank"):
        if not isinstance(arguments[name], int) or arguments[name] <= 0:
            raise SertoolError(f"{source}: {name} must be a positive integer, got {arguments[name]!r}")
    return arguments


def released_model_config(arguments: dict[str, Any]) -> ModelConfig:
    """The sertool ``ModelConfig`` of their architecture (see the module docstring's table).

    Training options keep sertool's defaults (e.g. WavLM fine-tuned, Whisper frozen): fine-tuning a
    released model is a sertool run whose flags decide them.
    """
    backbone, backbone_id = BACKBONES[arguments["pretrain_model"]]
    hidden_dim = arguments["hidden_dim"]
    return ModelConfig(
        backbone=backbone,
        backbone_path=backbone_id,
        layer_weighting="weighted" if backbone == "wavlm" else "last",
        whisper_window_s=WHISPER_WINDOW_S if backbone == "whisper" else 0.0,
        projection_dim=hidden_dim,
        pooling="mean",
        head_hidden_dim=hidden_dim,
        head_dropout=0.0,
        head_norm=False,
        head_output="sigmoid",
        aux=("gender",) if arguments["predict_gender"] else (),
    )


def convert_released_state(
    arguments: dict[str, Any], names: Iterable[str], read: Callable[[str], Tensor], *, source: str
) -> tuple[dict[str, Tensor], list[str]]:
    """Their state (names and a reader) → ``SERModel`` state of ``released_model_config(arguments)``.

    Every name of theirs is either mapped or one of the documented unused parts of their Whisper wrapper
    (its decoder, categorical heads, unused layer weights, and the encoder's copy of the position table
    that its forward replaces); anything else is refused. Missing weights are left for the strict load
    into the model, which names them.

    Args:
        arguments: from ``released_arguments``.
        names: every tensor name in their ``model.safetensors``.
        read: reads one tensor by name (only the ones used are read).
        source: how messages name the folder.

    Returns:
        The sertool state (float32, LoRA merged) and the names of theirs that were deliberately not used.

    Raises:
        SertoolError: one line naming the first weight whose name does not belong to their layout, or LoRA
            weights where their layout has none (or none where it has them).
    """
    backbone, _ = BACKBONES[arguments["pretrain_model"]]
    names = sorted(names)
    lora_names = [name for name in names if name.endswith((".lora_A", ".lora_B"))]
    _check_lora_layout(arguments, backbone, names, lora_names, source=source)
    other_names = [name for name in names if not name.endswith((".lora_A", ".lora_B"))]
    # Their Whisper forward installs the top-level table in the encoder; the encoder's own copy is stale
    # (or, when the two shared memory on saving, dropped from the file): use the top-level one if present.
    whisper_table = "embed_positions" if "embed_positions" in names else "backbone_model.encoder.embed_positions.weight"
    ours_of = {name: _sertool_name(name, backbone, whisper_table) for name in other_names}
    unexpected = [name for name, ours in ours_of.items() if ours == ""]
    if unexpected:  # refused before a single tensor is read
        more = f" and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""
        raise SertoolError(
            f"{source}: not the layout of the authors' released {arguments['pretrain_model']} dimensional model "
            f"(unexpected weight {unexpected[0]}{more}); sertool only loads folders with their exact weight names"
        )
    state: dict[str, Tensor] = {}
    for name, ours in ours_of.items():
        if ours is None:
            continue
        tensor = read(name).float()
        if name.startswith("model_seq.") and name.endswith(".weight") and tensor.ndim == 3 and tensor.shape[-1] == 1:
            tensor = tensor.squeeze(-1)  # a 1×1 convolution's [out, in, 1] weight is a Linear's [out, in]
        state[ours] = tensor
    for name in lora_names:
        if name.endswith(".lora_A"):
            _merge_lora(state, name.removesuffix(".lora_A"), backbone, read, rank=arguments["lora_rank"], source=source)
    return state, [name for name, ours in ours_of.items() if ours is None]


def _sertool_name(name: str, backbone: str, whisper_table: str) -> str | None:
    """Their name → sertool's; None for a documented unused part, "" for a name outside their layout."""
    module, _, leaf = name.rpartition(".")
    if module in _HEAD_NAMES and leaf in ("weight", "bias"):
        return f"{_HEAD_NAMES[module]}.{leaf}"
    if backbone == "wavlm":
        return _wavlm_name(name)
    return _whisper_name(name, whisper_table)


def _wavlm_name(name: str) -> str:
    """A name of their WavLM backbone → sertool's ("" outside their layout)."""
    if name == "weights":
        return "backbone.layer_weights.logits"
    if not name.startswith("backbone_model."):
        return ""
    renamed = name.removeprefix("backbone_model.")
    for old, new in _LEGACY_WEIGHT_NORM.items():
        if renamed.endswith(old):
            renamed = renamed.removesuffix(old) + new
    return "backbone.model." + renamed


def _whisper_name(name: str, whisper_table: str) -> str | None:
    """A name of their Whisper backbone → sertool's (None: an unused part, "": outside their layout)."""
    if name == whisper_table:
        return "backbone.encoder.embed_positions.weight"
    if name in ("embed_positions", "backbone_model.encoder.embed_positions.weight"):
        return None  # the other copy of the position table
    if name in _WHISPER_UNUSED_NAMES or name.startswith(_WHISPER_UNUSED_PREFIXES):
        return None
    if name.startswith("backbone_model.encoder."):
        return "backbone.encoder." + name.removeprefix("backbone_model.encoder.")
    return ""


def _check_lora_layout(arguments: dict[str, Any], backbone: str, names: list[str], lora_names: list[str], *,
                       source: str) -> None:
    """LoRA weights exactly where their code puts them: both dense layers of every layer above half."""
    layer_indices = {int(match.group(1)) for name in names if (match := _LAYER.match(name))}
    num_layers = max(layer_indices) + 1 if layer_indices else 0
    method = arguments["finetune_method"]
    with_lora = method in _LORA_METHODS[backbone]
    expected = {
        f"backbone_model.encoder.layers.{index}.{target}.{part}"
        for index in (release_layers(num_layers) if with_lora else ())
        for target in _LORA_TARGETS[backbone] for part in ("lora_A", "lora_B")
    }
    if set(lora_names) != expected:
        odd = sorted(set(lora_names) ^ expected)[0]
        where = "puts LoRA weights on both dense layers of every layer above half" if with_lora else "has no LoRA"
        raise SertoolError(
            f"{source}: LoRA weight {odd} {'missing' if odd in expected else 'unexpected'}: with "
            f"finetune_method={method!r} their {backbone} layout {where}; sertool only loads their exact layout"
        )


def _merge_lora(state: dict[str, Tensor], module: str, backbone: str, read: Callable[[str], Tensor], *, rank: int,
                source: str) -> None:
    """Fold one unmerged LoRA pair into its linear weight, once: ``W + B·A·(alpha / rank)``."""
    lora_a, lora_b = read(f"{module}.lora_A").float(), read(f"{module}.lora_B").float()
    ours = _sertool_name(f"{module}.weight", backbone, "")
    weight = state.get(ours) if ours else None
    if not ours or weight is None or lora_a.shape[0] != rank or lora_b.shape[1] != rank \
            or (lora_b.shape[0], lora_a.shape[1]) != tuple(weight.shape):
        raise SertoolError(
            f"{source}: LoRA weights of {module} do not fit its weight (rank {rank} from config.json; A "
            f"{tuple(lora_a.shape)}, B {tuple(lora_b.shape)}, weight {None if weight is None else tuple(weight.shape)})"
        )
    state[ours] = weight + (lora_b @ lora_a) * (RELEASE_ALPHA / rank)
