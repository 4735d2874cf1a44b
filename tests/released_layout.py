"""Tiny random models in the exact layout of the authors' released dimensional models, for tests.

Their wrapper classes (vox-profile-release, ``src/model/emotion/wavlm_emotion_dim.py`` and
``whisper_emotion_dim.py``) hold, by parameter name:

- ``backbone_model``: a transformers ``WavLMModel`` (WavLM) or a whole ``WhisperModel`` built with
  ``max_source_positions=750`` (Whisper, decoder included); with ``finetune_method`` "lora" (WavLM also
  "combined") the feed-forward linear layers (WavLM ``feed_forward.intermediate_dense`` /
  ``output_dense``, Whisper ``fc1`` / ``fc2``) of layers ``i > num_layers // 2`` are loralib ``Linear``s:
  ``weight``, ``bias``, ``lora_A`` ``[rank, in]``, ``lora_B`` ``[out, rank]``, stored unmerged;
- ``weights``: ``[num_layers + 1]`` layer weights (softmax in their forward; unused by the Whisper one);
- ``model_seq``: ``Conv1d(D, H, 1)``, ReLU, Dropout, ``Conv1d(H, H, 1)``, ReLU, Dropout, ``Conv1d(H, H, 1)``;
- ``arousal_layer`` / ``valence_layer`` / ``dominance_layer``: ``Linear(H, H)``, ReLU, ``Linear(H, 1)``,
  Sigmoid; ``gender_layer`` ``Linear(H, H)``, ReLU, ``Linear(H, 2)`` when ``predict_gender``;
- Whisper only: ``embed_positions`` ``[750, d_model]`` (the position table its forward installs),
  ``emotion_layer`` (``Linear(H, H)``, ReLU, ``Linear(H, output_class_num)``) and ``detailed_out_layer``
  (``... Linear(H, detailed_class_num)``).

``save_released`` writes what their ``PyTorchModelHubMixin`` saves: ``config.json`` with the constructor
arguments and ``model.safetensors``. ``reference_predictions`` computes their forward for one clip from the
saved tensors, independently of sertool: transformers' own encoder for the backbone (as their code uses
it, with LoRA applied unmerged as loralib's forward does), their feature extractors, and plain torch
operations for everything they add.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tests.tiny_speech import _save, save_tiny_wavlm, tiny_whisper_config

HIDDEN_DIM = 16  # their hidden_dim (256 in the released models)
LORA_RANK = 4
NUM_LAYERS = 4  # enough for layers above num_layers // 2 (only layer 3) to carry LoRA
NUM_MEL_BINS = 128  # large-v3's
WHISPER_POSITIONS = 750  # 15 s
ATTRIBUTES = ("arousal", "valence", "dominance")


def save_backbone_config(kind: str, folder: Path) -> Path:
    """A tiny stand-in for ``microsoft/wavlm-large`` / ``openai/whisper-large-v3`` (its own random weights:
    a released folder must not need them)."""
    if kind == "wavlm":
        return save_tiny_wavlm(folder, seed=11, num_hidden_layers=NUM_LAYERS)
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = tiny_whisper_config(num_mel_bins=NUM_MEL_BINS, encoder_layers=NUM_LAYERS, suppress_tokens=[],
                                 begin_suppress_tokens=[])
    return _save(WhisperForConditionalGeneration, config, WhisperFeatureExtractor(feature_size=NUM_MEL_BINS), folder,
                 seed=11)


def released_arguments(kind: str, **overrides: Any) -> dict[str, Any]:
    """Their constructor arguments as a recent huggingface_hub writes them (every argument)."""
    arguments = dict(pretrain_model="wavlm_large" if kind == "wavlm" else "whisper_large", hidden_dim=HIDDEN_DIM,
                     finetune_method="lora", lora_rank=LORA_RANK, freeze_params=True, output_class_num=9,
                     use_conv_output=True, detailed_class_num=17, predict_gender=False)
    return {**arguments, **overrides}


def _backbone(kind: str) -> tuple[torch.nn.Module, int]:
    """A freshly initialised tiny backbone of ``kind`` (their ``backbone_model``) and its width."""
    if kind == "wavlm":
        from transformers import WavLMConfig, WavLMModel

        from tests.tiny_speech import _WAV2VEC2_FAMILY_SIZES

        config = WavLMConfig(**{**_WAV2VEC2_FAMILY_SIZES, "num_hidden_layers": NUM_LAYERS, "num_buckets": 32,
                                "max_bucket_distance": 64})
        return WavLMModel(config), config.hidden_size
    from transformers import WhisperModel

    config = tiny_whisper_config(num_mel_bins=NUM_MEL_BINS, encoder_layers=NUM_LAYERS,
                                 max_source_positions=WHISPER_POSITIONS)
    return WhisperModel(config), config.d_model


def released_state(kind: str, arguments: dict[str, Any], *, seed: int = 5) -> dict[str, torch.Tensor]:
    """Their state dict with random values (LoRA B non-zero, as after training)."""
    generator = torch.Generator().manual_seed(seed)

    def random(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        backbone, width = _backbone(kind)
    # Every backbone tensor moved off its initial value (LayerNorms start at exactly 1 and 0): a weight that
    # sertool failed to load would then change the outputs.
    state = {f"backbone_model.{key}": value + random(*value.shape, scale=0.05)
             for key, value in backbone.state_dict().items()}
    _add_lora(state, kind, arguments, random)
    hidden = arguments["hidden_dim"]
    state["weights"] = random(NUM_LAYERS + 1, scale=1.0)
    state["model_seq.0.weight"], state["model_seq.0.bias"] = random(hidden, width, 1), random(hidden)
    for index in (3, 6):
        state[f"model_seq.{index}.weight"], state[f"model_seq.{index}.bias"] = random(hidden, hidden, 1), random(hidden)
    heads = [f"{name}_layer" for name in ATTRIBUTES]
    sizes = {f"{name}_layer": 1 for name in ATTRIBUTES}
    if arguments["predict_gender"]:
        heads.append("gender_layer")
        sizes["gender_layer"] = 2
    if kind == "whisper":
        heads += ["emotion_layer", "detailed_out_layer"]
        sizes.update(emotion_layer=arguments["output_class_num"], detailed_out_layer=arguments["detailed_class_num"])
        # Their deepcopy of the encoder's table, installed by their forward.
        state["embed_positions"] = state["backbone_model.encoder.embed_positions.weight"].clone()
    for head in heads:
        state[f"{head}.0.weight"], state[f"{head}.0.bias"] = random(hidden, hidden), random(hidden)
        state[f"{head}.2.weight"], state[f"{head}.2.bias"] = random(sizes[head], hidden, scale=1.0), random(sizes[head])
    return state


def _add_lora(state: dict[str, torch.Tensor], kind: str, arguments: dict[str, Any],
              random: Callable[..., torch.Tensor]) -> None:
    """Their LoRA adapters (A and B) on the upper half of the encoder's layers, when ``arguments`` use LoRA."""
    if kind == "wavlm":
        lora_targets = ("feed_forward.intermediate_dense", "feed_forward.output_dense")
        lora_on = arguments["finetune_method"] in ("lora", "combined")
    else:
        lora_targets = ("fc1", "fc2")
        lora_on = arguments["finetune_method"] == "lora"
    if not lora_on:
        return
    rank = arguments["lora_rank"]
    for index in range(NUM_LAYERS // 2 + 1, NUM_LAYERS):
        for target in lora_targets:
            out_features, in_features = state[f"backbone_model.encoder.layers.{index}.{target}.weight"].shape
            state[f"backbone_model.encoder.layers.{index}.{target}.lora_A"] = random(rank, in_features)
            state[f"backbone_model.encoder.layers.{index}.{target}.lora_B"] = random(out_features, rank)


def save_released(folder: Path, arguments: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    """What their ``PyTorchModelHubMixin.save_pretrained`` writes: config.json and model.safetensors."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(arguments, indent=2))
    save_file({key: value.contiguous() for key, value in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


def reference_predictions(kind: str, arguments: dict[str, Any], state: dict[str, torch.Tensor], backbone_dir: Path,
                          waveforms: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Their forward, one 16-kHz clip at a time (as their batched WavLM path is not exact).

    Returns:
        ``[N, 3]`` A, V, D mapped by 1 + 6·y onto 1..7, and ``[N, 2]`` gender probabilities (softmax of
        their gender logits) when the model has that head, else None.
    """
    backbone, lengths_to_frames = _reference_backbone(kind, arguments, state, backbone_dir)
    if kind == "wavlm":
        from transformers import Wav2Vec2FeatureExtractor

        processor = Wav2Vec2FeatureExtractor.from_pretrained(backbone_dir)  # their processor, per clip
    else:
        from transformers import WhisperFeatureExtractor

        extractor = WhisperFeatureExtractor(feature_size=NUM_MEL_BINS, chunk_length=15)
    values, genders = [], []
    with torch.no_grad():
        for waveform in waveforms:
            if kind == "wavlm":
                signal = processor(waveform, sampling_rate=16_000, return_tensors="pt")["input_values"]
                output = backbone(signal, output_hidden_states=True)
                # transformers 4.46 (their version): the last hidden state is after the encoder's final layer norm.
                states = [*output.hidden_states[:-1], output.last_hidden_state]
                frames = torch.einsum("l,lbtd->btd", torch.softmax(state["weights"], dim=0), torch.stack(states))
                num_frames = frames.shape[1]  # one clip: the mean over every frame
            else:
                features = extractor(waveform, sampling_rate=16_000, return_tensors="pt",
                                     max_length=15 * 16_000).input_features
                frames = backbone(features).last_hidden_state
                num_frames = lengths_to_frames(len(waveform))
            hidden = frames.transpose(1, 2)
            hidden = F.relu(F.conv1d(hidden, state["model_seq.0.weight"], state["model_seq.0.bias"]))
            hidden = F.relu(F.conv1d(hidden, state["model_seq.3.weight"], state["model_seq.3.bias"]))
            hidden = F.conv1d(hidden, state["model_seq.6.weight"], state["model_seq.6.bias"]).transpose(1, 2)
            pooled = hidden[0, :num_frames].mean(dim=0)
            outputs = [torch.sigmoid(_mlp(state, f"{name}_layer", pooled)) for name in ATTRIBUTES]
            values.append((1.0 + 6.0 * torch.cat(outputs)).double().numpy())
            if "gender_layer.0.weight" in state:
                genders.append(torch.softmax(_mlp(state, "gender_layer", pooled), -1).double().numpy())
    return np.stack(values), np.stack(genders) if genders else None


def _mlp(state: dict[str, torch.Tensor], name: str, pooled: torch.Tensor) -> torch.Tensor:
    """Their head: Linear → ReLU → Linear."""
    inner = F.relu(F.linear(pooled, state[f"{name}.0.weight"], state[f"{name}.0.bias"]))
    return F.linear(inner, state[f"{name}.2.weight"], state[f"{name}.2.bias"])


def _reference_backbone(kind: str, arguments: dict[str, Any], state: dict[str, torch.Tensor], backbone_dir: Path):
    """transformers' encoder with their weights; LoRA added in the forward (loralib, not merged)."""
    scale = 1.0 / arguments["lora_rank"]  # loralib's lora_alpha defaults to 1
    if kind == "wavlm":
        from transformers import WavLMConfig, WavLMModel

        model = WavLMModel(WavLMConfig.from_pretrained(backbone_dir))
        prefix = "backbone_model."
    else:
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig.from_pretrained(backbone_dir)
        config.max_source_positions = WHISPER_POSITIONS  # as they load it
        model = WhisperEncoder(config)
        prefix = "backbone_model.encoder."
    own = {key.removeprefix(prefix): value for key, value in state.items()
           if key.startswith(prefix) and not key.endswith(("lora_A", "lora_B"))}
    if kind == "whisper":
        own["embed_positions.weight"] = state["embed_positions"]  # their forward installs this table
    model.load_state_dict(own, strict=True)
    for key in [key for key in state if key.endswith(".lora_A")]:
        module = model.get_submodule(key.removeprefix(prefix).removesuffix(".lora_A"))
        lora_a, lora_b = state[key], state[key.replace("lora_A", "lora_B")]
        module.register_forward_hook(
            lambda _, inputs, output, a=lora_a, b=lora_b: output + (inputs[0] @ a.t() @ b.t()) * scale)
    return model.eval(), lambda num_samples: (num_samples // 160 - 1) // 2 + 1


def speech_like(num_samples: int, *, seed: int) -> np.ndarray:
    """A float32 waveform with speech-like loudness changes (noise under a slow envelope)."""
    rng = np.random.default_rng(seed)
    envelope = 0.3 + 0.25 * np.sin(np.linspace(0, 9.0, num_samples)) ** 2
    return (rng.standard_normal(num_samples) * envelope * 0.2).astype(np.float32)

