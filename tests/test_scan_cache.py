"""The scan cache: what a corpus scan read (durations, transcripts, parsed rows) is reused while the files
are unchanged, and never once they changed; a damaged cache is ignored."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import sertool.data.msp as msp_module
import sertool.data.rows as rows_module
from sertool.cache.scan import RACY_S, ScanCache
from sertool.core.errors import SertoolError
from sertool.data.corpus import open_corpus
from sertool.data.rows import read_headers
from tests.corpus_files import write_tone

PAST_S = 3600.0  # files made by a test are dated this far back: older than the scan's RACY_S window


def age(root: Path) -> None:
    """Date every file and folder under ``root`` an hour back, as a corpus copied long ago would be."""
    then = time.time() - PAST_S
    for folder, _, names in os.walk(root):
        for name in names:
            os.utime(Path(folder) / name, (then, then))
        os.utime(folder, (then, then))


def no_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any read of an existing header or transcript fail loudly: what a scan returns must then come from
    the cache. (A missing file is never cached: trying to open it is as cheap as a stat.)"""
    def refusing(read):
        def refuse(path):
            if os.path.exists(path):
                raise AssertionError(f"{path} was read")
            return read(path)
        return refuse

    monkeypatch.setattr(rows_module, "audio_info", refusing(rows_module.audio_info))
    monkeypatch.setattr(msp_module, "_read_transcript", refusing(msp_module._read_transcript))


def snapshots(cache: Path) -> list[Path]:
    return sorted((cache / "scans" / "corpora").glob("*.npz"))


@pytest.fixture
def aged_msp(tiny_msp: Path) -> Path:
    age(tiny_msp)
    return tiny_msp


def test_second_scan_reads_nothing_and_equals_a_fresh_one(aged_msp, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = open_corpus(aged_msp, cache_dir=cache)
    fresh = open_corpus(aged_msp, cache_dir=tmp_path / "other-cache")
    no_reading(monkeypatch)
    from_snapshot = open_corpus(aged_msp, cache_dir=cache)
    assert from_snapshot.utterances == first.utterances == fresh.utterances
    assert from_snapshot.report == first.report
    assert from_snapshot.kind == first.kind and from_snapshot.root == first.root
    # Without the snapshot, the per-file caches of headers and transcripts answer on their own.
    for snapshot in snapshots(cache):
        snapshot.unlink()
    assert open_corpus(aged_msp, cache_dir=cache).utterances == first.utterances


def test_manifest_scan_is_cached_like_msp(tmp_path, monkeypatch):
    audio = tmp_path / "audio"
    for index in range(3):
        write_tone(audio / f"clip{index}.wav", duration_s=0.5 + index * 0.25)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,split,arousal,valence,dominance,transcript\n"
                        + "".join(f"audio/clip{index}.wav,Train,3,4,5,words {index}\n" for index in range(3))
                        + "audio/missing.wav,Train,3,4,5,gone\n")
    age(tmp_path)
    first = open_corpus(manifest, cache_dir=tmp_path / "cache")
    no_reading(monkeypatch)
    second = open_corpus(manifest, cache_dir=tmp_path / "cache")
    assert [utt.duration_s for utt in second.utterances] == [0.5, 0.75, 1.0]
    assert second.utterances == first.utterances and second.report == first.report
    assert second.report.dropped_by_reason() == {"missing audio": 1}


