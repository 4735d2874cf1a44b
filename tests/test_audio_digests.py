"""The content keys of audio (``sertool.cache.audio_keys``), which every cache of values computed from audio
uses: a file's key is its bytes' SHA-256 (hashlib is the reference), a window's is the file's and its span's;
files unchanged since the last command are not read again, for any cache (the transcripts' too), and a
rewritten file is."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from sertool.cache import audio_keys as digests_module
from sertool.cache.audio_keys import audio_digests, file_digests
from sertool.cache.items import span_digest
from sertool.data.audio import SAMPLE_RATE
from sertool.data.records import Utterance
from sertool.models.asr import Transcriber, TranscriptCache
from tests.corpus_files import write_tone
from tests.tiny_asr import save_tiny_asr


@pytest.fixture
def files(tmp_path):
    """Three tones, their times set a minute back: settled, as a corpus in use is (the scan cache memoises
    nothing modified within a moment of the scan)."""
    paths = []
    for index, duration_s in enumerate((0.5, 0.7, 0.9)):
        path = tmp_path / "audio" / f"clip{index}.wav"
        write_tone(path, duration_s=duration_s, frequency_hz=200.0 + 50 * index)
        _age(path, seconds=60)
        paths.append(path)
    return paths


@pytest.fixture
def hashed(monkeypatch):
    """The files read to hash them."""
    read: list[str] = []
    original = digests_module.file_digest

    def counting(path):
        read.append(os.fspath(path))
        return original(path)

    monkeypatch.setattr(digests_module, "file_digest", counting)
    return read


def _age(path: Path, *, seconds: float) -> None:
    stat = path.stat()
    shift_ns = int(seconds * 1e9)
    os.utime(path, ns=(stat.st_atime_ns - shift_ns, stat.st_mtime_ns - shift_ns))


def test_keys_are_sha256_of_the_bytes_and_of_the_span_for_a_window(files, tmp_path):
    whole = Utterance(id="w", audio_path=files[0], split="Test1", duration_s=0.5)
    window = whole.window(0.1, 0.3, id="w1")
    keys = audio_digests([whole, window, files[1], str(files[2])], scan_cache_dir=tmp_path / "cache")
    expected = [hashlib.sha256(path.read_bytes()).hexdigest() for path in files]
    assert keys == [expected[0], span_digest(expected[0], (0.1, 0.3), sample_rate=SAMPLE_RATE), expected[1],
                    expected[2]]
    assert keys[1] != keys[0]


def test_a_second_command_reads_no_unchanged_file_and_rereads_a_rewritten_one(files, tmp_path, hashed):
    first = file_digests(files, scan_cache_dir=tmp_path / "cache")
    assert sorted(hashed) == sorted(map(os.fspath, files))
    hashed.clear()
    assert file_digests(files, scan_cache_dir=tmp_path / "cache") == first
    assert hashed == []
    write_tone(files[1], duration_s=0.7, frequency_hz=999.0)  # same size, other bytes
    _age(files[1], seconds=30)
    again = file_digests(files, scan_cache_dir=tmp_path / "cache")
    assert hashed == [os.fspath(files[1])]
    assert again[os.fspath(files[1])] == hashlib.sha256(files[1].read_bytes()).hexdigest() != first[os.fspath(files[1])]


def test_transcript_keys_reuse_the_memoised_digests(files, tmp_path, hashed):
    transcriber = Transcriber(str(save_tiny_asr(tmp_path / "asr")), device="cpu")
    cache = TranscriptCache(tmp_path / "transcripts", transcriber, scan_cache_dir=tmp_path / "cache")
    keys = cache.keys(files)
    assert keys == [hashlib.sha256(path.read_bytes()).hexdigest() for path in files]
    assert sorted(hashed) == sorted(map(os.fspath, files))  # through the shared, memoised digests
    hashed.clear()
    assert TranscriptCache(tmp_path / "transcripts", transcriber, scan_cache_dir=tmp_path / "cache").keys(files) == keys
    assert hashed == []
