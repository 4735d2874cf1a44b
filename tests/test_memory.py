"""Nothing a training run holds grows by a Python object per utterance: the records are packed in numpy
columns (``PackedUtterances``), and a loader worker's collector leaves what it inherited alone."""
from __future__ import annotations

import dataclasses
import gc
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sertool.core.interrupts import quiet_worker
from sertool.data.dataset import UtteranceDataset
from sertool.data.packed import PACKED_FIELDS, PackedUtterances
from sertool.data.records import Utterance

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # any text UTF-8 can hold
MAYBE_TEXT = st.none() | TEXT
NUMBER = st.floats(allow_nan=False, allow_infinity=False, width=64)
FILE_NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"), min_size=1, max_size=8)


@st.composite
def utterances(draw) -> Utterance:
    folder = draw(st.sampled_from(["/corpus/Audios", "/other", "relative/dir", ""]))
    name = draw(FILE_NAME | st.just("raw-\udcff.wav"))  # a file name that is not UTF-8, as os.fsdecode gives it
    span = draw(st.none() | st.tuples(NUMBER, NUMBER))
    return Utterance(id=draw(st.just(name) | TEXT), audio_path=Path(folder) / name if folder else Path(name),
                     split=draw(st.sampled_from(["Train", "Development", "Test3"])), duration_s=draw(NUMBER),
                     arousal=draw(st.none() | NUMBER), valence=draw(st.none() | NUMBER),
                     dominance=draw(st.none() | NUMBER), emo_class=draw(st.none() | st.sampled_from("NHAO")),
                     speaker=draw(MAYBE_TEXT), gender=draw(st.sampled_from([None, "Male", "Female"])),
                     transcript=draw(MAYBE_TEXT), span_s=span)


@given(st.lists(utterances(), max_size=12))
def test_packed_records_read_back_as_the_records_they_were_packed_from(records):
    packed = PackedUtterances(records)
    assert len(packed) == len(records)
    assert list(packed) == records
    assert [packed[index] for index in range(-len(records), 0)] == records
    assert packed[1:-1] == records[1:-1]
    assert list(PackedUtterances(packed)) == records  # packing packed records shares their columns
    np.testing.assert_array_equal(packed.durations_s(), [utt.duration_s for utt in records])
    with pytest.raises(IndexError):
        packed[len(records)]


def test_every_field_of_an_utterance_is_packed():
    assert sorted(PACKED_FIELDS) == sorted(field.name for field in dataclasses.fields(Utterance))


def _records(count: int) -> list[Utterance]:
    """MSP-Podcast-like records: a file each in one folder, a transcript, labels, a class and a speaker."""
    return [Utterance(id=f"MSP-PODCAST_{index:04d}_0001.wav",
                      audio_path=Path(f"/data/MSP-Podcast/Audios/MSP-PODCAST_{index:04d}_0001.wav"), split="Train",
                      duration_s=2.75 + index % 9, arousal=4.2, valence=3.8, dominance=None,
                      emo_class="NHASC"[index % 5], speaker=str(index % 20), gender=("Male", "Female", None)[index % 3],
                      transcript=f"and this is what number {index} said about it") for index in range(count)]


def _held(root: object) -> list[object]:
    """Every object ``root`` holds, directly or not, short of classes, modules and functions (what any instance
    of a class shares); an array's buffer too."""
    shared = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen, stack, held = {id(root)}, [root], []
    while stack:
        item = stack.pop()
        held.append(item)
        base = [item.base] if isinstance(item, np.ndarray) and item.base is not None else []
        for referent in [*gc.get_referents(item), *base]:
            if id(referent) not in seen and not isinstance(referent, shared):
                seen.add(id(referent))
                stack.append(referent)
    return held


def _bytes_per_utterance(small: object, large: object, more: int) -> float:
    """What ``large`` holds beyond ``small``, per utterance of the ``more`` it has."""
    return (sum(map(sys.getsizeof, _held(large))) - sum(map(sys.getsizeof, _held(small)))) / more


def test_the_training_dataset_holds_no_python_object_per_utterance():
    small, large = (UtteranceDataset(_records(count), to_unit=float, speakers={str(s): s for s in range(20)})
                    for count in (100, 1000))
    assert isinstance(large.utterances, PackedUtterances)
    # The same objects whatever the number of utterances: a handful of arrays per field, not a record each.
    assert len(_held(large)) == len(_held(small)) < 300
    # Bytes: the texts and numbers themselves, about 180 here; the same records as Python objects, near 600.
    assert _bytes_per_utterance(small, large, 900) < 250 < 500 < _bytes_per_utterance(_records(100), _records(1000), 900)
    assert list(large.utterances) == _records(1000)


class _FrozenCount(torch.utils.data.Dataset):
    """Each item: how many objects the worker's garbage collector leaves alone (gc.freeze)."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        return gc.get_freeze_count()


def test_a_loader_worker_never_collects_what_it_inherited():
    inherited = len(gc.get_objects())
    loader = torch.utils.data.DataLoader(_FrozenCount(), num_workers=1, worker_init_fn=quiet_worker,
                                         multiprocessing_context="fork")
    frozen = int(next(iter(loader)))
    # Every object the main process had when the worker forked (its own few allocations since may be frozen too).
    assert frozen >= 0.9 * inherited
    assert gc.get_freeze_count() == 0  # and this process's own collector still examines everything


def test_a_class_code_is_one_string_however_many_rows_carry_it():
    """A training run keeps every row's class code (its sampler's): copies per row would pin the memory the corpus
    read freed around them."""
    from sertool.data.fields import parse_class

    codes = [parse_class(text) for text in ("n", "N", " n ", "neutral", "h", "happiness")]
    assert codes == ["N", "N", "N", "N", "H", "H"]
    assert len({id(code) for code in codes}) == 2
