"""The convolutional front end of a wav2vec2-family encoder (WavLM, HuBERT, wav2vec2) in bfloat16, for
``--quantize int8`` on CPUs with AMX (Intel Xeon from the 4th generation, Sapphire Rapids, on).

Why bf16 and not int8 here: the front end's seven layers chain with no residual path, and an int8 product
scales its whole input by one number, so quiet frames lose their precision to loud ones in every layer
(measured: the agreement with float32 fell from 0.998 to 0.971, docs/performance.md, benchmark 10). bf16
keeps an exponent per value (8 significant bits wherever the value lies), and the products accumulate in
float32, so loud and quiet frames keep the same relative precision.

Why not torch's convolution in bf16: oneDNN's bf16 ``conv1d`` on a single input channel (the first layer)
ran slower than float32, and on the others it copies between layouts. Each layer is computed instead as
matrix products over its input windows, time-major (``[frames, channels]``, so a window of ``kernel``
frames is ``kernel × channels`` consecutive numbers): a layer with kernel ``k`` and stride ``s`` is
``ceil(k / s)`` products over strided views of the input (rows of ``s`` frames, nothing copied), added up.

The first layer's group norm (one group per channel, over the clip's frames) is folded into that layer's
weights: its output is linear in the input windows, so each channel's mean and variance over the clip
follow from the windows' mean and covariance (``kernel × kernel``, computed in float64), and the norm
becomes a per-clip scale and shift of the weights. Outputs are float32 again where the encoder hands them
to its feature projection.
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BF16 = torch.bfloat16


def has_amx_bf16() -> bool:
    """Whether this CPU has AMX's bf16 tile products (and AVX512-BF16, which comes with them).

    Only there is the bf16 front end faster than float32. Measured on a Xeon with AMX, one thread, WavLM-Base's
    front end on 10 s of audio: 104 ms in bf16 against 628 ms in float32; with oneDNN held to AVX512-BF16
    without AMX (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``) 715-950 ms, slower than float32 (docs/performance.md,
    benchmark 10). The checks are private torch functions, hence the fallbacks.
    """
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
                and getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def bf16_front_end(encoder: nn.Module) -> Bf16FeatureEncoder | None:
    """``encoder`` (a transformers wav2vec2-family ``feature_extractor``) computed in bf16, or ``None`` for a
    front end of another shape (anything but plain 1-d convolutions, each followed by an optional norm and
    the activation, with a per-channel group norm on the first layer only), which then stays float32."""
    layers = list(getattr(encoder, "conv_layers", []))
    if not layers:
        return None
    for index, layer in enumerate(layers):
        conv, norm = getattr(layer, "conv", None), getattr(layer, "layer_norm", None)
        if not (isinstance(conv, nn.Conv1d) and conv.groups == 1 and conv.dilation == (1,) and conv.padding == (0,)
                and (index > 0 or conv.in_channels == 1) and isinstance(getattr(layer, "activation", None), nn.Module)):
            return None
        per_channel_first = (isinstance(norm, nn.GroupNorm) and index == 0 and norm.affine
                             and norm.num_groups == norm.num_channels == conv.out_channels)
        affine_layer_norm = isinstance(norm, nn.LayerNorm) and norm.elementwise_affine and norm.bias is not None
        if not (norm is None or per_channel_first or affine_layer_norm):
            return None
    return Bf16FeatureEncoder(layers)


class Bf16ConvLayer(nn.Module):
    """One front-end layer (convolution, its norm, the activation) over time-major bf16 frames
    ``[batch, frames, channels]``; the first layer reads the waveform ``[batch, samples]`` (float32)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        conv = cast(nn.Conv1d, layer.get_submodule("conv"))  # checked by bf16_front_end
        self.kernel, self.stride, self.in_channels = conv.kernel_size[0], conv.stride[0], conv.in_channels
        self.activation = layer.get_submodule("activation")
        norm = getattr(layer, "layer_norm", None)
        self.group_norm = norm if isinstance(norm, nn.GroupNorm) else None
        self.layer_norm = norm if isinstance(norm, nn.LayerNorm) else None
        # weight [out, in, kernel] -> [kernel × in, out], row (frame j, channel c) at j × in + c: the layout
        # of a time-major window
        windowed = conv.weight.detach().permute(2, 1, 0).reshape(self.kernel * self.in_channels, conv.out_channels)
        # the group norm's layer is rescaled per clip (in float64); the others' weights are fixed, cut into
        # chunks of `stride` frames, one product each
        self.window_weight = windowed.double()
        rows = self.stride * self.in_channels
        self.chunks = [windowed[start:start + rows].to(BF16) for start in range(0, windowed.shape[0], rows)]
        self.bias = None if conv.bias is None else conv.bias.detach().to(BF16)
        if self.layer_norm is not None:
            self.norm_weight = self.layer_norm.weight.detach().to(BF16)
            self.norm_bias = self.layer_norm.bias.detach().to(BF16)

    def forward(self, inputs: Tensor) -> Tensor:
        if self.group_norm is not None:
            return self.activation(torch.stack([self._normalised_first_layer(row, self.group_norm) for row in inputs]))
        if inputs.dim() == 2:  # the waveform: one input channel
            inputs = inputs.to(BF16).unsqueeze(-1)
        inputs = inputs.contiguous()  # the chunk views assume row-major frames (a no-op between layers)
        batch, frames, _ = inputs.shape
        out_frames = (frames - self.kernel) // self.stride + 1
        outputs = inputs.new_empty(batch, out_frames, self.chunks[0].shape[1])
        for row, output in zip(inputs, outputs, strict=True):
            for index, view in enumerate(self._chunk_views(row.reshape(-1), out_frames)):
                if index == 0:
                    torch.mm(view, self.chunks[0], out=output)
                else:
                    output.addmm_(view, self.chunks[index])
            if self.bias is not None:
                output.add_(self.bias)
        if self.layer_norm is not None:
            outputs = F.layer_norm(outputs, self.layer_norm.normalized_shape, self.norm_weight, self.norm_bias,
                                   self.layer_norm.eps)
        return self.activation(outputs)

    def _chunk_views(self, flat: Tensor, out_frames: int) -> list[Tensor]:
        """Views of ``flat`` (one clip's time-major frames), one per weight chunk: row ``t`` of view ``j``
        holds frames ``(t + j) × stride`` on (as many as chunk ``j`` covers), all their channels."""
        row_stride = self.stride * self.in_channels
        return [flat.as_strided((out_frames, chunk.shape[0]), (row_stride, 1),
                                flat.storage_offset() + index * row_stride)
                for index, chunk in enumerate(self.chunks)]

    def _normalised_first_layer(self, waveform: Tensor, norm: nn.GroupNorm) -> Tensor:
        """The first layer's convolution and per-channel group norm for one clip, as one bf16 product with
        weights scaled and shifted by the clip's statistics (the module docstring)."""
        windows = waveform.unfold(0, self.kernel, self.stride)  # [frames, kernel]: one input channel
        exact = windows.double()
        window_mean = exact.mean(dim=0)
        centred = exact - window_mean
        covariance = centred.T @ centred / windows.shape[0]
        mean = window_mean @ self.window_weight  # a convolution bias would cancel in the norm
        variance = ((covariance @ self.window_weight) * self.window_weight).sum(dim=0)
        scale = norm.weight.double() / torch.sqrt(variance + norm.eps)
        shift = norm.bias.double() - mean * scale
        return torch.addmm(shift.to(BF16), windows.to(BF16), (self.window_weight * scale).to(BF16))


class Bf16FeatureEncoder(nn.Module):
    """Drop-in for a wav2vec2-family ``feature_extractor``: waveforms ``[batch, samples]`` in, float32
    features ``[batch, channels, frames]`` out (a transposed view: the encoder transposes them back)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.conv_layers = nn.ModuleList(Bf16ConvLayer(layer) for layer in layers)

    def forward(self, input_values: Tensor) -> Tensor:
        hidden = input_values
        for layer in self.conv_layers:
            hidden = layer(hidden)
        return hidden.float().transpose(1, 2)
