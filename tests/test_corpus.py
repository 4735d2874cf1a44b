"""Corpus readers: MSP-Podcast layout, manifests, metadata import, and every kind of bad row."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sertool.core.errors import SertoolError
from sertool.data.columns import ColumnMap
from sertool.data.corpus import open_corpus
from sertool.data.importer import import_metadata, speaker_disjoint_split
from sertool.data.manifest import read_manifest, write_manifest
from sertool.data.records import Utterance
from tests.cases import case
from tests.corpus_files import commit, write_msp_corpus, write_tone

GOOD = ["MSP-PODCAST_0001_0001.wav", "N", "2.2", "4.0", "2.6", "30", "Male", "Train"]


def test_reads_every_field_of_an_msp_root(tiny_msp):
    corpus = open_corpus(tiny_msp)
    assert corpus.kind == "msp-podcast"
    assert not corpus.report.dropped
    by_id = {utt.id: utt for utt in corpus.utterances}
    first = by_id["MSP-PODCAST_0001_0001.wav"]
    assert (first.arousal, first.valence, first.dominance) == (2.2, 4.0, 2.6)
    assert first.labels() == (2.2, 4.0, 2.6)  # A, V, D by name, never the baseline's A, D, V
    assert (first.emo_class, first.speaker, first.gender, first.split) == ("N", "30", "Male", "Train")
    assert first.transcript == "sentence number 0"
    assert first.duration_s == pytest.approx(1.0)
    assert first.audio_path == tiny_msp / "Audios" / "MSP-PODCAST_0001_0001.wav"
    assert by_id["MSP-PODCAST_0002_0001.wav"].speaker is None  # "Unknown"
    assert by_id["MSP-PODCAST_0004_0001.wav"].gender is None  # "Other" is not a gender label
    assert by_id["MSP-PODCAST_0004_0001.wav"].transcript is None
    test3 = by_id["MSP-PODCAST_test3_0001.wav"]
    assert test3.split == "Test3" and not test3.has_labels and test3.transcript == "a test three sentence"
    assert corpus.split_names() == ["Train", "Development", "Test1", "Test3"]
    assert [w.reason for w in corpus.report.warnings] == ["missing transcript"]
    assert len(corpus.split("Train")) == 3


def test_unknown_split_name_is_a_clear_error(tiny_msp):
    with pytest.raises(SertoolError, match="--split Test2: .* has Train, Development, Test1, Test3"):
        open_corpus(tiny_msp).split("Test2")


@case("data", "missing audio file, unknown split, missing label, missing file name",
      "row dropped, line named")
@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (["MSP-PODCAST_0009_0001.wav", "N", "nan", "4.0", "2.6", "30", "Male", "Train"], "bad label"),
        (["MSP-PODCAST_0009_0001.wav", "N", "7.5", "4.0", "2.6", "30", "Male", "Train"], "label out of range"),
        (["MSP-PODCAST_0009_0001.wav", "N", "0.5", "4.0", "2.6", "30", "Male", "Train"], "label out of range"),
        (["MSP-PODCAST_0009_0001.wav", "N", "high", "4.0", "2.6", "30", "Male", "Train"], "bad label"),
        (["MSP-PODCAST_0009_0001.wav", "N", "", "4.0", "2.6", "30", "Male", "Train"], "missing label"),
        (["MSP-PODCAST_0009_0001.wav", "Q", "2.0", "4.0", "2.6", "30", "Male", "Train"], "unknown class"),
        (["MSP-PODCAST_0009_0001.wav", "N", "2.0", "4.0", "2.6", "30", "Male", "Validation"], "unknown split"),
        (["", "N", "2.0", "4.0", "2.6", "30", "Male", "Train"], "missing file name"),
    ],
)
def test_bad_rows_are_dropped_naming_file_and_line(tmp_path, row, reason):
    root = write_msp_corpus(tmp_path / "c", [GOOD, row])
    corpus = open_corpus(root)
    assert [utt.id for utt in corpus.utterances] == [GOOD[0]]
    [problem] = corpus.report.dropped
    assert problem.reason == reason
    assert problem.where == f"{root / 'Labels' / 'labels_consensus.csv'}:3"  # header is line 1
    assert corpus.report.summary().startswith(f"dropped 1 row ({1} {reason})")


@case("data", "empty (0-sample) file",
      "row dropped: \"empty audio\"")
def test_missing_unreadable_empty_audio_and_duplicates(tmp_path):
    rows = [GOOD, [*GOOD[:1], "H", *GOOD[2:]]] + [
        [f"MSP-PODCAST_0005_000{i}.wav", "N", "2.0", "4.0", "2.6", "30", "Male", "Train"] for i in range(1, 4)
    ]
    root = write_msp_corpus(tmp_path / "c", rows, audio=False)
    write_tone(root / "Audios" / GOOD[0], duration_s=1.0)
    (root / "Audios" / "MSP-PODCAST_0005_0002.wav").write_bytes(b"RIFF not really a wave file")
    write_tone(root / "Audios" / "MSP-PODCAST_0005_0003.wav", duration_s=0.0)
    corpus = open_corpus(root)
    assert [utt.id for utt in corpus.utterances] == [GOOD[0]]
    reasons = {problem.where.rsplit(":", 1)[1]: problem.reason for problem in corpus.report.dropped}
    assert reasons == {"3": "duplicate id", "4": "missing audio", "5": "unreadable audio", "6": "empty audio"}
    assert "MSP-PODCAST_0005_0001.wav" in str(corpus.report.dropped[1])


def test_labels_header_must_have_the_msp_columns(tmp_path):
    root = tmp_path / "c"
    (root / "Labels").mkdir(parents=True)
    (root / "Audios").mkdir()
    (root / "Labels" / "labels_consensus.csv").write_text("FileName,EmoClass,EmoAct,EmoVal,EmoDom\nx.wav,N,1,1,1\n")
    with pytest.raises(SertoolError, match="missing column\\(s\\) SpkrID, Gender, Split_Set"):
        open_corpus(root)


def test_not_a_corpus(tmp_path):
    with pytest.raises(SertoolError, match="no such file or folder"):
        open_corpus(tmp_path / "nowhere")
    with pytest.raises(SertoolError, match="neither an MSP-Podcast root"):
        open_corpus(tmp_path)


def test_test3_rows_may_lack_labels_other_splits_may_not(tmp_path):
    rows = [GOOD, ["MSP-PODCAST_test3_0002.wav", "", "", "", "", "Unknown", "", "Test3"]]
    corpus = open_corpus(write_msp_corpus(tmp_path / "c", rows))
    assert not corpus.report.dropped
    assert [utt.has_labels for utt in corpus.utterances] == [True, False]


def test_manifest_round_trip(tiny_msp, tmp_path):
    corpus = open_corpus(tiny_msp)
    path = tmp_path / "elsewhere" / "manifest.csv"
    commit(path, lambda handle: write_manifest(corpus.utterances, handle, folder=path.parent, where=path))
    again = open_corpus(path.parent)  # a folder holding manifest.csv
    assert again.kind == "manifest"
    assert [(u.id, u.split, u.arousal, u.valence, u.dominance, u.emo_class, u.speaker, u.gender, u.transcript)
            for u in again.utterances] == [
        (u.id, u.split, u.arousal, u.valence, u.dominance, u.emo_class, u.speaker, u.gender, u.transcript)
        for u in corpus.utterances]
    assert [u.audio_path.resolve() for u in again.utterances] == [u.audio_path.resolve() for u in corpus.utterances]
    assert [u.duration_s for u in again.utterances] == [u.duration_s for u in corpus.utterances]


def test_manifest_bad_rows(tmp_path):
    write_tone(tmp_path / "a.wav", duration_s=0.5)
    path = tmp_path / "m.csv"
    path.write_text("path,split,arousal,valence,dominance,emo_class\n"
                    "a.wav,Train,2,3,4,neutral\n"
                    "a.wav,Train,2,3,4,N\n"
                    "b.wav,Train,2,3,,N\n"
                    ",Train,,,,\n"
                    "a.wav,,,,,\n")
    corpus = read_manifest(path)
    assert [(u.id, u.emo_class) for u in corpus.utterances] == [("a.wav", "N")]
    assert [p.reason for p in corpus.report.dropped] == ["missing label", "missing path", "unknown split", "duplicate id"]


def test_manifest_without_required_columns(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("file,split\na.wav,Train\n")
    with pytest.raises(SertoolError, match="missing column\\(s\\) path"):
        read_manifest(path)


def _metadata(tmp_path: Path, speakers: dict[str, tuple[str, int]]) -> Path:
    rows = []
    for speaker, (gender, count) in speakers.items():
        for i in range(count):
            name = f"{speaker}_{i}.wav"
            write_tone(tmp_path / "audio" / name, duration_s=0.2, sample_rate=44_100)
            rows.append({"file": f"audio/{name}", "spk": speaker, "sex": gender, "emotion": "angry",
                         "a": "0.5", "v": "0", "d": "1"})
    meta = tmp_path / "meta.csv"
    with open(meta, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return meta


def test_import_metadata_rescales_labels_and_splits_by_speaker(tmp_path):
    speakers = {f"m{i}": ("male", 10) for i in range(8)} | {f"f{i}": ("female", 10) for i in range(6)}
    meta = _metadata(tmp_path, speakers)
    columns = ColumnMap(path="file", speaker="spk", gender="sex", emo_class="emotion", arousal="a", valence="v", dominance="d")
    utterances, report = import_metadata(tmp_path, meta, columns=columns, label_range=(0, 1), seed=3)
    assert not report.dropped and len(utterances) == 140
    assert {(u.arousal, u.valence, u.dominance, u.emo_class) for u in utterances} == {(4.0, 1.0, 7.0, "A")}
    splits_of_speaker: dict[str, set[str]] = {}
    for utt in utterances:
        splits_of_speaker.setdefault(utt.speaker, set()).add(utt.split)
    assert all(len(splits) == 1 for splits in splits_of_speaker.values())  # speaker-disjoint
    for gender in ("Male", "Female"):
        assert {u.split for u in utterances if u.gender == gender} == {"Train", "Development", "Test1"}
    again, _ = import_metadata(tmp_path, meta, columns=columns, label_range=(0, 1), seed=3)
    assert [u.split for u in again] == [u.split for u in utterances]  # deterministic for a seed


def test_import_metadata_names_the_missing_column_flag(tmp_path):
    meta = _metadata(tmp_path, {"s": ("male", 1)})
    with pytest.raises(SertoolError, match="missing column\\(s\\) emo \\(--class-column\\); its columns are file"):
        import_metadata(tmp_path, meta, columns=ColumnMap(path="file", emo_class="emo"))


def test_speaker_split_fills_shares_without_overshoot():
    utterances = [Utterance(id=f"{s}_{i}", audio_path=Path("x"), split="?", duration_s=1.0, speaker=s, gender="Male")
                  for s in "abcdefghij" for i in range(10)]
    counts = {}
    for utt in speaker_disjoint_split(utterances, (0.2, 0.1), seed=0):
        counts[utt.split] = counts.get(utt.split, 0) + 1
    assert counts == {"Development": 20, "Test1": 10, "Train": 70}
    with pytest.raises(SertoolError):
        speaker_disjoint_split(utterances, (0.6, 0.5))


def test_utterances_built_from_columns_equal_those_built_one_by_one():
    """``Utterance.many`` (the warm start's bulk build) against the dataclass' own ``__init__``, row by row:
    equal, equally hashed, frozen, defaults filled, every field in its place."""
    import dataclasses

    columns = {"id": ["a.wav", "b.wav"], "audio_path": [Path("/x/a.wav"), Path("/x/b.wav")], "split": ["Train", "Test1"],
               "duration_s": [1.5, 2.25], "arousal": [3.0, None], "valence": [4.5, None], "dominance": [2.0, None],
               "speaker": ["7", None], "transcript": [None, "hello"]}
    built = Utterance.many(**columns)
    expected = [Utterance(**{name: values[row] for name, values in columns.items()}) for row in range(2)]
    assert built == expected
    assert [hash(utt) for utt in built] == [hash(utt) for utt in expected]
    assert [dataclasses.asdict(utt) for utt in built] == [dataclasses.asdict(utt) for utt in expected]
    assert built[1].emo_class is None and built[1].span_s is None and not built[1].has_labels
    with pytest.raises(dataclasses.FrozenInstanceError):
        built[0].split = "Development"  # type: ignore[misc]
    with pytest.raises(ValueError, match="missing columns \\['split'\\]"):
        Utterance.many(id=["a"], audio_path=[Path("a")], duration_s=[1.0])
    with pytest.raises(ValueError, match="unknown columns \\['valance'\\]"):
        Utterance.many(**columns, valance=[1.0, 2.0])
    with pytest.raises(ValueError, match="different lengths"):
        Utterance.many(**{**columns, "split": ["Train"]})
