"""The built-in demo corpus: synthetic emotional speech in the exact MSP-Podcast v1.12 layout.

Every command of sertool can be tried end to end without the real corpus: ``generate_demo_corpus`` writes
``Audios/``, ``Labels/labels_consensus.csv`` and ``Transcripts/`` exactly as MSP-Podcast lays them out, with
real speech from eSpeak NG (its C library loaded through ctypes) whose prosody follows arousal and dominance
and whose words follow valence. The generative model is documented in docs/data.md ("The demo corpus").

This module plans the corpus (speakers, splits, file names: every random choice, drawn in a fixed order from
one seed) and writes it. The parts it puts together:

- ``sertool.demo.emotions``: the generative model of labels, words and prosody;
- ``sertool.demo.recording``: each clip's level, silence and background noise;
- ``sertool.demo.espeak``: eSpeak NG's bindings, its voices and parameter scales;
- ``sertool.demo.worker``: the process that speaks every utterance, in order (why a process: see there).

The command line imports this module at start-up (``DEMO_SIZES``), so torch (through ``sertool.data.audio``)
stays out of the module-level imports.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Sequence

import numpy as np

from sertool.core.errors import SertoolError
from sertool.core.io import csv_text
from sertool.core.splits import DEVELOPMENT, HELD_OUT_SPLITS, TEST1, TRAIN, UNLABELLED_SPLIT
from sertool.data.msp import MSP_LABELS
from sertool.data.records import GENDERS, MSP_LABELS_HEADER
from sertool.demo.emotions import Speaker, compose_transcript, draw_prosody, sample_attributes, sample_emotion_classes
from sertool.demo.espeak import ESPEAK_SAMPLE_RATE, LANGUAGE, VOICE_VARIANTS, Speech, require_espeak
from sertool.demo.recording import Recording, draw_recording, record
from sertool.demo.worker import synthesise_in_order
from sertool.guards.outputs import OutputPlan, remove_files

# ---------------------------------------------------------------------------------------------------------
# Corpus layout and size
# ---------------------------------------------------------------------------------------------------------

LABELLED_SPLITS: tuple[str, ...] = (TRAIN, *HELD_OUT_SPLITS)
# Share of each gender's labelled speakers that goes to Development and to Test1 (the rest is Train), at
# least one speaker of each gender per split. Splits are speaker-disjoint, as in MSP-Podcast.
_HELD_OUT_SPEAKER_SHARE = 0.2
_MIN_SPEAKERS = 2 * len(LABELLED_SPLITS)  # one speaker of each gender in each labelled split
_SEGMENTS_PER_EPISODE = 20  # MSP-PODCAST_<episode>_<segment>: a speaker's utterances fill episodes of <= 20

# Presets for the CLI's --size: keyword arguments of generate_demo_corpus.
DEMO_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"num_speakers": 8, "utterances_per_speaker": 6, "test3_utterances": 8},  # 56 clips: smoke tests
    "small": {"num_speakers": 12, "utterances_per_speaker": 25, "test3_utterances": 30},  # 330 clips
    "default": {"num_speakers": 24, "utterances_per_speaker": 60, "test3_utterances": 120},  # 1,560 clips
    "large": {"num_speakers": 48, "utterances_per_speaker": 80, "test3_utterances": 240},  # 4,080 clips
}

_TARGET_SPEECH_S_RANGE = (1.0, 4.5)  # speech only; silences bring clips to ~1.5-6 s
# At a nominal rate of R words per minute, eSpeak says ~1.2 R of these short words per minute.
_WORDS_PER_NOMINAL_WORD = 1.2

# ---------------------------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSummary:
    """What ``generate_demo_corpus`` wrote.

    Attributes:
        out_dir: the corpus root (holds Audios/, Labels/, Transcripts/).
        seed: the seed it was generated from.
        utterances: clips per split (Train, Development, Test1, Test3).
        speakers: speakers per split.
        emo_classes: labelled clips per EmoClass code (Test3 excluded: its labels are withheld).
        duration_s: total audio, all splits.
    """

    out_dir: Path
    seed: int
    utterances: dict[str, int]
    speakers: dict[str, int]
    emo_classes: dict[str, int]
    duration_s: float

    @property
    def num_utterances(self) -> int:
        """All clips, Test3 included."""
        return sum(self.utterances.values())


@dataclass(frozen=True)
class _Planned:
    """One utterance, fully drawn before any audio is made."""

    file_name: str
    speaker: Speaker
    emo_class: str
    arousal: float
    valence: float
    dominance: float
    speech: Speech
    recording: Recording


def generate_demo_corpus(
    out_dir: str | Path,
    *,
    num_speakers: int = 24,
    utterances_per_speaker: int = 60,
    test3_utterances: int = 120,
    seed: int = 0,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> DemoSummary:
    """Synthesise a small emotional-speech corpus in the MSP-Podcast v1.12 layout.

    Writes ``Audios/MSP-PODCAST_XXXX_YYYY.wav`` (16 kHz mono 16-bit), ``Audios/MSP-PODCAST_test3_NNNN.wav``,
    ``Transcripts/<stem>.txt`` for every clip and ``Labels/labels_consensus.csv`` (Train, Development and
    Test1 rows; Test3 labels are withheld, as in the challenge). The CSV is written last, through a
    temporary file. A run that fails or is interrupted removes every file and folder it created (and
    ``out_dir`` if it made it), so that the same command can simply be run again.

    Example:
        >>> summary = generate_demo_corpus("demo/corpus", seed=0)  # doctest: +SKIP
        >>> summary.utterances  # doctest: +SKIP
        {'Train': 960, 'Development': 240, 'Test1': 240, 'Test3': 120}

    Args:
        out_dir: corpus root; created if missing.
        num_speakers: labelled speakers, half of each gender, split speaker-disjoint about 60/20/20 into
            Train/Development/Test1 per gender; at least 6.
        utterances_per_speaker: clips per labelled speaker.
        test3_utterances: Test3 clips, spoken by further speakers (both genders); 0 for none.
        seed: same seed, same bytes (CSV, transcripts and audio); another seed, another corpus.
        force: write into a non-empty ``out_dir``. Its labels_consensus.csv and the ``MSP-PODCAST_*``
            clips and transcripts the new corpus does not overwrite are removed, so the folder then holds
            one corpus; other files are left alone.
        progress: called as ``progress(done, total)`` after each clip is written.

    Returns:
        A ``DemoSummary`` (clips and speakers per split, class counts, total duration).

    Raises:
        SertoolError: ``out_dir`` is a file, or is not empty and ``force`` is not set; a size is out of
            range; eSpeak NG (espeakng-loader) is not installed.
    """
    from sertool.data.audio import SAMPLE_RATE, encode_wav  # deferred: see the module docstring

    outputs = OutputPlan(force=force)
    out_dir = outputs.folder(out_dir, flag="OUT")
    _check_sizes(num_speakers, utterances_per_speaker, test3_utterances)
    require_espeak()
    _prepare_folder(out_dir, force=force)

    plan = _plan_corpus(
        np.random.default_rng(seed),
        num_speakers=num_speakers,
        utterances_per_speaker=utterances_per_speaker,
        test3_utterances=test3_utterances,
    )
    audio_dir, transcript_dir = out_dir / "Audios", out_dir / "Transcripts"
    total_samples = 0
    # The folder is held while the corpus is written: a second `data demo` into it is refused at once. A corpus
    # is only of use whole: a failure (or Ctrl-C) removes what this run wrote, so that a retry needs no --force.
    with outputs.holding(out_dir, flag="OUT", undo_on_failure=True):
        if force:
            _remove_previous_corpus(out_dir, keep={item.file_name for item in plan})
        synthesised = synthesise_in_order([item.speech for item in plan])
        for start in range(0, len(plan), _RESAMPLE_BATCH):
            batch = plan[start:start + _RESAMPLE_BATCH]
            speech_16k = _resample_batch([next(synthesised) for _ in batch], SAMPLE_RATE)
            for offset, (item, speech) in enumerate(zip(batch, speech_16k, strict=True), start=1):
                clip = record(speech, item.recording, SAMPLE_RATE)
                outputs.write_data(audio_dir / item.file_name, encode_wav(clip, SAMPLE_RATE))
                with outputs.writing(transcript_dir / f"{Path(item.file_name).stem}.txt") as handle:
                    handle.write(item.speech.text + "\n")
                total_samples += clip.size
                if progress is not None:
                    progress(start + offset, len(plan))
        # The labels last: a folder without them is visibly unfinished, and is not read as a corpus.
        with outputs.writing(out_dir / MSP_LABELS, newline="") as handle:
            _write_labels(handle, [item for item in plan if item.speaker.split != UNLABELLED_SPLIT],
                          where=out_dir / MSP_LABELS)
    return _summarise(out_dir, seed, plan, total_samples / SAMPLE_RATE)


_RESAMPLE_BATCH = 16  # clips resampled together, in one convolution


def _resample_batch(waveforms: Sequence[np.ndarray], sample_rate: int) -> list[np.ndarray]:
    """int16 eSpeak clips -> float64 at ``sample_rate``, through ``sertool.data.dsp.resample``.

    The clips are zero-padded to a common length and resampled in one call; each is then cut to the length
    a call on it alone gives (ceil(n x new / old)). The sinc filter sees the same zeros past a clip's end
    either way, so the result matches one-at-a-time resampling (to float rounding).
    """
    import torch

    from sertool.data.dsp import resample

    batch = np.zeros((len(waveforms), max(waveform.size for waveform in waveforms)), dtype=np.float32)
    for row, waveform in zip(batch, waveforms, strict=True):
        row[:waveform.size] = waveform / 32768.0
    resampled = resample(torch.from_numpy(batch), ESPEAK_SAMPLE_RATE, sample_rate).numpy().astype(np.float64)
    return [
        resampled[index, :math.ceil(waveform.size * sample_rate / ESPEAK_SAMPLE_RATE)]
        for index, waveform in enumerate(waveforms)
    ]


def _check_sizes(num_speakers: int, utterances_per_speaker: int, test3_utterances: int) -> None:
    if num_speakers < _MIN_SPEAKERS:
        raise SertoolError(
            f"num_speakers={num_speakers}: the demo corpus needs at least {_MIN_SPEAKERS} speakers "
            "(one of each gender in Train, Development and Test1)"
        )
    if utterances_per_speaker < 1:
        raise SertoolError(f"utterances_per_speaker={utterances_per_speaker}: give at least 1")
    if test3_utterances < 0:
        raise SertoolError(f"test3_utterances={test3_utterances}: give 0 or more")


def _prepare_folder(out_dir: Path, *, force: bool) -> None:
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise SertoolError(
            f"{out_dir} is not empty; choose an empty or new folder, or pass --force to write the demo corpus "
            "into it (replacing its MSP-PODCAST_* clips, transcripts and labels_consensus.csv)"
        )


def _remove_previous_corpus(out_dir: Path, *, keep: set[str]) -> None:
    """Remove the label file first (a folder without one is visibly unfinished), then the clips and
    transcripts of this layout that the new corpus will not overwrite (stale Test3 clips would otherwise
    join the new Test3)."""
    remove_files([out_dir / MSP_LABELS])
    keep_stems = {Path(name).stem for name in keep}
    for folder, suffix in (("Audios", ".wav"), ("Transcripts", ".txt")):
        remove_files(path for path in (out_dir / folder).glob(f"MSP-PODCAST_*{suffix}") if path.stem not in keep_stems)


def _plan_corpus(
    rng: np.random.Generator, *, num_speakers: int, utterances_per_speaker: int, test3_utterances: int
) -> list[_Planned]:
    """Draw every random choice of the corpus, in a fixed order, from ``rng``."""
    speakers = _draw_speakers(rng, num_speakers=num_speakers, test3_utterances=test3_utterances)
    labelled = [speaker for speaker in speakers if speaker.split != UNLABELLED_SPLIT]
    test3 = [speaker for speaker in speakers if speaker.split == UNLABELLED_SPLIT]

    counts = {speaker.speaker_id: utterances_per_speaker for speaker in labelled}
    for index, speaker in enumerate(test3):  # spread the Test3 clips evenly over its speakers
        counts[speaker.speaker_id] = test3_utterances // len(test3) + (index < test3_utterances % len(test3))

    utterances: list[tuple[Speaker, str, tuple[float, float, float], Speech, Recording]] = []
    for speaker in speakers:
        for emo_class in sample_emotion_classes(rng, counts[speaker.speaker_id]):
            utterances.append((speaker, emo_class, *_draw_utterance(rng, speaker, emo_class)))

    names = _file_names(rng, [speaker for speaker, *_ in utterances])
    return [
        _Planned(name, speaker, emo_class, *attributes, speech, recording)
        for name, (speaker, emo_class, attributes, speech, recording) in zip(names, utterances, strict=True)
    ]


def _draw_speakers(rng: np.random.Generator, *, num_speakers: int, test3_utterances: int) -> list[Speaker]:
    """Speakers of both genders for each split; voice variants shuffled, then reused with other settings."""
    num_male = num_speakers // 2
    num_test3 = 0 if test3_utterances == 0 else 2 * max(1, round(num_speakers / 12))
    splits_by_gender: dict[str, list[str]] = {}
    for gender, count in (("Male", num_male), ("Female", num_speakers - num_male)):
        held_out = max(1, round(_HELD_OUT_SPEAKER_SHARE * count))
        splits_by_gender[gender] = (
            [TRAIN] * (count - 2 * held_out) + [DEVELOPMENT] * held_out + [TEST1] * held_out
            + [UNLABELLED_SPLIT] * (num_test3 // 2)
        )
    total = sum(len(splits) for splits in splits_by_gender.values())
    speaker_ids = rng.choice(np.arange(1, max(3000, 2 * total)), size=total, replace=False)
    speakers: list[Speaker] = []
    for gender in GENDERS:
        variants = [VOICE_VARIANTS[gender][index] for index in rng.permutation(len(VOICE_VARIANTS[gender]))]
        for index, split in enumerate(splits_by_gender[gender]):
            speakers.append(Speaker(
                speaker_id=int(speaker_ids[len(speakers)]),
                gender=gender,
                split=split,
                voice=f"{LANGUAGE}+{variants[index % len(variants)]}",
                pitch=float(rng.uniform(40.0, 60.0)),
                pitch_range=float(rng.uniform(40.0, 60.0)),
                rate_wpm=float(rng.uniform(150.0, 185.0)),
                gain_db=float(rng.uniform(-3.0, 0.0)),
            ))
    return speakers


def _draw_utterance(
    rng: np.random.Generator, speaker: Speaker, emo_class: str
) -> tuple[tuple[float, float, float], Speech, Recording]:
    arousal, valence, dominance = sample_attributes(rng, emo_class)
    prosody = draw_prosody(speaker, arousal, valence, dominance, rng)
    # Words are added until they fill a target time at this rate, so fast (aroused) speech says more.
    target_speech_s = rng.uniform(*_TARGET_SPEECH_S_RANGE)
    target_words = max(1, int(target_speech_s * prosody.rate_wpm / 60.0 * _WORDS_PER_NOMINAL_WORD))
    text = compose_transcript(rng, valence, target_words=target_words)
    recording = draw_recording(rng, speaker.gain_db)
    speech = Speech(
        text=text,
        voice=speaker.voice,
        rate_wpm=round(prosody.rate_wpm),
        volume=round(prosody.volume),
        pitch=round(prosody.pitch),
        pitch_range=round(prosody.pitch_range),
        seed=int(rng.integers(2**31)),
    )
    return (arousal, valence, dominance), speech, recording


def _file_names(rng: np.random.Generator, speakers: Sequence[Speaker]) -> list[str]:
    """MSP-Podcast names: ``MSP-PODCAST_<episode>_<segment>.wav``, ``MSP-PODCAST_test3_<n>.wav``.

    Each labelled speaker's clips fill episodes of up to ``_SEGMENTS_PER_EPISODE`` segments; episode and
    Test3 numbers are shuffled so that neither reveals the speaker or the split.
    """
    per_speaker = Counter(speaker.speaker_id for speaker in speakers if speaker.split != UNLABELLED_SPLIT)
    episodes = {speaker_id: math.ceil(count / _SEGMENTS_PER_EPISODE) for speaker_id, count in per_speaker.items()}
    episode_numbers = iter(rng.permutation(sum(episodes.values())) + 1)
    episode_ids = {
        speaker_id: [int(next(episode_numbers)) for _ in range(count)] for speaker_id, count in episodes.items()
    }
    test3_numbers = iter(rng.permutation(sum(speaker.split == UNLABELLED_SPLIT for speaker in speakers)) + 1)

    seen: Counter[int] = Counter()
    names = []
    for speaker in speakers:
        if speaker.split == UNLABELLED_SPLIT:
            names.append(f"MSP-PODCAST_test3_{int(next(test3_numbers)):04d}.wav")
            continue
        episode, segment = divmod(seen[speaker.speaker_id], _SEGMENTS_PER_EPISODE)
        seen[speaker.speaker_id] += 1
        names.append(f"MSP-PODCAST_{episode_ids[speaker.speaker_id][episode]:04d}_{segment + 1:04d}.wav")
    return names


def _write_labels(handle: IO[str], items: Sequence[_Planned], *, where: Path) -> None:
    """Write labels_consensus.csv, sorted by file name, to ``handle`` (``where`` names it in messages)."""
    rows = ([item.file_name, item.emo_class, f"{item.arousal:.1f}", f"{item.valence:.1f}", f"{item.dominance:.1f}",
             str(item.speaker.speaker_id), item.speaker.gender, item.speaker.split]
            for item in sorted(items, key=lambda item: item.file_name))
    handle.write(csv_text(MSP_LABELS_HEADER, rows, destination=where))


def _summarise(out_dir: Path, seed: int, plan: Sequence[_Planned], duration_s: float) -> DemoSummary:
    splits = (*LABELLED_SPLITS, UNLABELLED_SPLIT)
    labelled = [item for item in plan if item.speaker.split != UNLABELLED_SPLIT]
    return DemoSummary(
        out_dir=out_dir,
        seed=seed,
        utterances={split: sum(item.speaker.split == split for item in plan) for split in splits},
        speakers={
            split: len({item.speaker.speaker_id for item in plan if item.speaker.split == split}) for split in splits
        },
        emo_classes=dict(Counter(item.emo_class for item in labelled).most_common()),
        duration_s=duration_s,
    )
