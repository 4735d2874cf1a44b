"""Data selection (the paper's Table 5 options) on a hand-made corpus with exact expected id sets."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sertool.core.errors import SertoolError
from sertool.data.records import Utterance
from sertool.data.selection import held_out, require_enough_labels, select
from tests.cases import case


def _utt(id: str, split: str, emo_class: str | None, labeled: bool = True) -> Utterance:
    value = 4.0 if labeled else None
    return Utterance(
        id=id, audio_path=Path(f"/corpus/{id}.wav"), split=split, duration_s=5.0,
        arousal=value, valence=value, dominance=value, emo_class=emo_class,
    )


CORPUS = [
    _utt("t1", "Train", "N"),
    _utt("t2", "Train", "H"),
    _utt("t3", "Train", "O"),
    _utt("d1", "Development", "N"),
    _utt("t4", "Train", "X"),
    _utt("t5", "Train", "A", labeled=False),
    _utt("d2", "Development", "O"),
    _utt("t6", "Train", None),  # labelled, no class code: counts as non-O/X
    _utt("d3", "Development", "X"),
    _utt("d4", "Development", "S"),
    _utt("d5", "Development", "X", labeled=False),
    _utt("e1", "Test1", "N"),
    _utt("e2", "Test3", None, labeled=False),
]


def _ids(records: list[Utterance]) -> list[str]:
    return [record.id for record in records]


@pytest.mark.parametrize(
    ("train_ox", "dev_ox_to_train", "train_ids", "valid_ids"),
    [
        ("keep", False, ["t1", "t2", "t3", "t4", "t6"], ["d1", "d2", "d3", "d4"]),
        ("drop", False, ["t1", "t2", "t6"], ["d1", "d2", "d3", "d4"]),
        ("only", False, ["t3", "t4"], ["d1", "d2", "d3", "d4"]),
        ("keep", True, ["t1", "t2", "t3", "t4", "t6", "d2", "d3"], ["d1", "d4"]),
        ("drop", True, ["t1", "t2", "t6", "d2", "d3"], ["d1", "d4"]),
        ("only", True, ["t3", "t4", "d2", "d3"], ["d1", "d4"]),  # the paper's best data setting
    ],
)
def test_each_option_selects_exactly(train_ox, dev_ox_to_train, train_ids, valid_ids):
    selection = select(CORPUS, train_ox=train_ox, dev_ox_to_train=dev_ox_to_train)
    # Order: training split in corpus order, then the moved validation O/X in corpus order.
    assert _ids(selection.train) == train_ids
    assert _ids(selection.valid) == valid_ids
    assert not set(train_ids) & set(valid_ids)
    assert selection.unlabeled_skipped == 2  # t5, d5; the Test splits are not counted
    assert selection.train_ox_dropped == (2 if train_ox == "drop" else 0)
    assert selection.train_non_ox_dropped == (3 if train_ox == "only" else 0)
    assert selection.dev_ox_moved == (2 if dev_ox_to_train else 0)


@pytest.mark.parametrize("dev_ox_to_train", [False, True])
def test_drop_as_many_non_ox_keeps_the_size_of_drop_and_every_ox(dev_ox_to_train):
    # 30 Train utterances, 9 of them O/X: both readings of "− non-O/X (Train)" side by side.
    corpus = [_utt(f"t{i}", "Train", "OX"[i % 2] if i < 9 else "NHS"[i % 3]) for i in range(30)] + CORPUS[3:4] + CORPUS[6:10]
    ox = {f"t{i}" for i in range(9)}
    dropped_ox = select(corpus, train_ox="drop", dev_ox_to_train=dev_ox_to_train)
    draws = []
    for seed in (0, 1):
        selection = select(corpus, train_ox="drop-as-many-non-ox", dev_ox_to_train=dev_ox_to_train, seed=seed)
        train = set(_ids(selection.train))
        assert len(selection.train) == len(dropped_ox.train)  # the training-set size of "− O/X (Train)"
        assert ox <= train and len(train - ox - {"d2", "d3"}) == 21 - 9  # every O/X kept, 9 of 21 non-O/X gone
        assert selection.train_non_ox_dropped == 9 and selection.valid == dropped_ox.valid
        assert _ids(selection.train) == _ids(select(corpus, train_ox="drop-as-many-non-ox",
                                                    dev_ox_to_train=dev_ox_to_train, seed=seed).train)
        draws.append(train)
    assert draws[0] != draws[1]  # the seed draws the set
    assert set(_ids(select(corpus, train_ox="only").train)) == ox  # the literal reading: O/X alone


def test_drop_as_many_non_ox_needs_enough_non_ox():
    corpus = [_utt("a", "Train", "O"), _utt("b", "Train", "X"), _utt("c", "Train", "N"), _utt("d", "Development", "N")]
    with pytest.raises(SertoolError, match="has 2 O/X but only 1 non-O/X utterances.*--train-ox only"):
        select(corpus, train_ox="drop-as-many-non-ox")


def test_describe_reports_the_counts():
    line = select(CORPUS, train_ox="only", dev_ox_to_train=True).describe()
    assert line.startswith("4 training / 2 validation utterances")
    assert "non-O/X dropped from training: 3" in line
    assert "O/X moved from validation to training: 2" in line
    assert "without labels, skipped: 2" in line


def test_other_split_names():
    corpus = [_utt("a", "fold1", "N"), _utt("b", "fold2", "H"), _utt("c", "fold1", "O")]
    selection = select(corpus, train_split="fold1", valid_split="fold2", train_ox="drop")
    assert (_ids(selection.train), _ids(selection.valid)) == (["a"], ["b"])


@pytest.mark.parametrize(
    ("records", "options", "message"),
    [
        (CORPUS, {"train_ox": "some"}, r"--train-ox\) must be one of keep, drop, only, drop-as-many-non-ox"),
        (CORPUS, {"valid_split": "Train"}, r"both 'Train'"),
        (CORPUS, {"train_split": "train"}, r"no utterance in split 'train' \(train_split \(--train-split\)\); "
                                           r"splits present: Development, Test1, Test3, Train"),
        (CORPUS, {"valid_split": "Test3"}, r"split 'Test3' \(valid_split \(--valid-split\)\) has all three"),
        # Training split without O/X: --train-ox only empties training ...
        ([u for u in CORPUS if u.id not in ("t3", "t4")], {"train_ox": "only"},
         r"--train-ox only \(train_ox\) left no training utterances: none of the 3 labelled 'Train' utterances is O/X"),
        # ... and a training split of O/X only is emptied by --train-ox drop.
        ([u for u in CORPUS if u.id not in ("t1", "t2", "t6")], {"train_ox": "drop"},
         r"--train-ox drop \(train_ox\) left no training utterances: none of the 2 .* is non-O/X"),
        # A validation split of O/X only is emptied by --dev-ox-to-train.
        ([u for u in CORPUS if u.id not in ("d1", "d4")], {"dev_ox_to_train": True},
         r"--dev-ox-to-train \(dev_ox_to_train\) moved all 2 labelled 'Development' utterances"),
        # A corpus without class codes: the O/X options would silently do nothing.
        ([_utt("a", "Train", None), _utt("b", "Development", None)], {"dev_ox_to_train": True},
         r"--dev-ox-to-train need\(s\) EmoClass codes"),
    ],
)
def test_errors_name_the_flag(records, options, message):
    with pytest.raises(SertoolError, match=message):
        select(records, **options)


def test_train_ox_only_with_dev_ox_is_fine_without_train_ox():
    corpus = [u for u in CORPUS if u.id not in ("t3", "t4")]
    selection = select(corpus, train_ox="only", dev_ox_to_train=True)
    assert (_ids(selection.train), _ids(selection.valid)) == (["d2", "d3"], ["d1", "d4"])


def test_keep_without_class_codes_is_allowed():
    corpus = [_utt("a", "Train", None), _utt("b", "Development", None)]
    selection = select(corpus)
    assert (_ids(selection.train), _ids(selection.valid)) == (["a"], ["b"])


def test_held_out_leaves_out_the_training_ids_in_order():
    kept = held_out(CORPUS, frozenset({"d2", "d3", "t1"}))
    assert _ids(kept.utterances) == [u.id for u in CORPUS if u.id not in ("d2", "d3", "t1")]
    assert (kept.excluded, kept.known) == (3, True)
    unknown = held_out(CORPUS, None)
    assert (_ids(unknown.utterances), unknown.excluded, unknown.known) == (_ids(CORPUS), 0, False)


def _manifest(folder: Path, splits: dict[str, list[tuple[float, float, float] | None]]) -> Path:
    """A manifest corpus: per split, one tone per entry, labelled with the entry (None: unlabelled)."""
    from tests.corpus_files import write_tone

    rows = ["id,path,split,arousal,valence,dominance"]
    for split, entries in splits.items():
        for index, labels in enumerate(entries):
            name = f"{split}-{index}.wav"
            write_tone(folder / name, duration_s=0.6, frequency_hz=180 + 25 * index)
            rows.append(f"{name},{name},{split}," + (",".join(map(str, labels)) if labels else ",,"))
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


VARIED = [(2.0, 3.0, 4.0), (5.0, 4.0, 3.0), (3.5, 6.0, 2.5), (4.5, 2.0, 5.5)]


@case("training", "`train` or `baseline` on a corpus whose Train split has 1 labelled clip, 0 (all unlabelled), or 2 "
      "with identical labels, or whose Development split has 1 clip",
      "one line naming the split, its flag and that it needs 2 labelled clips whose labels differ, before any work "
      "(was: a ValueError traceback from the ridge fit, or a run validated on one clip)")
@pytest.mark.parametrize("command", ["train", "baseline"])
@pytest.mark.parametrize(("splits", "message"), [
    ({"Train": VARIED[:1], "Development": VARIED[1:]},
     "--train-split Train: 1 labelled clip; it needs at least 2 labelled clips whose labels differ"),
    ({"Train": [None, None], "Development": VARIED[1:]},
     "none of the 2 utterances of split 'Train' (train_split (--train-split)) has all three A/V/D labels; choose a "
     "labelled split (it needs at least 2 labelled clips)"),
    ({"Train": [(3.0, 3.0, 3.0)] * 2, "Development": VARIED[1:]},
     "--train-split Train: 2 labelled clips, all with the A/V/D labels 3/3/3; it needs at least 2 labelled clips "
     "whose labels differ"),
    ({"Train": VARIED, "Development": VARIED[:1]},
     "--valid-split Development: 1 labelled clip; it needs at least 2 labelled clips whose labels differ (a CCC over "
     "one clip, or over identical labels, is undefined"),
])
def test_too_few_labelled_clips_to_train_or_validate_are_refused_before_any_work(tmp_path, command, splits, message):
    from tests.test_reliability import one_line_error, run

    manifest = _manifest(tmp_path / "corpus", splits)
    out = tmp_path / "out"
    flags = ["--backbone", "fbank", "--epochs", "1", "--num-workers", "0"] if command == "train" else []
    line = one_line_error(run(command, "--corpus", manifest, "--out", out, *flags))
    assert message in line
    assert not [path.name for path in out.glob("*") if path.suffix in (".pt", ".csv")]


def test_two_labelled_clips_whose_labels_differ_are_enough():
    train = [dataclasses.replace(_utt(name, "Train", "N"), arousal=value) for name, value in (("a", 2.0), ("b", 6.0))]
    valid = [dataclasses.replace(_utt(name, "Development", "H"), valence=value) for name, value in (("c", 3.0), ("d", 5.0))]
    selection = select(train + valid)
    require_enough_labels(selection)  # two clips on each side, their labels differing: enough
    assert (len(selection.train), len(selection.valid)) == (2, 2)
