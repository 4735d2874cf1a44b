"""The demo corpus's recording chain: each utterance's level, the silence around it and its background noise.

``draw_recording`` draws one utterance's settings (a ``Recording``); ``record`` applies them to its speech
once resampled to the corpus's rate.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

_SNR_DB_RANGE = (10.0, 30.0)
_NOISE_EXPONENT_RANGE = (0.0, 2.0)  # power spectrum ~ 1/f^beta: 0 white, 1 pink, 2 brown
_SILENCE_S_RANGE = (0.1, 0.4)  # before and after the speech
_UTTERANCE_GAIN_DB_SD = 0.5  # level drift of one utterance around its speaker's recording level


class Recording(NamedTuple):
    """One utterance's recording settings (``draw_recording``), as ``record`` applies them."""

    gain_db: float
    lead_s: float
    tail_s: float
    snr_db: float
    noise_exponent: float
    noise_seed: int


def draw_recording(rng: np.random.Generator, speaker_gain_db: float) -> Recording:
    """One utterance's recording settings, around its speaker's recording level ``speaker_gain_db``."""
    return Recording(
        gain_db=speaker_gain_db + _UTTERANCE_GAIN_DB_SD * float(rng.standard_normal()),
        lead_s=float(rng.uniform(*_SILENCE_S_RANGE)),
        tail_s=float(rng.uniform(*_SILENCE_S_RANGE)),
        snr_db=float(rng.uniform(*_SNR_DB_RANGE)),
        noise_exponent=float(rng.uniform(*_NOISE_EXPONENT_RANGE)),
        noise_seed=int(rng.integers(2**63)),
    )


def coloured_noise(rng: np.random.Generator, num_samples: int, exponent: float) -> np.ndarray:
    """Unit-RMS noise whose power spectrum falls as 1/f^``exponent`` (0 white, 1 pink, 2 brown)."""
    # Shaped at a power-of-two length (an FFT of a large prime length is ~10x slower), then cut.
    fft_size = 1 << max(1, (num_samples - 1).bit_length())
    frequencies = np.fft.rfftfreq(fft_size)
    frequencies[0] = frequencies[1]  # no infinite gain at DC
    spectrum = np.fft.rfft(rng.standard_normal(fft_size)) / frequencies ** (exponent / 2.0)
    noise = np.fft.irfft(spectrum, n=fft_size)[:num_samples]
    noise -= noise.mean()
    return noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)


def record(speech_16k: np.ndarray, recording: Recording, sample_rate: int) -> np.ndarray:
    """Speech at its recording level, padded with silence, plus noise at the utterance's SNR."""
    speech = speech_16k * 10.0 ** (recording.gain_db / 20.0)
    speech_rms = float(np.sqrt(np.mean(speech**2))) if speech.size else 0.0
    lead, tail = int(round(recording.lead_s * sample_rate)), int(round(recording.tail_s * sample_rate))
    signal = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    noise = coloured_noise(np.random.default_rng(recording.noise_seed), signal.size, recording.noise_exponent)
    signal += noise * speech_rms * 10.0 ** (-recording.snr_db / 20.0)
    # PCM_16 cannot hold |x| >= 1; clipping the rare loud peak is what a recorder would do.
    return np.clip(signal, -1.0, 1.0 - 2.0**-15).astype(np.float32)
