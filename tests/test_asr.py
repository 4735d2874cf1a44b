"""ASR transcripts: Whisper transcription, the on-disk transcript cache, and filling missing transcripts."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from sertool.cache.transcripts import TRANSCRIPT_CACHE_SUBDIR
from sertool.core.errors import SertoolError
from sertool.data.audio import load_audio
from sertool.data.records import Utterance
from sertool.models.asr import (
    DEFAULT_ASR_MODEL_ID,
    Transcriber,
    TranscriptCache,
    fill_transcripts,
)
from tests.cases import case
from tests.corpus_files import write_tone
from tests.tiny_asr import save_tiny_asr
from tests.tiny_speech import save_tiny_wavlm, save_tiny_whisper

WINDOW_S = 2  # the tiny model's window (Whisper's is 30 s)
SAMPLE_RATE = 16_000


@pytest.fixture(scope="module")
def asr_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_asr(tmp_path_factory.mktemp("asr"), window_s=WINDOW_S)


@pytest.fixture(scope="module")
def transcriber(asr_folder: Path) -> Transcriber:
    return Transcriber(str(asr_folder), device="cpu")


@pytest.fixture
def audio_files(tmp_path: Path) -> list[Path]:
    """Four tones of different pitch and length, all within one window."""
    paths = []
    for i, (duration_s, frequency_hz) in enumerate([(0.5, 150.0), (1.0, 400.0), (1.5, 900.0), (1.9, 2500.0)]):
        path = tmp_path / "audio" / f"clip_{i}.wav"
        write_tone(path, duration_s=duration_s, frequency_hz=frequency_hz)
        paths.append(path)
    return paths


def _noise(*durations_s: float, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [0.2 * torch.randn(int(d * SAMPLE_RATE), generator=generator) for d in durations_s]


class CountingTranscriber:
    """Records the number of waveforms each ``transcribe`` call of one instance receives."""

    def __init__(self, transcriber: Transcriber) -> None:
        self.calls: list[int] = []
        original = transcriber.transcribe

        def transcribe(waveforms):
            self.calls.append(len(waveforms))
            return original(waveforms)

        transcriber.transcribe = transcribe  # type: ignore[method-assign]


def test_transcribe_matches_transformers_generate(asr_folder: Path, transcriber: Transcriber) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    waveforms = _noise(0.7, 1.8)
    processor = WhisperProcessor.from_pretrained(asr_folder)
    model = WhisperForConditionalGeneration.from_pretrained(asr_folder).eval()
    features = processor.feature_extractor(
        [w.numpy() for w in waveforms], sampling_rate=SAMPLE_RATE, return_tensors="pt"
    )
    with torch.no_grad():
        ids = model.generate(features.input_features, max_new_tokens=16, do_sample=False, num_beams=1)
    expected = [" ".join(text.split()) for text in processor.batch_decode(ids, skip_special_tokens=True)]

    assert transcriber.max_new_tokens == 16  # half the tiny decoder's 32 positions
    texts = transcriber.transcribe(waveforms)
    assert texts == expected
    assert all(text and "\n" not in text for text in texts)
    assert texts[0] != texts[1]  # the output depends on the audio


def test_batch_equals_one_at_a_time_across_instances(asr_folder: Path) -> None:
    waveforms = _noise(0.3, 1.7, 0.9, seed=1)
    batched = Transcriber(str(asr_folder), device="cpu", batch_size=3).transcribe(waveforms)
    alone = Transcriber(str(asr_folder), device="cpu", batch_size=1)
    assert batched == [alone.transcribe([waveform])[0] for waveform in waveforms]
    assert len(set(batched)) > 1


def test_long_audio_is_cut_into_equal_windows_and_joined(transcriber: Transcriber) -> None:
    (long,) = _noise(5.0, seed=2)  # 80000 samples: 3 windows of 26667, 26667 and 26666 samples (2-s window)
    pieces = [long[:26667], long[26667:53334], long[53334:]]
    expected = " ".join(transcriber.transcribe(pieces))
    assert transcriber.transcribe([long]) == [expected]
    assert transcriber.transcribe([torch.zeros(0), pieces[0]]) == ["", transcriber.transcribe([pieces[0]])[0]]


def test_cache_miss_then_hit_without_transcribing_again(
    tmp_path: Path, asr_folder: Path, audio_files: list[Path]
) -> None:
    transcriber = Transcriber(str(asr_folder), device="cpu")
    counter = CountingTranscriber(transcriber)
    cache = TranscriptCache(tmp_path / "cache", transcriber)
    first = cache.get(audio_files)
    assert (cache.misses, cache.hits) == (4, 0) and counter.calls == [4]
    assert first == transcriber.transcribe([load_audio(path) for path in audio_files])
    counter.calls.clear()

    second = cache.get(audio_files[::-1])
    assert second == first[::-1]
    assert (cache.misses, cache.hits) == (4, 4) and counter.calls == []

    # The key is the content: a copy under another name hits; a new file is transcribed once however often
    # it is asked for, and the answer keeps the request's order.
    copy = shutil.copy(audio_files[2], tmp_path / "renamed.wav")
    new = tmp_path / "new.wav"
    write_tone(new, duration_s=1.2, frequency_hz=3000.0)
    mixed = cache.get([new, copy, audio_files[0], new])
    assert counter.calls == [1]
    assert mixed[1:3] == [first[2], first[0]] and mixed[0] == mixed[3]


def test_a_fresh_process_reads_the_cache_without_loading_the_model(
    tmp_path: Path, asr_folder: Path, audio_files: list[Path]
) -> None:
    written = TranscriptCache(tmp_path, Transcriber(str(asr_folder), device="cpu")).get(audio_files)
    reader_transcriber = Transcriber(str(asr_folder), device="cpu")
    reader = TranscriptCache(tmp_path, reader_transcriber)
    assert reader.get(audio_files) == written
    assert reader.hits == 4 and not reader_transcriber.loaded


def test_cache_files_are_json_lines_keyed_by_audio_sha256(
    tmp_path: Path, transcriber: Transcriber, audio_files: list[Path]
) -> None:
    cache = TranscriptCache(tmp_path, transcriber)
    waveform = _noise(1.1, seed=4)[0]
    texts = cache.get([*audio_files[:2], waveform])
    files = list(cache.folder.iterdir())
    assert len(files) == 1 and files[0].suffix == ".jsonl"  # no temporary file left behind
    raw = files[0].read_bytes()
    assert raw.startswith(b"{")  # text, not a pickle (whose stream starts with b"\x80")
    rows = [json.loads(line) for line in raw.decode("utf-8").splitlines()]
    expected_digests = [hashlib.sha256(path.read_bytes()).hexdigest() for path in audio_files[:2]]
    expected_digests.append(hashlib.sha256(waveform.numpy().astype("<f4").tobytes()).hexdigest())
    assert rows == [{"sha256": digest, "text": text} for digest, text in zip(expected_digests, texts, strict=True)]


def test_another_model_or_decoding_option_misses(
    tmp_path: Path, asr_folder: Path, transcriber: Transcriber, audio_files: list[Path]
) -> None:
    TranscriptCache(tmp_path, transcriber).get(audio_files)
    other = Transcriber(str(save_tiny_asr(tmp_path / "other", seed=1, window_s=WINDOW_S)), device="cpu")
    counter = CountingTranscriber(other)
    other_cache = TranscriptCache(tmp_path, other)
    other_cache.get(audio_files)
    assert other_cache.misses == 4 and counter.calls == [4]
    keys = {
        transcriber.cache_key,
        other.cache_key,
        Transcriber(str(asr_folder), max_new_tokens=8).cache_key,
        Transcriber(str(asr_folder), language="en").cache_key,
    }
    assert len(keys) == 4


def test_unreadable_cache_file_is_named(tmp_path: Path, transcriber: Transcriber, audio_files: list[Path]) -> None:
    cache = TranscriptCache(tmp_path, transcriber)
    cache.folder.mkdir(parents=True)
    (cache.folder / "broken.jsonl").write_text('{"sha256": "ab", "text": 3}\n')
    with pytest.raises(SertoolError, match="broken.jsonl"):
        cache.get(audio_files)


def test_fill_transcripts_fills_only_missing_ones(
    tmp_path: Path, transcriber: Transcriber, audio_files: list[Path]
) -> None:
    utterances = [
        Utterance(id=path.name, audio_path=path, split="Test3", duration_s=1.0, gender="Male",
                  transcript="kept as is" if i % 2 else None)
        for i, path in enumerate(audio_files)
    ]
    filled = fill_transcripts(utterances, transcriber, cache_dir=tmp_path)
    assert [utt.id for utt in filled] == [utt.id for utt in utterances]
    assert filled[1] is utterances[1] and filled[3] is utterances[3]
    expected = transcriber.transcribe([load_audio(audio_files[0]), load_audio(audio_files[2])])
    assert [filled[0].transcript, filled[2].transcript] == expected
    assert filled[0].gender == "Male" and filled[2].audio_path == audio_files[2]
    assert utterances[0].transcript is None  # the input is not modified
    assert len(list((tmp_path / TRANSCRIPT_CACHE_SUBDIR / transcriber.cache_key).glob("*.jsonl"))) == 1


@case("inference", "an MM model predicting a long file without transcripts",
      "ASR transcribes each window from its own span (cached per file digest and span), never the whole file")
def test_windows_of_a_long_file_are_transcribed_each_from_its_own_span(tmp_path: Path, asr_folder: Path) -> None:
    import soundfile as sf

    long = torch.cat(_noise(1.5, 1.5, seed=3))  # 3 s: two windows of 1.5 s
    sf.write(str(tmp_path / "long.wav"), long.numpy(), SAMPLE_RATE, subtype="FLOAT")
    whole = Utterance(id="long.wav", audio_path=tmp_path / "long.wav", split="predict", duration_s=3.0)
    windows = [whole.window(0.0, 1.5, id="long.wav@0"), whole.window(1.5, 3.0, id="long.wav@24000")]
    transcriber = Transcriber(str(asr_folder), device="cpu")
    lengths: list[int] = []
    original = transcriber.transcribe
    transcriber.transcribe = lambda waveforms: lengths.extend(map(len, waveforms)) or original(waveforms)
    filled = fill_transcripts(windows, transcriber, cache_dir=tmp_path / "cache")
    assert lengths == [24_000, 24_000]  # each window's own samples, never the whole file
    expected = Transcriber(str(asr_folder), device="cpu").transcribe([long[:24_000], long[24_000:]])
    assert [utt.transcript for utt in filled] == expected
    assert fill_transcripts(windows, transcriber, cache_dir=tmp_path / "cache") == filled and len(lengths) == 2


def test_fill_transcripts_builds_no_transcriber_when_nothing_is_missing(
    tmp_path: Path, asr_folder: Path, audio_files: list[Path]
) -> None:
    utterances = [
        Utterance(id=path.name, audio_path=path, split="Train", duration_s=1.0, transcript="x") for path in audio_files
    ]
    # A model that does not exist would raise if it were loaded.
    assert fill_transcripts(utterances, str(tmp_path / "no-such-model"), cache_dir=tmp_path) == utterances
    unused = Transcriber(str(asr_folder), device="cpu")
    assert fill_transcripts(utterances, unused, cache_dir=tmp_path) == utterances
    assert not unused.loaded and not (tmp_path / TRANSCRIPT_CACHE_SUBDIR).exists()


def test_offline_default_hub_id_is_a_quick_user_error(offline_hub, network_waits) -> None:
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(DEFAULT_ASR_MODEL_ID, "config.json"), str):
        pytest.skip(f"{DEFAULT_ASR_MODEL_ID} is in this machine's hub cache")
    with pytest.raises(SertoolError, match=f"--asr {DEFAULT_ASR_MODEL_ID}"):
        Transcriber()
    assert network_waits.none(), network_waits  # quick: nothing waited on a network or slept


def test_a_model_that_is_not_whisper_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(SertoolError, match="--asr .*not Whisper"):
        Transcriber(str(save_tiny_wavlm(tmp_path / "wavlm")))


def test_language_for_an_english_only_model_is_a_user_error(asr_folder: Path) -> None:
    with pytest.raises(SertoolError, match="--asr .*no language tokens"):
        Transcriber(str(asr_folder), device="cpu", language="fr").transcribe(_noise(0.5))


def test_a_folder_without_tokenizer_is_a_user_error(tmp_path: Path) -> None:
    transcriber = Transcriber(str(save_tiny_whisper(tmp_path / "no_tokenizer")), device="cpu")
    with pytest.raises(SertoolError, match="--asr .*no tokenizer"):
        transcriber.transcribe(_noise(0.5))
