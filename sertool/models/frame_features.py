"""The feature cache (``--feature-cache``) from the model's side: when a run may read its backbone's hidden
states from disk instead of running the encoder, and under which key they are stored.

A frozen pretrained encoder (Whisper, WavLM, HuBERT, wav2vec2) with nothing training inside it gives hidden
states that are a fixed function of the audio: the cache holds the states the model mixes (every layer's
with ``--layer-weighting weighted``, the last with ``last``), and the layer weights, pooling and heads train
on them. LoRA adapters and a fine-tuned encoder change the states every step, the fbank encoder trains from
scratch, and speed perturbation changes the audio: those runs recompute, as without the cache. Storage is
``sertool.cache.frames``; the fill is ``sertool.runtime.frames``.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from sertool.cache.frames import FRAME_CACHE_FORMAT, STORED_DTYPE, FrameCache
from sertool.cache.items import setup_key
from sertool.core.config import DEFAULT_BACKBONE_IDS, Config
from sertool.core.hub import model_identity
from sertool.guards.outputs import check_own_folder
from sertool.models.backbones import FbankBackbone, SpeechBackbone, Wav2Vec2FamilyBackbone, WhisperBackbone
from sertool.models.ser_model import SERModel

_PREFIX = "--feature-cache"


def frame_cache_refusal(config: Config, model: SERModel) -> str | None:
    """Why ``--feature-cache`` cannot serve this run (one line, for the user), or None when it can.

    Args:
        config: the run's config (its data options; the backbone's name for the message).
        model: the run's model, as built: what trains inside its backbone decides.
    """
    name = config.model.backbone
    backbone = model.backbone
    if isinstance(backbone, FbankBackbone):
        return (f"{_PREFIX}: --backbone fbank trains its encoder from scratch: its frames change every step, so they "
                "are recomputed")
    training = [parameter_name for parameter_name, parameter in backbone.named_parameters()
                if parameter.requires_grad and not parameter_name.startswith("layer_weights.")]
    if any("lora_" in parameter_name for parameter_name in training):
        return (f"{_PREFIX}: LoRA adapters (--lora-rank) train inside the {name} encoder: its states change every "
                "step, so they are recomputed")
    if training:
        how = "--no-freeze-backbone" if config.model.freeze_backbone is False else f"the default for --backbone {name}"
        return (f"{_PREFIX}: the {name} encoder is fine-tuned ({how}): its states change every step, so they are "
                "recomputed; add --freeze-backbone to train the layer weights, pooling and heads on cached states")
    if config.data.speed_perturbation:
        return (f"{_PREFIX}: --speed-perturbation {config.data.speed_perturbation:g} changes the audio every epoch: "
                "the encoder runs every step")
    return None


def frame_cache(model: SERModel, folder: str | os.PathLike[str], *, amp_dtype: torch.dtype | None,
                scan_cache_dir: str | os.PathLike[str] | None = None) -> FrameCache:
    """The feature cache of ``model``'s backbone in ``folder`` (its ``frames/<setup_key>/``).

    The key names the encoder by a digest of its frozen weights (whatever they came from: a hub id, a
    folder, a stored state; not the layer weights, which train on the cached states), its front end and the
    layers it stores (``SpeechBackbone.front_end_settings``), the precision the states are computed in
    (``amp_dtype``: bf16 states differ from float32 ones) and the storage format. A row holds a frame's
    ``num_layer_states`` states side by side.

    Args:
        model: a model whose backbone's states are fixed (``SERModel.backbone_frames_fixed``).
        folder: the ``--feature-cache`` folder.
        amp_dtype: the autocast dtype the states are computed under (None: float32).
        scan_cache_dir: sertool's cache folder, where audio digests are memoised.

    Raises:
        ValueError: the model's states are not fixed.
        SertoolError: ``folder`` is the file system's root or the home folder.
    """
    backbone = model.backbone
    if not model.backbone_frames_fixed:
        raise ValueError("only a frozen pretrained encoder's states can be cached")
    check_own_folder(Path(folder).expanduser(), f"{_PREFIX} {os.fspath(folder)}")
    name = model.config.backbone_path or DEFAULT_BACKBONE_IDS[model.config.backbone] or model.config.backbone
    identity = {"format": FRAME_CACHE_FORMAT, "weights": weights_digest(frozen_encoder(backbone)),
                "front_end": backbone.front_end_settings(), "computed_in": str(amp_dtype or torch.float32),
                "stored_as": STORED_DTYPE.__name__}
    return FrameCache(Path(folder), setup_key(model_identity(name), identity),
                      dim=backbone.num_layer_states * backbone.output_dim, scan_cache_dir=scan_cache_dir)


def frozen_encoder(backbone: SpeechBackbone) -> torch.nn.Module:
    """The pretrained encoder inside ``backbone``: what its states are computed by, without its layer weights.

    Raises:
        ValueError: a backbone without a pretrained encoder (fbank).
    """
    if isinstance(backbone, WhisperBackbone):
        return backbone.encoder
    if isinstance(backbone, Wav2Vec2FamilyBackbone):
        return backbone.model
    raise ValueError(f"{type(backbone).__name__} has no pretrained encoder")


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of ``module``'s state (names, dtypes, shapes and bytes of every tensor): changes with any weight."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
