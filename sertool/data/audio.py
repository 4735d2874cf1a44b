"""Audio I/O through soundfile: any rate and channel count in, 16 kHz mono float32 out.

Reads and writes go through soundfile (libsndfile), resampling through ``sertool.data.dsp``: no torchaudio,
whose loaders need torchcodec and whose compiled extension does not load beside a CPU-only torch.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from sertool.core.constants import SAMPLE_RATE
from sertool.core.errors import SertoolError

if TYPE_CHECKING:  # torch is imported where tensors are made: reading headers must stay light
    import torch

# Decoded audio lies within ±1 (full scale). Integer formats cannot exceed it; a float file may, a little,
# after processing. 100× full scale (+40 dBFS) is no recording at any usual level: a damaged file, or one
# written unscaled (int16 values in a float file reach 32767). Such values would overflow the backbones'
# power spectra and give NaN predictions, so they are refused.
MAX_ABS_SAMPLE = 100.0
# Sample rates a speech recording can have: telephone speech is 8 kHz, studio audio up to 384 kHz. A header
# outside that range is damaged (a 1 Hz header made 16,000 samples into 4.4 hours to resample).
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4_000, 384_000


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """Return ``(sample_rate, num_frames, num_channels)`` from the file header, without decoding.

    Raises:
        SertoolError: the file is missing, not audio soundfile can read, or its sample rate is outside
            ``MIN_SAMPLE_RATE``..``MAX_SAMPLE_RATE``.
    """
    path = Path(path)
    if not path.is_file():
        raise SertoolError(f"{path}: audio file not found" if not path.exists() else f"{path}: not a file")
    try:
        # Opening the file reads its header; ``sf.info`` would also format a description of it, which doubles
        # the cost of a corpus scan. Bytes: a file name that is not valid UTF-8 opens as it is.
        with sf.SoundFile(os.fsencode(path)) as info:
            sample_rate, num_frames, num_channels = info.samplerate, info.frames, info.channels
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise SertoolError(f"{path}: not a readable audio file ({_short(error)})") from None
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise SertoolError(f"{path}: its header gives a sample rate of {sample_rate} Hz, outside the "
                           f"{MIN_SAMPLE_RATE:,}–{MAX_SAMPLE_RATE:,} Hz of speech recordings: a damaged header?")
    return int(sample_rate), int(num_frames), int(num_channels)


def audio_duration_s(path: str | Path) -> float:
    """Duration in seconds from the file header (no decoding)."""
    sample_rate, num_frames, _ = audio_info(path)
    return num_frames / sample_rate


def load_audio(
    path: str | Path,
    *,
    sample_rate: int = SAMPLE_RATE,
    offset_s: float = 0.0,
    max_duration_s: float | None = None,
) -> torch.Tensor:
    """Read ``path`` as a 1-D float32 waveform at ``sample_rate``, channels averaged.

    Args:
        path: any format libsndfile reads (WAV, FLAC, OGG, ...).
        sample_rate: target rate in Hz; other rates are resampled (band-limited sinc: ``dsp.resample``).
        offset_s: start reading this many seconds into the file.
        max_duration_s: read at most this many seconds (None: to the end). Only the needed frames
            are decoded, so cropping a long file is cheap.

    Raises:
        SertoolError: missing, unreadable, truncated or empty audio, or samples that are not finite or
            beyond ``MAX_ABS_SAMPLE``, naming the file.
    """
    path = Path(path)
    file_rate, num_frames, _ = audio_info(path)
    start = min(num_frames, int(round(offset_s * file_rate)))
    stop = num_frames if max_duration_s is None else min(num_frames, start + int(math.ceil(max_duration_s * file_rate)))
    try:
        data, _ = sf.read(os.fsencode(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise SertoolError(f"{path}: audio could not be decoded ({_short(error)})") from None
    if data.shape[0] == 0:
        raise SertoolError(f"{path}: audio is empty (0 samples{' after offset' if start else ''})")
    peak = float(np.abs(data).max())
    if not math.isfinite(peak):
        raise SertoolError(f"{path}: audio contains NaN or infinite samples")
    if peak > MAX_ABS_SAMPLE:
        raise SertoolError(f"{path}: samples reach {peak:.3g}, over {MAX_ABS_SAMPLE:g}× full scale (decoded audio "
                           "lies within ±1): the file is damaged or was written unscaled; divide it by its peak")
    import torch

    waveform = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if file_rate != sample_rate:
        from sertool.data.dsp import resample  # deferred with torch: reading headers must stay light

        waveform = resample(waveform, file_rate, sample_rate)
    if max_duration_s is not None:
        waveform = waveform[: int(round(max_duration_s * sample_rate))]
    return waveform


def encode_wav(waveform: torch.Tensor | np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A mono waveform as the bytes of a 16-bit PCM WAV file (committed by the caller through the output
    guard, ``OutputPlan.write_data``, so that no partial file ever carries the final name)."""
    data = waveform.detach().cpu().numpy() if hasattr(waveform, "detach") else np.asarray(waveform)
    buffer = io.BytesIO()
    sf.write(buffer, data.astype(np.float32), sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def _short(error: BaseException) -> str:
    """libsndfile's own words (its messages would repeat the path, as bytes), or the last line of others'."""
    if isinstance(error, sf.LibsndfileError):
        return error.error_string
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__
