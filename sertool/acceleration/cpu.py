"""Running a model on the CPU: reduced-precision inference of its speech backbone (``--quantize int8``).
torch's thread count (``--threads``) is ``sertool.core.devices.set_threads``, which training sets too.

``--quantize int8`` changes two things in the speech backbone, nothing else:

- its linear layers at least ``MIN_INT8_FEATURES`` wide (attention projections, feed-forward layers) store
  their weights as int8, one scale per output channel, and quantise their inputs on the fly (one scale per
  call, from the call's whole input); the products run in int8 with int32 accumulation, in oneDNN's kernels
  on CPUs with AVX-512 VNNI;
- on CPUs with AMX (Intel Xeon from Sapphire Rapids on), a wav2vec2-family model's convolutional front end
  runs in bf16 with float32 accumulation (``sertool.acceleration.bf16_front_end``). Not int8: its seven
  chained layers compound int8's per-call scale, which quiet frames share with loud ones (five times the
  prediction change, docs/performance.md); bf16 keeps an exponent per value. On other CPUs it stays
  float32 (held to AVX512-BF16 without AMX, the bf16 front end ran slower than float32).

Everything else stays float32: after the front end, the positional convolution, the transformer's norms,
activations and attention products, and whatever reads one vector per clip or is shared (pooling, heads,
the text and speaker encoders; the text encoder's embeddings are cached on disk and read by float32 runs).

For a WavLM-Base-sized model on a Xeon with AMX, the linear layers and the front end are about three
quarters of a float32 forward pass; how much faster they and the whole pass run, with AMX and without (the
front end then stays float32), and how far predictions move, is measured in docs/performance.md (benchmark
10, and the profile beside it). Because each int8 call's scale
comes from its whole input, a clip's int8 prediction also moves slightly with the clips batched with it.
Quantised models run on the CPU only, and only in memory: nothing on disk changes.
"""
from __future__ import annotations

import types
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from sertool.acceleration.bf16_front_end import bf16_front_end, has_amx_bf16
from sertool.core.config import DEFAULT_AMP, QUANTIZE_CHOICES, QUANTIZE_INT8
from sertool.core.errors import SertoolError
from sertool.models.backbones.wav2vec2 import Wav2Vec2FamilyBackbone

# Linear layers with fewer input or output features stay float32: quantising their input costs more than
# the int8 product saves (WavLM's 64 → 8 position-bias gate ran slower in int8 than in float32).
MIN_INT8_FEATURES = 16


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantise the linear layers of ``model.backbone`` (a ``SERModel``'s speech backbone) to int8 in place,
    and run a wav2vec2-family front end in bf16 on CPUs with AMX, as the module docstring describes.

    Returns:
        ``model``, for chaining.

    Raises:
        SertoolError: this torch build has no quantised CPU engine.
    """
    if not torch.backends.quantized.supported_engines or torch.backends.quantized.supported_engines == ["none"]:
        raise SertoolError("--quantize int8: this torch build has no quantised CPU kernels; use --quantize off")
    backbone = model.get_submodule("backbone")
    for module in backbone.modules():
        if type(module).__name__ == "WavLMAttention":
            # transformers' WavLM attention hands its projections' weight tensors to
            # F.multi_head_attention_forward instead of calling the layers, which a quantised layer (whose
            # weights are packed int8) cannot serve: give it an attention that calls them.
            vars(module)["torch_multi_head_self_attention"] = types.MethodType(_wavlm_attention_calling_layers, module)
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of the separate torchao package, but still ships
        # with torch and is what runs here; the warnings say nothing a user can act on.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        wide = {name: per_channel_dynamic_qconfig for name, module in backbone.named_modules()
                if isinstance(module, nn.Linear) and min(module.in_features, module.out_features) >= MIN_INT8_FEATURES}
        # Each layer packs its weights for the engine current when it is quantised, and keeps that engine's
        # kernels whatever the engine is later: the global setting is restored.
        previous = torch.backends.quantized.engine
        torch.backends.quantized.engine = _int8_engine()
        try:
            quantize_dynamic(backbone, wide, dtype=torch.qint8, inplace=True)
        finally:
            torch.backends.quantized.engine = previous
    if isinstance(backbone, Wav2Vec2FamilyBackbone) and has_amx_bf16():
        front_end = bf16_front_end(backbone.model.feature_extractor)
        if front_end is not None:
            backbone.model.feature_extractor = front_end
    return model


def _int8_engine() -> str:
    """oneDNN on CPUs with AVX-512 VNNI, torch's default engine (fbgemm, as "x86") elsewhere.

    Measured on a Xeon with AVX-512 VNNI and AMX, one thread, WavLM-Base's feed-forward on 499 frames:
    oneDNN 10.6 ms, fbgemm 17.4 ms (float32 41.8 ms); with oneDNN held to AVX2 (``ONEDNN_MAX_CPU_ISA``) it
    took 36.8 ms, so it is chosen only where VNNI is there (docs/performance.md, benchmark 10).
    """
    has_vnni = getattr(torch.cpu, "_is_vnni_supported", lambda: False)()  # private, hence the fallback
    if has_vnni and "onednn" in torch.backends.quantized.supported_engines:
        return "onednn"
    return torch.backends.quantized.engine


def check_quantize(quantize: str, device: torch.device, amp: str = DEFAULT_AMP) -> None:
    """Refuse int8 quantisation on a GPU (its kernels are CPU-only) or under an explicit ``--amp`` (its kernels
    take float32 input only; ``auto`` is off on the CPU), naming the flags.

    Raises:
        SertoolError: ``quantize`` is unknown, or int8 with a CUDA device or bf16 / fp16 autocast.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise SertoolError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize == QUANTIZE_INT8 and device.type != "cpu":
        raise SertoolError(f"--quantize int8 runs on the CPU only; pass --device cpu (the device is {device.type}), "
                           "or --quantize off on a GPU")
    if quantize == QUANTIZE_INT8 and amp not in (DEFAULT_AMP, "off"):
        raise SertoolError(f"--quantize int8 --amp {amp}: int8 layers take float32 input; drop --amp (or pass --amp "
                           f"off), or --quantize off to run in {amp}")


def _wavlm_attention_calling_layers(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                                    gated_position_bias: torch.Tensor) -> tuple[torch.Tensor, None]:
    """What ``F.multi_head_attention_forward`` computes for WavLM's self-attention in eval mode (scaled
    queries, the gated position bias added to the scores, padded keys masked, softmax, output projection),
    with the projections called as layers and torch's fused attention kernel. No attention weights are
    returned: sertool never asks for them.
    """
    batch, length, width = hidden_states.shape

    def heads(projected: torch.Tensor) -> torch.Tensor:  # [B, T, W] -> [B, H, T, W / H]
        return projected.view(batch, length, self.num_heads, -1).transpose(1, 2)

    bias = gated_position_bias.view(batch, self.num_heads, length, length).to(hidden_states.dtype)
    if attention_mask is not None:
        bias = bias.masked_fill(attention_mask.ne(1).view(batch, 1, 1, length), float("-inf"))
    context = F.scaled_dot_product_attention(heads(self.q_proj(hidden_states)), heads(self.k_proj(hidden_states)),
                                             heads(self.v_proj(hidden_states)), attn_mask=bias)
    return self.out_proj(context.transpose(1, 2).reshape(batch, length, width)), None