def test_a_changed_file_is_read_again_even_with_its_old_size_and_time(aged_msp, tmp_path):
    cache = tmp_path / "cache"
    target = aged_msp / "Audios" / "MSP-PODCAST_0001_0002.wav"
    before = {utt.id: utt.duration_s for utt in open_corpus(aged_msp, cache_dir=cache).utterances}
    assert before[target.name] == 1.5
    # Same bytes count, same modification time, another sample rate in the header: twice as long.
    old = os.stat(target)
    data, rate = sf.read(str(target), dtype="int16")
    sf.write(str(target), data, rate // 2, subtype="PCM_16")
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert os.stat(target).st_size == old.st_size
    after = {utt.id: utt.duration_s for utt in open_corpus(aged_msp, cache_dir=cache).utterances}
    assert after[target.name] == 3.0
    assert {name: value for name, value in after.items() if name != target.name} == \
        {name: value for name, value in before.items() if name != target.name}


def test_edited_transcript_and_added_files_are_seen(aged_msp, tmp_path):
    cache = tmp_path / "cache"
    open_corpus(aged_msp, cache_dir=cache)
    (aged_msp / "Transcripts" / "MSP-PODCAST_0001_0001.txt").write_text("a new text\n")
    write_tone(aged_msp / "Audios" / "MSP-PODCAST_test3_0002.wav", duration_s=0.5)
    age(aged_msp)
    again = {utt.id: utt for utt in open_corpus(aged_msp, cache_dir=cache).utterances}
    assert again["MSP-PODCAST_0001_0001.wav"].transcript == "a new text"
    assert again["MSP-PODCAST_test3_0002.wav"].duration_s == 0.5
    (aged_msp / "Audios" / "MSP-PODCAST_0001_0002.wav").unlink()
    report = open_corpus(aged_msp, cache_dir=cache).report
    assert report.dropped_by_reason() == {"missing audio": 1}


def test_a_file_written_just_now_is_not_trusted_to_the_cache(tmp_path, monkeypatch):
    fresh = tmp_path / "fresh.wav"
    write_tone(fresh, duration_s=0.5)  # modified within RACY_S of the scan: its stat may not show a rewrite
    assert time.time() - os.stat(fresh).st_mtime < RACY_S
    assert read_headers([fresh], scan=ScanCache(tmp_path / "cache")) == [(16_000, 8_000, 1)]
    calls = []
    real = rows_module.audio_info
    monkeypatch.setattr(rows_module, "audio_info", lambda path: calls.append(path) or real(path))
    assert read_headers([fresh], scan=ScanCache(tmp_path / "cache")) == [(16_000, 8_000, 1)]
    assert calls == [os.fspath(fresh)]


def test_scans_of_two_lists_of_one_folder_keep_each_others_entries(tmp_path, monkeypatch):
    folder = tmp_path / "audio"
    for index in range(4):
        write_tone(folder / f"{index}.wav", duration_s=0.25 * (index + 1))
    age(folder)
    paths = sorted(folder.glob("*.wav"))
    cache = tmp_path / "cache"
    read_headers(paths[:2], scan=ScanCache(cache))
    read_headers(paths[2:], scan=ScanCache(cache))  # merges into the folder's shard, keeping the first two
    no_reading(monkeypatch)
    assert [frames for _, frames, _ in read_headers(paths, scan=ScanCache(cache))] == [4_000, 8_000, 12_000, 16_000]


def test_read_errors_are_returned_and_not_cached(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    age(tmp_path)
    for _ in range(2):
        (result,) = read_headers([bad], scan=ScanCache(tmp_path / "cache"))
        assert isinstance(result, SertoolError) and "not a readable audio file" in str(result)
    write_tone(bad, duration_s=0.25)
    age(tmp_path)
    assert read_headers([bad], scan=ScanCache(tmp_path / "cache")) == [(16_000, 4_000, 1)]


@pytest.mark.parametrize("damage", [b"", b"garbage", b"PK\x03\x04 truncated zip"])
def test_a_damaged_cache_is_ignored_with_a_warning(aged_msp, tmp_path, damage, caplog):
    cache = tmp_path / "cache"
    expected = open_corpus(aged_msp, cache_dir=cache).utterances
    files = sorted((cache / "scans").rglob("*.npz"))
    assert len(files) == 4  # the labels file, headers, transcripts, the snapshot
    for file in files:
        file.write_bytes(damage)
    assert open_corpus(aged_msp, cache_dir=cache).utterances == expected
    assert "ignoring" in caplog.text
    assert open_corpus(aged_msp, cache_dir=cache).utterances == expected  # rewritten whole


def test_a_cache_with_wrong_arrays_is_ignored(aged_msp, tmp_path):
    cache = tmp_path / "cache"
    expected = open_corpus(aged_msp, cache_dir=cache).utterances
    for file in (cache / "scans").rglob("*.npz"):
        with np.load(file) as stored:
            arrays = dict(stored)
        for name in arrays:
            if name.endswith("offsets") or name in ("keys", "column1", "duration_s"):
                arrays[name] = arrays[name][:1]  # columns of different lengths
        with open(file, "wb") as handle:
            np.savez(handle, **arrays)
    assert open_corpus(aged_msp, cache_dir=cache).utterances == expected


def test_data_info_with_a_damaged_cache_has_no_traceback(aged_msp, tmp_path):
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "sertool", "data", "info", str(aged_msp), "--cache-dir", str(cache)]
    first = subprocess.run(command, capture_output=True, text=True)
    for file in (cache / "scans").rglob("*.npz"):
        file.write_bytes(b"damaged")
    second = subprocess.run(command, capture_output=True, text=True)
    assert first.returncode == second.returncode == 0
    assert "Traceback" not in second.stderr and "ignoring" in second.stderr
    assert second.stdout == first.stdout


def test_an_unwritable_cache_is_a_warning(aged_msp, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    corpus = open_corpus(aged_msp, cache_dir=blocker)
    assert len(corpus.utterances) == 7
    assert "going on without caching" in caplog.text


def test_two_processes_scanning_at_once_share_the_cache(aged_msp, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    script = ("import sys, json; from sertool.data.corpus import open_corpus; "
              "corpus = open_corpus(sys.argv[1], cache_dir=sys.argv[2]); "
              "print(json.dumps([[u.id, u.duration_s, u.transcript] for u in corpus.utterances]))")
    children = [subprocess.Popen([sys.executable, "-c", script, str(aged_msp), str(cache)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [child.communicate() for child in children]
    assert [child.returncode for child in children] == [0, 0], [error for _, error in outputs]
    assert outputs[0][0] == outputs[1][0]
    assert not any("Traceback" in error or "ignoring" in error for _, error in outputs)
    expected = open_corpus(aged_msp, cache_dir=tmp_path / "fresh")
    no_reading(monkeypatch)
    assert open_corpus(aged_msp, cache_dir=cache).utterances == expected.utterances


def test_the_cycle_collector_is_paused_while_a_corpus_is_built_and_restored_after(aged_msp, tmp_path, monkeypatch):
    """Building 150,000 records with the collector on cost a third of a warm open (docs/performance.md, 9)."""
    import gc

    import sertool.data.corpus as corpus_module

    collecting: dict[str, bool] = {}

    def watching(name, function):
        def watched(*args, **kwargs):
            collecting[name] = gc.isenabled()
            return function(*args, **kwargs)
        monkeypatch.setattr(corpus_module, name, watched)

    for name in ("load_snapshot", "read_msp_podcast", "save_snapshot"):
        watching(name, getattr(corpus_module, name))
    assert gc.isenabled()
    cache = tmp_path / "cache"
    first = open_corpus(aged_msp, cache_dir=cache)  # a scan, then its snapshot written
    assert collecting == {"load_snapshot": False, "read_msp_podcast": False, "save_snapshot": False}
    assert gc.isenabled()
    collecting.clear()
    assert open_corpus(aged_msp, cache_dir=cache).utterances == first.utterances  # from the snapshot
    assert collecting == {"load_snapshot": False} and gc.isenabled()

    # An error on the way out leaves the collector as it found it: on, or off where the caller had it off.
    def failing(*args, **kwargs):
        raise SertoolError("unreadable")

    monkeypatch.setattr(corpus_module, "load_snapshot", failing)
    with pytest.raises(SertoolError):
        open_corpus(aged_msp, cache_dir=cache)
    assert gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(SertoolError):
            open_corpus(aged_msp, cache_dir=cache)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_reading_no_files_reads_nothing(tmp_path):
    # A table whose every row was dropped gives the scan no file to look up (was: a ValueError from a zip of
    # one empty group against no folder, found by tests/test_generated_input.py with `data manifest`).
    assert ScanCache(tmp_path / "cache").read([], lambda path: 1, errors=(OSError,), kind="sizes", columns=(int,),
                                               encode=lambda value: (value,), decode=lambda entry: entry[0]) == []
