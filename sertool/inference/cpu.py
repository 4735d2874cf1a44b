"""Running a model on the CPU: int8 dynamic quantisation of its linear layers, and torch's thread count.

Dynamic quantisation stores each ``nn.Linear``'s weights as int8 (one scale per layer) and quantises its
input on the fly; the matrix products run in int8 with int32 accumulation. The transformer layers of the
speech backbones are almost all linear layers (attention projections, feed-forward), so a CPU forward pass
runs about twice as fast (docs/performance.md, benchmark 10); the convolutional feature encoder, the
attention products and the pooling stay float32. Predictions move by a few hundredths on the 1–7 scale.
Quantised models run on the CPU only, and only in memory: nothing on disk changes.
"""
from __future__ import annotations

import types
import warnings

import torch
from torch import nn

from sertool.config import QUANTIZE_CHOICES
from sertool.errors import SertoolError


def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by its dynamically quantised int8 version.

    Returns:
        ``model``, for chaining.

    Raises:
        SertoolError: this torch build has no quantised CPU engine.
    """
    if not torch.backends.quantized.supported_engines or torch.backends.quantized.supported_engines == ["none"]:
        raise SertoolError("--quantize int8: this torch build has no quantised CPU kernels; use --quantize off")
    for module in model.modules():
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
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)


def check_quantize(quantize: str, device: torch.device) -> None:
    """Refuse int8 quantisation on a GPU (its kernels are CPU-only), naming the flags.

    Raises:
        SertoolError: ``quantize`` is unknown, or int8 with a CUDA device.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise SertoolError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize == "int8" and device.type != "cpu":
        raise SertoolError(f"--quantize int8 runs on the CPU only; pass --device cpu (the device is {device.type}), "
                           "or --quantize off on a GPU")


def set_threads(threads: int) -> None:
    """Use ``threads`` CPU threads for torch's operations in this process (0: leave torch's default, one per
    core). Fewer threads than cores suit a machine that also runs other work.

    Raises:
        SertoolError: ``threads`` is negative.
    """
    if threads < 0:
        raise SertoolError(f"--threads {threads}: give a number of threads ≥ 1, or 0 for torch's default")
    if threads:
        torch.set_num_threads(threads)


def _wavlm_attention_calling_layers(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                                    gated_position_bias: torch.Tensor) -> tuple[torch.Tensor, None]:
    """What ``F.multi_head_attention_forward`` computes for WavLM's self-attention in eval mode (scaled
    queries, the gated position bias added to the scores, padded keys masked, softmax, output projection),
    with the projections called as layers. No attention weights are returned: sertool never asks for them.
    """
    batch, length, width = hidden_states.shape
    head_dim = width // self.num_heads

    def heads(projected: torch.Tensor) -> torch.Tensor:  # [B, T, W] -> [B * H, T, W / H]
        return projected.view(batch, length, self.num_heads, head_dim).transpose(1, 2).reshape(-1, length, head_dim)

    query = heads(self.q_proj(hidden_states) * head_dim ** -0.5)
    key, value = heads(self.k_proj(hidden_states)), heads(self.v_proj(hidden_states))
    bias = gated_position_bias.to(query.dtype)
    if attention_mask is not None:
        padded = attention_mask.ne(1).view(batch, 1, 1, length).expand(-1, self.num_heads, -1, -1)
        bias = bias.masked_fill(padded.reshape(batch * self.num_heads, 1, length), float("-inf"))
    weights = torch.softmax(torch.baddbmm(bias, query, key.transpose(1, 2)), dim=-1)
    context = torch.bmm(weights, value).view(batch, self.num_heads, length, head_dim).transpose(1, 2)
    return self.out_proj(context.reshape(batch, length, width)), None
