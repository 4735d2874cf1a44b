"""What every benchmark shares: figures with targets, interleaved timing, and synthetic data.

The machine a benchmark runs on is shared and noisy, so no figure is an absolute time: each is a ratio of
two variants measured in the same run, in rounds that alternate which variant goes first, and a figure
is the median over rounds. Everything a benchmark reads (audio, corpora, models) is generated here, in a
temporary folder, from fixed seeds.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from sertool.data.audio import SAMPLE_RATE
from sertool.data.records import Utterance

# MSP-Podcast's segments last 2.75 to 11 s; the benchmark corpus spreads its durations evenly over that span.
MSP_MIN_DURATION_S = 2.75
MSP_MAX_DURATION_S = 11.0
MSP_TRAIN_UTTERANCES = 84_000  # about the size of MSP-Podcast's Train split (v1.12)
# Spoken words per second, to give transcripts realistic lengths for their clips.
WORDS_PER_SECOND = 2.5
# Class codes of the benchmark corpus (undersampling needs several classes).
BENCH_CLASSES = ("N", "H", "A", "S")
_VOCABULARY = (
    "the a and to of I you it that was so we they just like know really think about what this yeah right well "
    "people time going get when them there because some then would could more very good said thing things one "
    "back out now way kind sort lot work year mean feel something actually"
).split()


@dataclass(frozen=True)
class Target:
    """A bound a figure must meet: ``value >= bound`` or ``value <= bound``."""

    comparison: str  # ">=" or "<="
    bound: float

    def met(self, value: float) -> bool:
        return value >= self.bound if self.comparison == ">=" else value <= self.bound

    def __str__(self) -> str:
        return f"{self.comparison} {self.bound:g}"

    @classmethod
    def parse(cls, text: str) -> "Target":
        """Inverse of ``str``: ``">= 1.8"`` → ``Target(">=", 1.8)``."""
        comparison, bound = text.split()
        return cls(comparison, float(bound))


@dataclass
class Figure:
    """One measured figure: a ratio (or a fraction) with its target, what was compared, and raw numbers.

    Attributes:
        key: stable identifier in results.json, e.g. ``"train_throughput_fbank"``.
        benchmark: the row's title in the table.
        value: the measured ratio.
        unit: how ``value`` reads: ``"×"`` (a speed or size ratio), ``"s"`` (seconds), ``"GB"`` (a size) or ``""``
            (a fraction).
        target: the issue's bound, or None for an informational figure.
        compared: what was divided by what, in words.
        details: raw measurements (seconds, counts, per-round ratios) behind ``value``.
    """

    key: str
    benchmark: str
    value: float
    unit: str
    target: Target | None
    compared: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        """True / False against the target; None for informational figures."""
        return None if self.target is None else self.target.met(self.value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "benchmark": self.benchmark, "value": self.value, "unit": self.unit,
            "target": str(self.target) if self.target else None, "passed": self.passed, "compared": self.compared,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Figure":
        """Inverse of ``to_dict`` (``passed`` is recomputed)."""
        return cls(key=data["key"], benchmark=data["benchmark"], value=data["value"], unit=data["unit"],
                   target=Target.parse(data["target"]) if data["target"] else None, compared=data["compared"],
                   details=data["details"])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call and its result."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def interleaved(variants: dict[str, Callable[[int], float]], *, rounds: int, best_of: int = 1) -> dict[str, list[float]]:
    """Run every variant once per round, alternating the order between rounds.

    Alternating cancels a slow drift of the machine's load (a variant that always ran second would
    always meet the load of later moments). With ``best_of`` > 1, a round runs each variant that many
    times in a row and keeps the fastest: other processes can only add time, so for short operations the
    minimum is the least noisy estimate of their cost.

    Args:
        variants: name → a function of the round number that returns what it measured (seconds, unless the
            caller says otherwise).
        rounds: how many rounds.
        best_of: runs per variant and round.

    Returns:
        name → one measurement per round, in round order.
    """
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else reversed(names):
            seconds[name].append(min(variants[name](round_index) for _ in range(best_of)))
    return seconds


def ratio_of_rounds(slow: Sequence[float], fast: Sequence[float]) -> tuple[float, list[float]]:
    """Median of per-round ratios ``slow / fast`` (both measured in the same round), and the ratios."""
    ratios = [s / f for s, f in zip(slow, fast, strict=True)]
    return median(ratios), [round(r, 3) for r in ratios]


# A CPU's cost is proportional to the padded seconds it computes, so a batching speed-up measured on one is
# bounded by the ratio of padding efficiencies; a figure at this share of that ceiling or above is all the
# CPU can show of it (the GPU section measures the rest).
CPU_CEILING_SHARE_TARGET = 0.9


def cpu_ceiling_share(figure: Figure, *, efficiency: float, reference_efficiency: float, key: str,
                      benchmark: str) -> Figure:
    """``figure``'s speed-up as a share of its CPU ceiling: speed-up ÷ (``efficiency`` ÷
    ``reference_efficiency``), the padding efficiencies of the faster variant and of its reference."""
    ceiling = efficiency / reference_efficiency
    return Figure(
        key=key, benchmark=benchmark, value=figure.value / ceiling, unit="", target=Target(">=", CPU_CEILING_SHARE_TARGET),
        compared=(f"the {figure.value:.2f}× of \"{figure.benchmark}\" ÷ its CPU ceiling {ceiling:.3f} (padding "
                  f"efficiency {efficiency:.3f} vs {reference_efficiency:.3f}: on a CPU a step costs its padded seconds)"),
        details={"speed_up": round(figure.value, 4), "ceiling": round(ceiling, 4),
                 "padding_efficiency": {"measured": efficiency, "reference": reference_efficiency}})


def msp_like_durations(count: int, *, seed: int) -> np.ndarray:
    """``count`` durations spread evenly (stratified at random) over MSP-Podcast's 2.75–11 s, shuffled."""
    rng = np.random.default_rng(seed)
    quantiles = (np.arange(count) + rng.uniform(size=count)) / count
    return rng.permutation(MSP_MIN_DURATION_S + (MSP_MAX_DURATION_S - MSP_MIN_DURATION_S) * quantiles)


