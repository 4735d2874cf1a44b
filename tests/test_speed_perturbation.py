"""Speed perturbation (--speed-perturbation): a training clip plays at 1 - x, 1 or 1 + x of its speed, which
moves its pitch by that factor and its length by the inverse, reproducibly per (seed, epoch, item)."""
from __future__ import annotations

import numpy as np
import pytest

from sertool.data.dataset import UtteranceDataset
from sertool.data.records import Utterance
from tests.corpus_files import write_tone

RATE = 16_000
TONE_HZ = 440.0


def _dataset(tmp_path, *, speed_perturbation, count=8, seed=0, max_duration_s=None):
    path = tmp_path / "tone.wav"
    write_tone(path, duration_s=2.0, frequency_hz=TONE_HZ)
    utterances = [Utterance(id=f"u{i}", audio_path=path, split="Train", duration_s=2.0) for i in range(count)]
    return UtteranceDataset(utterances, to_unit=float, speed_perturbation=speed_perturbation, seed=seed,
                            max_duration_s=max_duration_s)


def _peak_hz(waveform) -> float:
    spectrum = np.abs(np.fft.rfft(waveform.numpy() * np.hanning(len(waveform)), n=1 << 18))
    return float(np.argmax(spectrum)) * RATE / (1 << 18)


def test_a_clip_plays_at_the_drawn_speed_pitch_and_length_together(tmp_path):
    dataset = _dataset(tmp_path, speed_perturbation=0.1, count=24)
    speeds = {dataset.speed(index) for index in range(len(dataset))}
    assert sorted(round(speed, 9) for speed in speeds) == [0.9, 1.0, 1.1]
    for index in range(len(dataset)):
        speed = dataset.speed(index)
        waveform = dataset[index]["waveform"]
        assert len(waveform) == pytest.approx(2.0 * RATE / speed, abs=2)
        assert _peak_hz(waveform) == pytest.approx(TONE_HZ * speed, rel=2e-3)


def test_speeds_are_reproducible_and_change_with_the_epoch(tmp_path):
    first, again = _dataset(tmp_path, speed_perturbation=0.1), _dataset(tmp_path, speed_perturbation=0.1)
    speeds = [first.speed(index) for index in range(len(first))]
    assert speeds == [again.speed(index) for index in range(len(again))]
    first.set_epoch(1)
    assert [first.speed(index) for index in range(len(first))] != speeds


def test_without_perturbation_clips_are_read_as_recorded_and_crops_do_not_move(tmp_path):
    plain = _dataset(tmp_path, speed_perturbation=0.0)
    assert all(plain.speed(index) == 1.0 for index in range(len(plain)))
    assert len(plain[0]["waveform"]) == 2 * RATE
    cropped = _dataset(tmp_path, speed_perturbation=0.0, max_duration_s=0.5)
    perturbed = _dataset(tmp_path, speed_perturbation=0.1, max_duration_s=0.5)
    # The speeds draw from a stream of their own: switching them on keeps every crop where it was.
    assert [cropped._crop_offset_s(index) for index in range(8)] == [perturbed._crop_offset_s(index) for index in range(8)]
