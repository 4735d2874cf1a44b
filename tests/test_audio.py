"""Audio loading: resampling and downmix against analytic signals, header durations, bad files."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from sertool.core.errors import SertoolError
from sertool.data.audio import SAMPLE_RATE, audio_duration_s, encode_wav, load_audio


def _sine(frequency_hz: float, sample_rate: int, duration_s: float) -> np.ndarray:
    return 0.5 * np.sin(2 * np.pi * frequency_hz * np.arange(int(duration_s * sample_rate)) / sample_rate)


@pytest.mark.parametrize("file_rate", [44_100, 8_000, 22_050, 48_000])
def test_resampling_matches_the_same_sine_sampled_at_16k(tmp_path, file_rate):
    path = tmp_path / "tone.wav"
    sf.write(str(path), _sine(440.0, file_rate, 1.0), file_rate, subtype="FLOAT")
    waveform = load_audio(path)
    expected = _sine(440.0, SAMPLE_RATE, 1.0)
    assert waveform.dtype == torch.float32 and waveform.ndim == 1
    assert abs(len(waveform) - len(expected)) <= 1
    # The sinc resampler rings only near the edges; the middle must match the analytic signal closely.
    middle = slice(800, len(expected) - 800)
    assert np.max(np.abs(waveform.numpy()[middle] - expected[middle])) < 5e-3


def test_stereo_is_averaged_to_mono(tmp_path):
    left = _sine(300.0, SAMPLE_RATE, 0.5)
    right = -0.5 * _sine(500.0, SAMPLE_RATE, 0.5)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path).numpy(), (left + right) / 2, atol=1e-6)


def test_8k_stereo_is_resampled_and_downmixed(tmp_path):
    tone = _sine(200.0, 8_000, 1.0)
    path = tmp_path / "phone.wav"
    sf.write(str(path), np.stack([tone, tone], axis=1), 8_000, subtype="PCM_16")
    waveform = load_audio(path)
    assert len(waveform) == SAMPLE_RATE
    middle = slice(800, SAMPLE_RATE - 800)
    assert np.max(np.abs(waveform.numpy()[middle] - _sine(200.0, SAMPLE_RATE, 1.0)[middle])) < 5e-3


def test_offset_and_max_duration_read_only_that_part(tmp_path):
    ramp = np.linspace(-0.9, 0.9, 3 * SAMPLE_RATE, dtype=np.float32)
    path = tmp_path / "ramp.wav"
    sf.write(str(path), ramp, SAMPLE_RATE, subtype="FLOAT")
    part = load_audio(path, offset_s=1.0, max_duration_s=0.5)
    np.testing.assert_array_equal(part.numpy(), ramp[SAMPLE_RATE: SAMPLE_RATE + SAMPLE_RATE // 2])


def test_duration_comes_from_the_header(tmp_path):
    path = tmp_path / "a.wav"
    path.write_bytes(encode_wav(np.zeros(int(2.5 * 44_100)), 44_100))
    assert audio_duration_s(path) == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a readable audio file"), (b"this is not audio at all" * 10, "not a readable audio file")],
)
def test_non_audio_files_get_a_clear_error(tmp_path, content, message):
    path = tmp_path / "fake.wav"
    path.write_bytes(content)
    with pytest.raises(SertoolError, match=message) as caught:
        load_audio(path)
    assert str(path) in str(caught.value)


def test_missing_and_empty_audio(tmp_path):
    with pytest.raises(SertoolError, match="not found"):
        load_audio(tmp_path / "nope.wav")
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0), SAMPLE_RATE)
    with pytest.raises(SertoolError, match="empty"):
        load_audio(empty)