def write_speechlike(path: Path, *, duration_s: float, rng: np.random.Generator) -> None:
    """A 16-kHz mono file: a pitch-varying tone in noise, with pauses (content does not matter for speed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), _speechlike(duration_s, rng), SAMPLE_RATE, subtype="PCM_16")


def write_long_speechlike(path: Path, *, duration_s: float, seed: int, block_s: float = 60.0) -> Path:
    """A long 16-kHz mono 16-bit file written ``block_s`` at a time, never whole in memory (3 hours: 346 MB)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(path), "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16") as handle:
        for start_s in np.arange(0.0, duration_s, block_s):
            handle.write(_speechlike(min(block_s, duration_s - start_s), rng))
    return path


def _speechlike(duration_s: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(round(duration_s * SAMPLE_RATE))) / SAMPLE_RATE
    pitch_hz = 120 + 40 * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * t)
    envelope = (np.sin(2 * np.pi * 3.0 * t + rng.uniform(0, 6.3)) > -0.3).astype(np.float64)
    wave = 0.2 * envelope * np.sin(2 * np.pi * np.cumsum(pitch_hz) / SAMPLE_RATE) + 0.01 * rng.normal(size=t.size)
    return wave.astype(np.float32)


def transcript_for(duration_s: float, rng: np.random.Generator) -> str:
    """Random words, about as many as a speaker says in ``duration_s``."""
    count = max(3, int(round(duration_s * WORDS_PER_SECOND)))
    return " ".join(rng.choice(_VOCABULARY, size=count))


def make_utterances(folder: Path, durations_s: Sequence[float], *, seed: int, split: str = "Train",
                    prefix: str = "utt") -> list[Utterance]:
    """Write one audio file per duration and return labelled ``Utterance`` records with transcripts.

    Labels, classes, genders and speakers are random but complete, so every training feature can run.
    """
    rng = np.random.default_rng(seed)
    utterances = []
    for index, duration_s in enumerate(durations_s):
        path = folder / f"{prefix}_{index:05d}.wav"
        write_speechlike(path, duration_s=float(duration_s), rng=rng)
        arousal, valence, dominance = rng.uniform(1.5, 6.5, size=3)
        utterances.append(Utterance(
            id=path.name, audio_path=path.resolve(), split=split,
            duration_s=int(round(float(duration_s) * SAMPLE_RATE)) / SAMPLE_RATE,
            arousal=float(arousal), valence=float(valence), dominance=float(dominance),
            emo_class=BENCH_CLASSES[index % len(BENCH_CLASSES)], speaker=f"spk{index % 8}",
            gender="Male" if index % 2 else "Female", transcript=transcript_for(float(duration_s), rng)))
    return utterances


def linked_utterances(folder: Path, clips: Sequence[Utterance], count: int, *, seed: int,
                      prefix: str = "row") -> list[Utterance]:
    """``count`` utterances of their own (ids, paths, labels, classes, speakers, transcripts) whose files are hard
    links to ``clips``' files, in turn: a corpus of 100,000 files that costs the disk ``len(clips)`` of them.

    Falls back to copies where the file system has no hard links.
    """
    import os
    import shutil

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    utterances = []
    for index in range(count):
        clip = clips[index % len(clips)]
        path = folder / f"{prefix}_{index:06d}.wav"
        if not path.exists():
            try:
                os.link(clip.audio_path, path)
            except OSError:
                shutil.copyfile(clip.audio_path, path)
        arousal, valence, dominance = rng.uniform(1.5, 6.5, size=3)
        utterances.append(Utterance(
            id=path.name, audio_path=path.resolve(), split=clip.split, duration_s=clip.duration_s,
            arousal=float(arousal), valence=float(valence), dominance=float(dominance),
            emo_class=BENCH_CLASSES[index % len(BENCH_CLASSES)], speaker=f"spk{index % 8}",
            gender="Male" if index % 2 else "Female", transcript=transcript_for(clip.duration_s, rng)))
    return utterances


def write_manifest(path: Path, utterances: Sequence[Utterance]) -> Path:
    """A sertool manifest CSV of ``utterances`` (absolute audio paths)."""
    import csv

    from sertool.data.manifest import MANIFEST_COLUMNS

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for utt in utterances:
            writer.writerow([utt.id, str(utt.audio_path), utt.split, f"{utt.arousal:.2f}", f"{utt.valence:.2f}",
                             f"{utt.dominance:.2f}", utt.emo_class, utt.speaker, utt.gender, utt.transcript])
    return path
