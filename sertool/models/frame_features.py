"""The feature cache (``--feature-cache``) from the model's side: when a run may read its backbone's frames
from disk instead of running the encoder, and under which key they are stored.

Only a frozen Whisper encoder whose last layer is used as it is gives frames that are a fixed function of
the audio: LoRA adapters and learnt layer weights change what the encoder's output means every step, a
fine-tuned encoder changes itself, and speed perturbation changes the audio. Those runs recompute, as
without the cache. Storage is ``sertool.cache.frames``; the fill is ``sertool.runtime.frames``.
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
from sertool.models.backbones import FROZEN_BY_DEFAULT, WhisperBackbone
from sertool.models.ser_model import SERModel


def frame_cache_refusal(config: Config) -> str | None:
    """Why ``--feature-cache`` cannot serve this run (one line, for the user), or None when it can."""
    model = config.model
    prefix = "--feature-cache"
    if model.backbone != "whisper":
        return (f"{prefix}: the cache holds a frozen Whisper encoder's frames; --backbone {model.backbone} runs its "
                "encoder every step, as without the cache")
    frozen = FROZEN_BY_DEFAULT["whisper"] if model.freeze_backbone is None else model.freeze_backbone
    if not frozen:
        return (f"{prefix}: the Whisper encoder is fine-tuned (--no-freeze-backbone): its frames change every step, "
                "so they are recomputed")
    if model.lora_rank:
        return (f"{prefix}: LoRA adapters (--lora-rank {model.lora_rank}) train inside the Whisper encoder: its frames "
                "change every step, so they are recomputed")
    if model.layer_weighting != "last":
        return (f"{prefix}: --layer-weighting {model.layer_weighting} learns a sum of every hidden layer (33 × the "
                "last layer's size to cache): the encoder runs every step; --layer-weighting last can be cached")
    if config.data.speed_perturbation:
        return (f"{prefix}: --speed-perturbation {config.data.speed_perturbation:g} changes the audio every epoch: "
                "the encoder runs every step")
    return None


def frame_cache(model: SERModel, folder: str | os.PathLike[str], *, amp_dtype: torch.dtype | None,
                scan_cache_dir: str | os.PathLike[str] | None = None) -> FrameCache:
    """The feature cache of ``model``'s backbone in ``folder`` (its ``frames/<setup_key>/``).

    The key names the encoder by a digest of its weights (whatever they came from: a hub id, a folder, a
    stored state), its front end and layer (``WhisperBackbone.front_end_settings``), the precision the
    frames are computed in (``amp_dtype``: bf16 frames differ from float32 ones) and the storage format.

    Args:
        model: a model whose backbone's frames are fixed (``SERModel.backbone_frames_fixed``).
        folder: the ``--feature-cache`` folder.
        amp_dtype: the autocast dtype the frames are computed under (None: float32).
        scan_cache_dir: sertool's cache folder, where audio digests are memoised.

    Raises:
        ValueError: the model's frames are not fixed.
    """
    backbone = model.backbone
    if not (model.backbone_frames_fixed and isinstance(backbone, WhisperBackbone)):
        raise ValueError("only a frozen Whisper encoder's last layer can be cached")
    name = model.config.backbone_path or DEFAULT_BACKBONE_IDS["whisper"] or "whisper"
    identity = {"format": FRAME_CACHE_FORMAT, "weights": weights_digest(backbone.encoder),
                "front_end": backbone.front_end_settings(), "computed_in": str(amp_dtype or torch.float32),
                "stored_as": STORED_DTYPE.__name__}
    return FrameCache(Path(folder), setup_key(model_identity(name), identity), dim=backbone.output_dim,
                      scan_cache_dir=scan_cache_dir)


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of ``module``'s state (names, dtypes, shapes and bytes of every tensor): changes with any weight."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
