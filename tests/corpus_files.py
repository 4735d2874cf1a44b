"""Writers of tiny corpora and audio files for tests."""
from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import soundfile as sf

from sertool.guards.outputs import OutputPlan

MSP_HEADER = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]


def commit(path: Path, write: Callable[[IO[Any]], Any], *, mode: str = "w") -> Any:
    """Write ``path`` with one of sertool's stream writers (``write(handle)``), committed as a command commits
    its outputs (``OutputPlan``, replacing what is there); returns what ``write`` returned."""
    outputs = OutputPlan(force=True)
    target = outputs.file(path, flag="test")
    assert target is not None
    with outputs.writing(target, mode, **({} if "b" in mode else {"newline": ""})) as handle:
        return write(handle)


def write_tone(path: Path, *, duration_s: float, sample_rate: int = 16_000, channels: int = 1,
               frequency_hz: float = 220.0) -> None:
    """A sine tone, the cheapest real audio file."""
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * frequency_hz * t)
    data = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sample_rate, subtype="PCM_16", format="WAV")  # names like "..wav" too


def write_msp_corpus(root: Path, rows: list[list[str]], *, durations_s: dict[str, float] | None = None,
                     transcripts: dict[str, str] | None = None, audio: bool = True) -> Path:
    """An MSP-Podcast layout under ``root``: labels CSV from ``rows``, a tone per row, transcripts given."""
    labels = root / "Labels" / "labels_consensus.csv"
    labels.parent.mkdir(parents=True, exist_ok=True)
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MSP_HEADER)
        writer.writerows(rows)
    (root / "Audios").mkdir(exist_ok=True)
    (root / "Transcripts").mkdir(exist_ok=True)
    durations_s = durations_s or {}
    if audio:
        for row in rows:
            if row[0]:
                write_tone(root / "Audios" / row[0], duration_s=durations_s.get(row[0], 1.0))
    for name, text in (transcripts or {}).items():
        (root / "Transcripts" / f"{Path(name).stem}.txt").write_text(text + "\n")
    return root


def write_learnable_corpus(root: Path, *, per_split: dict[str, int] | None = None, seed: int = 0) -> Path:
    """An MSP-layout corpus of short tones whose loudness and pitch follow arousal and dominance, so a
    model can learn something in a few steps; two speakers per split, both genders, every class."""
    per_split = per_split or {"Train": 16, "Development": 8}
    rng = np.random.default_rng(seed)
    classes = "NHASXO"
    rows, transcripts = [], {}
    for split_index, (split, count) in enumerate(per_split.items()):
        for i in range(count):
            speaker = 2 * split_index + i % 2
            arousal = float(rng.uniform(1.5, 6.5))
            valence = float(rng.uniform(1.5, 6.5))
            dominance = float(np.clip(arousal + rng.normal(0, 0.5), 1, 7))
            name = f"MSP-PODCAST_{speaker + 1:04d}_{split_index}{i:03d}.wav"
            duration_s = float(rng.uniform(0.6, 1.6))
            t = np.arange(int(duration_s * 16_000)) / 16_000
            wave = (0.05 * arousal) * np.sin(2 * np.pi * (100 + 30 * dominance) * t) + 0.01 * rng.normal(size=t.size)
            path = root / "Audios" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), wave, 16_000, subtype="PCM_16")
            rows.append([name, classes[i % len(classes)], f"{arousal:.1f}", f"{valence:.1f}", f"{dominance:.1f}",
                         str(speaker), "Male" if i % 2 else "Female", split])
            transcripts[name] = "good great happy" if valence > 4 else "bad awful sad"
    write_msp_corpus(root, rows, transcripts=transcripts, audio=False)
    return root


def write_tiny_msp(folder: Path) -> Path:
    """``tiny_msp``'s corpus in ``folder`` (``folder / "msp"``), also for a fixture of a wider scope."""
    rows = [
        ["MSP-PODCAST_0001_0001.wav", "N", "2.2", "4.0", "2.6", "30", "Male", "Train"],
        ["MSP-PODCAST_0001_0002.wav", "H", "5.0", "6.2", "4.4", "30", "Male", "Train"],
        ["MSP-PODCAST_0002_0001.wav", "X", "3.0", "3.0", "3.0", "Unknown", "Female", "Train"],
        ["MSP-PODCAST_0003_0001.wav", "A", "6.0", "1.8", "5.6", "31", "Female", "Development"],
        ["MSP-PODCAST_0003_0002.wav", "O", "4.0", "4.0", "4.0", "31", "Female", "Development"],
        ["MSP-PODCAST_0004_0001.wav", "S", "1.6", "2.0", "2.0", "32", "Other", "Test1"],
    ]
    durations = {row[0]: 1.0 + 0.5 * i for i, row in enumerate(rows)}
    transcripts = {row[0]: f"sentence number {i}" for i, row in enumerate(rows[:-1])}
    root = write_msp_corpus(folder / "msp", rows, durations_s=durations, transcripts=transcripts)
    write_tone(root / "Audios" / "MSP-PODCAST_test3_0001.wav", duration_s=2.0)
    (root / "Transcripts" / "MSP-PODCAST_test3_0001.txt").write_text("a test three sentence\n")
    return root


def write_long_clips(root: Path) -> Path:
    """16 training clips of 4 to 8 s and 4 validation clips of 3 s (MSP-Podcast layout, four classes): micro-batches
    whose activations, rather than a process's constant overheads, make a tiny model's peak (the memory plan's
    tests and benchmark)."""
    rows, durations_s = [], {}
    for index in range(20):
        split = "Train" if index < 16 else "Development"
        name = f"MSP-PODCAST_{index // 4 + 1:04d}_{index:04d}.wav"
        rows.append([name, "NHAS"[index % 4], str(2.0 + index % 5), str(3.0 + index % 3), "3.5", str(30 + index // 4),
                     "Male" if index % 2 else "Female", split])
        durations_s[name] = 4.0 + index % 5 if split == "Train" else 3.0
    return write_msp_corpus(root, rows, durations_s=durations_s, transcripts={row[0]: "a few words" for row in rows})
