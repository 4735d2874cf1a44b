"""The demo corpus: MSP-Podcast layout, splits, labels, determinism, and the generative model it promises."""
from __future__ import annotations

import csv
import hashlib
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sertool.core.errors import SertoolError
from sertool.data.dsp import resample
from sertool.data.records import EMO_CLASSES
from sertool.demo import corpus as demo
from sertool.demo import emotions, espeak, recording, worker
from tests.cases import case

HEADER = "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set"
SMALL = {"num_speakers": 8, "utterances_per_speaker": 6, "test3_utterances": 8}
SEED = 3
LABELLED_NAME = re.compile(r"MSP-PODCAST_\d{4}_\d{4}\.wav")
TEST3_NAME = re.compile(r"MSP-PODCAST_test3_(\d{4})\.wav")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One small corpus for the module: (root, summary, progress calls)."""
    pytest.importorskip("espeakng_loader")
    root = tmp_path_factory.mktemp("demo") / "corpus"
    calls: list[tuple[int, int]] = []
    summary = demo.generate_demo_corpus(
        root, seed=SEED, progress=lambda done, total: calls.append((done, total)), **SMALL
    )
    return root, summary, calls


@pytest.fixture(scope="module")
def rows(generated) -> list[dict[str, str]]:
    root, _, _ = generated
    with (root / "Labels" / "labels_consensus.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _words(root: Path, file_name: str) -> list[str]:
    return _split_words((root / "Transcripts" / f"{Path(file_name).stem}.txt").read_text(encoding="utf-8"))


def _split_words(text: str) -> list[str]:
    return [word.strip(".,").lower() for word in text.split()]


def _word_balance(words: list[str]) -> int:
    """Positive minus negative words."""
    return sum(word in emotions.POSITIVE_WORDS for word in words) - sum(word in emotions.NEGATIVE_WORDS for word in words)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*")) if path.is_file()
    }


# --- layout -------------------------------------------------------------------------------------------------


def test_labels_file_has_the_exact_header_and_one_sorted_row_per_labelled_clip(generated, rows):
    root, _, _ = generated
    lines = (root / "Labels" / "labels_consensus.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == HEADER
    assert len(rows) == SMALL["num_speakers"] * SMALL["utterances_per_speaker"]
    names = [row["FileName"] for row in rows]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert all(LABELLED_NAME.fullmatch(name) for name in names)
    assert not list((root / "Labels").glob("*.tmp"))


def test_every_clip_is_16k_mono_pcm16_with_a_one_line_transcript(generated, rows):
    root, _, _ = generated
    for row in rows:
        info = sf.info(str(root / "Audios" / row["FileName"]))
        assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
        assert 1.0 < info.duration < 9.0
        transcript = root / "Transcripts" / f"{Path(row['FileName']).stem}.txt"
        lines = transcript.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1 and lines[0].strip()


def test_test3_has_audio_and_transcripts_but_no_labels(generated, rows):
    root, _, _ = generated
    test3 = sorted(path.name for path in (root / "Audios").glob("MSP-PODCAST_test3_*.wav"))
    numbers = [int(TEST3_NAME.fullmatch(name).group(1)) for name in test3]
    assert numbers == list(range(1, SMALL["test3_utterances"] + 1))
    assert all((root / "Transcripts" / f"{Path(name).stem}.txt").is_file() for name in test3)
    assert all(sf.info(str(root / "Audios" / name)).samplerate == 16_000 for name in test3)
    assert not set(test3) & {row["FileName"] for row in rows}
    assert {row["Split_Set"] for row in rows} == {"Train", "Development", "Test1"}
    # Nothing in Audios/ but the labelled clips and Test3.
    assert len(list((root / "Audios").iterdir())) == len(rows) + len(test3)


def test_splits_are_speaker_disjoint_and_hold_both_genders(rows):
    speakers_by_split: dict[str, set[str]] = {}
    genders_by_split: dict[str, set[str]] = {}
    gender_of: dict[str, set[str]] = {}
    for row in rows:
        assert row["SpkrID"].isdigit()
        speakers_by_split.setdefault(row["Split_Set"], set()).add(row["SpkrID"])
        genders_by_split.setdefault(row["Split_Set"], set()).add(row["Gender"])
        gender_of.setdefault(row["SpkrID"], set()).add(row["Gender"])
    splits = list(speakers_by_split)
    for index, split in enumerate(splits):
        for other in splits[index + 1:]:
            assert not speakers_by_split[split] & speakers_by_split[other], (split, other)
    assert all(genders == {"Male", "Female"} for genders in genders_by_split.values())
    assert all(len(genders) == 1 for genders in gender_of.values())


def test_labels_are_rater_means_on_the_scale_with_valid_classes(rows):
    for row in rows:
        assert row["EmoClass"] in EMO_CLASSES
        for column in ("EmoAct", "EmoVal", "EmoDom"):
            assert re.fullmatch(r"\d\.\d", row[column]), row[column]
            assert 1.0 <= float(row[column]) <= 7.0


def test_summary_and_progress_describe_what_was_written(generated, rows):
    root, summary, calls = generated
    assert summary.out_dir == root and summary.seed == SEED
    assert summary.utterances == {**Counter(row["Split_Set"] for row in rows), "Test3": SMALL["test3_utterances"]}
    assert summary.speakers["Test3"] >= 2
    assert sum(summary.speakers[split] for split in ("Train", "Development", "Test1")) == SMALL["num_speakers"]
    assert summary.emo_classes == dict(Counter(row["EmoClass"] for row in rows))
    durations = sum(sf.info(str(path)).duration for path in (root / "Audios").glob("*.wav"))
    assert summary.duration_s == pytest.approx(durations)
    total = summary.num_utterances
    assert calls == [(done, total) for done in range(1, total + 1)]


# --- determinism and the output folder -------------------------------------------------------------------------


def test_same_seed_gives_the_same_bytes_and_another_seed_another_corpus(generated, tmp_path):
    root, _, _ = generated
    again = demo.generate_demo_corpus(tmp_path / "again", seed=SEED, **SMALL).out_dir
    assert _tree_digest(again) == _tree_digest(root)

    other = _tree_digest(demo.generate_demo_corpus(tmp_path / "other", seed=SEED + 1, **SMALL).out_dir)
    reference = _tree_digest(root)
    assert other["Labels/labels_consensus.csv"] != reference["Labels/labels_consensus.csv"]
    shared_test3 = [name for name in reference if name.startswith("Audios/MSP-PODCAST_test3_")]
    assert all(other[name] != reference[name] for name in shared_test3)


def test_refuses_a_non_empty_folder_unless_forced(tmp_path):
    pytest.importorskip("espeakng_loader")
    target = tmp_path / "busy"
    (target / "Audios").mkdir(parents=True)
    stale = target / "Audios" / "MSP-PODCAST_test3_0999.wav"
    stale.write_bytes(b"old clip")
    notes = target / "notes.txt"
    notes.write_text("mine")
    size = {"num_speakers": 6, "utterances_per_speaker": 1, "test3_utterances": 2}

    with pytest.raises(SertoolError, match=r"busy.*--force"):
        demo.generate_demo_corpus(target, **size)
    assert stale.read_bytes() == b"old clip" and not (target / "Labels").exists()

    summary = demo.generate_demo_corpus(target, force=True, **size)
    assert summary.num_utterances == 8
    assert not stale.exists()  # a stale Test3 clip would have joined the new Test3
    assert notes.read_text() == "mine"
    assert len(list((target / "Audios").glob("*.wav"))) == 8


@case("data", "`data demo` failing or interrupted (Ctrl-C) after some clips, or while writing the labels",
      "every file and folder the run made is removed (OUT too if it made it; other files stay): the retry needs "
      "no --force")
@pytest.mark.parametrize("stage", ["clips", "labels", "interrupt"])
def test_a_failed_run_leaves_nothing_it_created_and_the_retry_needs_no_force(tmp_path, monkeypatch, stage):
    """A failure after some clips were written (an error, Ctrl-C) or while the labels are written removes every
    file and folder the run made, the target folder too when the run made it; a folder that was there stays,
    with the files that were in it (--force). Then the same command, without --force, writes the corpus."""
    pytest.importorskip("espeakng_loader")
    size = {"num_speakers": 6, "utterances_per_speaker": 1, "test3_utterances": 2}
    original_record = demo.record
    recorded: list[int] = []

    def failing_record(*args, **kwargs):
        recorded.append(1)
        if len(recorded) % 5 == 0:  # each run's fifth clip: four clips and their transcripts are on disk
            raise KeyboardInterrupt if stage == "interrupt" else RuntimeError("injected failure")
        return original_record(*args, **kwargs)

    def failing_labels(handle, *args, **kwargs):
        handle.write("FileName,half a line")  # what a crash inside the writer leaves in the temporary file
        raise RuntimeError("injected failure")

    if stage == "labels":
        monkeypatch.setattr(demo, "_write_labels", failing_labels)
    else:
        monkeypatch.setattr(demo, "record", failing_record)
    (tmp_path / "empty").mkdir()
    (tmp_path / "forced").mkdir()
    (tmp_path / "forced" / "notes.txt").write_text("mine")
    for name in ("new", "empty", "forced"):
        with pytest.raises(KeyboardInterrupt if stage == "interrupt" else RuntimeError):
            demo.generate_demo_corpus(tmp_path / name, force=name == "forced", **size)
    assert not (tmp_path / "new").exists()
    assert list((tmp_path / "empty").iterdir()) == []
    assert [path.name for path in (tmp_path / "forced").rglob("*")] == ["notes.txt"]
    assert len(recorded) == (0 if stage == "labels" else 15)
    if stage != "clips":
        return  # the retry is the same for every stage
    monkeypatch.setattr(demo, "record", original_record)
    summary = demo.generate_demo_corpus(tmp_path / "new", **size)
    assert summary.num_utterances == 8 and (tmp_path / "new" / "Labels" / "labels_consensus.csv").is_file()


def test_rejects_sizes_that_cannot_fill_the_splits(tmp_path):
    with pytest.raises(SertoolError, match="num_speakers=5"):
        demo.generate_demo_corpus(tmp_path / "x", num_speakers=5)
    with pytest.raises(SertoolError, match="utterances_per_speaker=0"):
        demo.generate_demo_corpus(tmp_path / "x", utterances_per_speaker=0)
    assert not (tmp_path / "x").exists()


# --- the generative model ------------------------------------------------------------------------------------


def test_class_prior_is_imbalanced_like_msp_podcast():
    draws = Counter(emotions.sample_emotion_classes(np.random.default_rng(0), 50_000))
    assert set(draws) == set(EMO_CLASSES)
    assert draws.most_common(1)[0][0] == "N"
    assert 0.15 <= (draws["O"] + draws["X"]) / 50_000 <= 0.25
    for code, probability in emotions.EMOTION_PRIOR.items():
        assert draws[code] / 50_000 == pytest.approx(probability, abs=0.01)


def test_attributes_follow_the_emotion_class():
    rng = np.random.default_rng(0)
    means = {
        code: np.mean([emotions.sample_attributes(rng, code) for _ in range(2000)], axis=0)  # (A, V, D)
        for code in ("A", "S", "H", "N")
    }
    neutral = means["N"]
    assert means["A"][0] > neutral[0] + 1 and means["A"][1] < neutral[1] - 1 and means["A"][2] > neutral[2] + 1
    assert means["S"][0] < neutral[0] - 1 and means["S"][1] < neutral[1] - 1 and means["S"][2] < neutral[2] - 1
    assert means["H"][0] > neutral[0] + 0.5 and means["H"][1] > neutral[1] + 1
    draws = np.array([emotions.sample_attributes(rng, "X") for _ in range(2000)])
    assert draws.min() >= 1.0 and draws.max() <= 7.0
    assert np.allclose(draws * 10, np.round(draws * 10))


def test_arousal_drives_loudness_and_speaking_rate_of_the_audio(generated, rows):
    root, _, _ = generated
    arousal, loudness_db, words_per_s = [], [], []
    for row in rows:
        audio, sample_rate = sf.read(str(root / "Audios" / row["FileName"]))
        frame_energy = (audio[: audio.size // 160 * 160].reshape(-1, 160) ** 2).mean(axis=1)  # 10 ms frames
        # The first 50 ms are always background noise (>= 100 ms of silence lead each clip).
        speech = np.flatnonzero(frame_energy > 8 * frame_energy[:5].mean())
        arousal.append(float(row["EmoAct"]))
        loudness_db.append(10 * np.log10(frame_energy.mean()))
        words_per_s.append(len(_words(root, row["FileName"])) / ((speech[-1] - speech[0] + 1) * 160 / sample_rate))
    assert np.corrcoef(arousal, loudness_db)[0, 1] > 0.4
    assert np.corrcoef(arousal, words_per_s)[0, 1] > 0.3


def test_valence_is_carried_by_the_words(generated, rows):
    root, _, _ = generated
    valence, balance = [], []
    for row in rows:
        words = _words(root, row["FileName"])
        valence.append(float(row["EmoVal"]))
        balance.append(_word_balance(words))
    assert np.corrcoef(valence, balance)[0, 1] > 0.6


def test_word_polarity_follows_valence():
    rng = np.random.default_rng(1)

    def balance(valence: float) -> float:
        transcripts = [emotions.compose_transcript(rng, valence, target_words=12) for _ in range(200)]
        words = [word for transcript in transcripts for word in _split_words(transcript)]
        return _word_balance(words) / len(words)

    assert balance(6.5) > 0.2 > abs(balance(4.0)) and balance(1.5) < -0.2
    assert not emotions.POSITIVE_WORDS & emotions.NEGATIVE_WORDS


def test_coloured_noise_has_unit_rms_and_the_requested_spectral_slope():
    for exponent in (0.0, 1.0, 2.0):
        noise = recording.coloured_noise(np.random.default_rng(0), 48_000, exponent)
        assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0)
        power = np.abs(np.fft.rfft(noise)) ** 2
        frequencies = np.fft.rfftfreq(noise.size)
        band = (frequencies > 0.002) & (frequencies < 0.4)
        slope = np.polyfit(np.log(frequencies[band]), np.log(power[band]), 1)[0]
        assert slope == pytest.approx(-exponent, abs=0.15)


def test_batched_resampling_equals_one_clip_at_a_time():
    rng = np.random.default_rng(0)
    clips = [rng.integers(-20_000, 20_000, size).astype(np.int16) for size in (22_050, 5_003, 30_011)]
    for clip, batched in zip(clips, demo._resample_batch(clips, 16_000), strict=True):
        alone = resample(torch.from_numpy(clip.astype(np.float32) / 32768.0), espeak.ESPEAK_SAMPLE_RATE, 16_000)
        assert batched.shape == tuple(alone.shape)
        np.testing.assert_allclose(batched, alone.numpy(), atol=1e-6)


def test_every_voice_speaks_reproducibly():
    """eSpeak seeds its noise generators from the clock: a clip must still be a function of its request."""
    pytest.importorskip("espeakng_loader")
    speeches = [
        espeak.Speech(
            "So he hated every problem.", f"en+{name}", rate_wpm=200, volume=90, pitch=50, pitch_range=50, seed=5
        )
        for variants in espeak.VOICE_VARIANTS.values() for name in variants
    ]
    first = list(worker.synthesise_in_order(speeches))
    time.sleep(1.1)  # into another second of the clock
    second = list(worker.synthesise_in_order(speeches))
    assert [speech.voice for speech, a, b in zip(speeches, first, second, strict=True) if not np.array_equal(a, b)] == []
    assert all(0.5 < clip.size / espeak.ESPEAK_SAMPLE_RATE < 3.0 for clip in first)


def test_the_worker_imports_neither_torch_nor_the_data_layer():
    """The synthesis worker starts once per corpus: it imports sertool.demo.worker and sertool.demo.espeak only."""
    code = "import sys, sertool.demo.worker; print(sorted(m for m in sys.modules if m in ('torch', 'sertool.data')))"
    root = str(Path(worker.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == "[]"


def test_every_voice_variant_ships_with_espeak():
    loader = pytest.importorskip("espeakng_loader")
    variants_dir = Path(loader.get_data_path()) / "voices" / "!v"
    for gender, variants in espeak.VOICE_VARIANTS.items():
        assert gender in ("Male", "Female")
        missing = [name for name in variants if not (variants_dir / name).is_file()]
        assert not missing, missing
