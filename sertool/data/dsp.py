"""The two signal-processing steps sertool took from torchaudio, computed here with torch alone.

- ``resample``: band-limited (windowed-sinc) resampling, as ``torchaudio.functional.resample`` computes it with
  its defaults (a Hann-windowed sinc, 6 zero crossings, roll-off 0.99);
- ``mel_filter_bank``: the triangular HTK-scale mel filters of ``torchaudio.functional.melscale_fbanks`` (no
  area normalisation), the front end of the fbank encoder, the speaker embedding and the utterance statistics.

Why not torchaudio itself: its PyPI wheels ship a compiled extension linked against CUDA, and ``import
torchaudio`` fails beside a CPU-only torch (an ``OSError`` from the dynamic loader), so a CPU user who installed
with plain pip could run nothing. The computations below are torchaudio's, operation for operation and in the
same dtypes, so the numbers are the same (``tests/test_dsp.py`` compares them with torchaudio where it imports,
and with the definitions evaluated directly in float64 everywhere): models trained before see the same
features.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

# torchaudio.functional.resample's defaults, the values sertool always used.
_ZERO_CROSSINGS = 6  # the sinc's lobes kept on each side (torchaudio's lowpass_filter_width)
_ROLLOFF = 0.99  # cut-off as a share of the lower Nyquist frequency: a little below it, against aliasing


def resample(waveform: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Resample the last dimension of ``waveform`` (float) from ``orig_rate`` to ``new_rate`` Hz.

    Output sample ``j`` is the band-limited interpolation of the input at time ``j / new_rate``: a sum of the
    input samples within ``_ZERO_CROSSINGS`` lobes, weighted by a Hann-windowed sinc whose cut-off is
    ``_ROLLOFF`` × the lower of the two Nyquist frequencies. With both rates divided by their greatest common
    divisor (``orig``, ``new``), the weights repeat every ``new`` outputs, so the whole is one strided
    convolution with ``new`` kernels. The input is taken as zero outside its ends; the output has
    ``ceil(new_rate × length / orig_rate)`` samples.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, not {orig_rate} and {new_rate}")
    if orig_rate == new_rate:
        return waveform
    if not waveform.is_floating_point():
        raise TypeError(f"resample takes a floating-point waveform, not {waveform.dtype}")
    divisor = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // divisor, new_rate // divisor
    kernels, width = _sinc_kernels(orig, new, waveform.dtype, waveform.device)
    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1])
    length = flat.shape[-1]
    padded = torch.nn.functional.pad(flat, (width, width + orig))
    resampled = torch.nn.functional.conv1d(padded[:, None], kernels, stride=orig)
    resampled = resampled.transpose(1, 2).reshape(flat.shape[0], -1)
    # The length as torchaudio rounds it, through a float32 tensor: past 2**23 output samples float32 drops the
    # fraction, and a file then keeps the length it always had.
    target_length = int(torch.ceil(torch.as_tensor(new * length / orig)))
    return resampled[:, :target_length].reshape(*shape[:-1], -1)


@functools.lru_cache(maxsize=16)
def _sinc_kernels(orig: int, new: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, int]:
    """The ``[new, 1, 2 · width + orig]`` convolution kernels of ``resample`` between the reduced rates ``orig``
    and ``new``, and ``width``, the input samples each output reaches on either side. Computed in ``dtype`` (as
    torchaudio does: float32 kernels for float32 audio), once per rate pair: a corpus of 44.1 kHz files reuses
    one set. Nothing writes into the cached tensor (``conv1d`` only reads it).

    Built outside inference mode even when called inside it (``predict``): a cached inference tensor would
    make a later resampling that autograd records fail."""
    with torch.inference_mode(False):
        return _build_sinc_kernels(orig, new, dtype, device)


def _build_sinc_kernels(orig: int, new: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, int]:
    cutoff = min(orig, new) * _ROLLOFF
    width = math.ceil(_ZERO_CROSSINGS * orig / cutoff)
    offsets = torch.arange(-width, width + orig, dtype=dtype, device=device)[None, None] / orig
    times = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new + offsets
    times *= cutoff
    times = times.clamp_(-_ZERO_CROSSINGS, _ZERO_CROSSINGS)
    window = torch.cos(times * math.pi / _ZERO_CROSSINGS / 2) ** 2
    times *= math.pi
    kernels = torch.where(times == 0, torch.tensor(1.0).to(times), times.sin() / times)
    kernels *= window * (cutoff / orig)
    return kernels, width


def mel_filter_bank(*, num_freqs: int, min_hz: float, max_hz: float, num_mels: int, sample_rate: int) -> Tensor:
    """``[num_mels, num_freqs]`` triangular mel filters on the HTK scale (mel = 2595 · log10(1 + hz / 700)).

    The ``num_mels + 2`` band edges are equally spaced in mel from ``min_hz`` to ``max_hz``; filter ``m`` rises
    linearly from edge ``m`` to 1 at edge ``m + 1`` and falls back to 0 at edge ``m + 2``, evaluated at the
    ``num_freqs`` FFT bins from 0 to ``sample_rate // 2`` Hz. A filter narrower than the bin spacing may hold
    no bin at all (then it is all zero, as torchaudio's is, which warns about it).
    """
    bin_hz = torch.linspace(0, sample_rate // 2, num_freqs)
    edges_mel = torch.linspace(_hz_to_mel(min_hz), _hz_to_mel(max_hz), num_mels + 2)
    edges_hz = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    widths = edges_hz[1:] - edges_hz[:-1]
    slopes = edges_hz.unsqueeze(0) - bin_hz.unsqueeze(1)  # [num_freqs, num_mels + 2]
    rising = (-1.0 * slopes[:, :-2]) / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return torch.max(torch.zeros(1), torch.min(rising, falling)).T.contiguous()


def _hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)
