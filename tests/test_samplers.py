"""Samplers: epoch strategies, duration batching, DDP sharding and exact resume, on fake MSP-like records."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sertool.core.errors import SertoolError
from sertool.data.records import Utterance
from sertool.training.samplers import (
    EpochBatchSampler,
    _class_groups,
    bucket_edges,
    class_counts,
    duration_batches,
    epoch_strategy,
    fixed_batches,
    padding_efficiency,
    shard_batches,
    undersample,
    weighted,
)

# An MSP-Podcast-like mix: neutral dominates, O/X are about a fifth, durations 2.75-11 s.
CLASS_SHARES = {"N": 0.38, "H": 0.14, "S": 0.08, "A": 0.07, "C": 0.04, "U": 0.04, "D": 0.03, "F": 0.03,
                "O": 0.12, "X": 0.07}
NUM_ITEMS = 3000
MAX_BATCH_S = 96.0


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str | None], np.ndarray]:
    rng = np.random.default_rng(1234)
    codes = rng.choice(list(CLASS_SHARES), size=NUM_ITEMS, p=list(CLASS_SHARES.values())).tolist()
    durations_s = rng.uniform(2.75, 11.0, size=NUM_ITEMS)
    return codes, durations_s


def _items(batches) -> list[int]:
    return [index for batch in batches for index in batch]


def _efficiency(batches, durations_s) -> float:
    """Reference: real seconds over padded seconds, written out independently of the module."""
    real = padded = 0.0
    for batch in batches:
        lengths = [durations_s[i] for i in batch]
        real += sum(lengths)
        padded += len(lengths) * max(lengths)
    return real / padded


# --- epoch strategies ---------------------------------------------------------------------------------

def test_undersample_is_balanced_fresh_and_reproducible(corpus):
    codes, _ = corpus
    smallest = min(Counter(codes).values())
    epoch0 = undersample(codes, epoch=0, seed=7)
    counts = Counter(codes[i] for i in epoch0)
    assert set(counts) == set(CLASS_SHARES)  # O and X are classes of their own
    assert set(counts.values()) == {smallest}
    assert len(set(epoch0.tolist())) == len(epoch0) == smallest * len(CLASS_SHARES)
    # Same (seed, epoch): same subset; another epoch or seed: another subset of the large classes.
    assert np.array_equal(epoch0, undersample(codes, epoch=0, seed=7))
    epoch1 = undersample(codes, epoch=1, seed=7)
    assert not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(epoch0, undersample(codes, epoch=0, seed=8))
    neutral = lambda indices: {i for i in indices.tolist() if codes[i] == "N"}  # noqa: E731
    assert len(neutral(epoch0) & neutral(epoch1)) < smallest  # a fresh draw, not a reshuffle


def test_undersample_none_codes_form_their_own_class():
    codes = ["N"] * 10 + [None] * 4 + ["H"] * 6
    chosen = undersample(codes, epoch=0, seed=0)
    assert Counter(codes[i] for i in chosen) == {"N": 4, None: 4, "H": 4}
    assert class_counts(codes) == {"H": 6, "N": 10, None: 4}


@pytest.mark.parametrize("seed", range(6))
def test_class_groups_are_each_codes_ascending_indices(seed):
    """Reference: a dict of lists filled item by item, codes sorted with None last."""
    rng = np.random.default_rng(seed)
    codes = [None if code == "-" else code
             for code in rng.choice(list("NHSAOX-") + ["", "Z9"], size=int(rng.integers(0, 3000))).tolist()]
    expected: dict = {}
    for index, code in enumerate(codes):
        expected.setdefault(code, []).append(index)
    groups = _class_groups(codes)
    assert list(groups) == sorted(expected, key=lambda code: (code is None, code or ""))
    for code, indices in groups.items():
        assert indices.dtype == np.int64 and indices.tolist() == expected[code]


def test_undersample_cap_per_class(corpus):
    codes, _ = corpus
    cap = 250
    counts = Counter(codes[i] for i in undersample(codes, epoch=3, seed=0, max_per_class=cap))
    assert counts == {code: min(count, cap) for code, count in Counter(codes).items()}
    assert len(set(counts.values())) > 1  # classes below the cap keep everything: not equal
    with pytest.raises(SertoolError, match="max_per_class"):
        undersample(codes, epoch=0, seed=0, max_per_class=0)


def test_ox_outside_the_balance_are_all_in_every_epoch(corpus):
    codes, _ = corpus
    counts = Counter(codes)
    smallest_balanced = min(count for code, count in counts.items() if code not in "OX")
    for epoch in range(3):
        drawn = Counter(codes[i] for i in undersample(codes, epoch=epoch, seed=2, whole_classes=frozenset("OX")))
        assert drawn == {code: counts[code] if code in "OX" else smallest_balanced for code in counts}
    balanced = Counter(codes[i] for i in undersample(codes, epoch=0, seed=2))
    assert set(balanced.values()) == {min(counts.values())}
    assert undersample(["O", "X", "O"], epoch=0, seed=0, whole_classes=frozenset("OX")).tolist() == [0, 1, 2]
    # A small O class no longer sets the size the others are cut to.
    small_o = ["N"] * 5 + ["H"] * 4 + ["O"] * 2
    assert Counter(small_o[i] for i in undersample(small_o, epoch=0, seed=0)) == {"N": 2, "H": 2, "O": 2}
    outside = undersample(small_o, epoch=0, seed=0, whole_classes=frozenset("OX"))
    assert Counter(small_o[i] for i in outside) == {"N": 4, "H": 4, "O": 2}
    with pytest.raises(SertoolError, match="--ox-outside-balance.*not 'whole'"):
        epoch_strategy("whole", whole_classes=frozenset("OX"))


def test_ox_as_one_class_hold_as_many_as_each_emotion(corpus):
    codes, _ = corpus
    counts = Counter(codes)
    union = counts["O"] + counts["X"]
    per_class = min(*(count for code, count in counts.items() if code not in "OX"), union)
    for epoch in range(3):
        drawn = Counter(codes[i] for i in undersample(codes, epoch=epoch, seed=2, one_class=frozenset("OX")))
        assert drawn["O"] + drawn["X"] == per_class  # O∪X is one class of the same size as each emotion
        assert drawn["O"] > 0 and drawn["X"] > 0  # drawn from both
        assert {drawn[code] for code in counts if code not in "OX"} == {per_class}
    # A small O∪X sets the size like one class; X alone would have set a smaller one as a class of its own.
    small = ["N"] * 6 + ["H"] * 5 + ["O"] * 2 + ["X"] * 1
    assert Counter(small[i] for i in undersample(small, epoch=0, seed=0)) == {"N": 1, "H": 1, "O": 1, "X": 1}
    one = Counter(small[i] for i in undersample(small, epoch=0, seed=0, one_class=frozenset("OX")))
    assert one == {"N": 3, "H": 3, "O": 2, "X": 1}
    with pytest.raises(SertoolError, match="one-class.*not 'weighted'"):
        epoch_strategy("weighted", one_class=frozenset("OX"))
    with pytest.raises(SertoolError, match="both kept whole and balanced as one"):
        undersample(small, epoch=0, seed=0, whole_classes=frozenset("OX"), one_class=frozenset("OX"))


def test_ox_balance_choice_and_its_older_key(tmp_path):
    from sertool.core.config import Config

    assert Config().train.ox_balance_mode() == "classes"  # today's behaviour stays the default
    older = tmp_path / "older.yaml"
    older.write_text("train:\n  ox_outside_balance: true\n")
    config = Config.from_yaml(older)  # a config written before --ox-balance still loads
    assert config.train.ox_outside_balance and config.train.ox_balance_mode() == "whole"
    config.train.ox_balance = "whole"
    assert config.train.ox_balance_mode() == "whole"  # both given, same meaning
    config.train.ox_balance = "one-class"
    with pytest.raises(SertoolError, match="give only --ox-balance"):
        config.train.ox_balance_mode()
    with pytest.raises(SertoolError, match="give only --ox-balance"):
        config.check()  # train() checks its config before it reads any data
    newer = tmp_path / "newer.yaml"
    newer.write_text("train:\n  ox_balance: one-class\n")
    assert Config.from_yaml(newer).train.ox_balance_mode() == "one-class"
    newer.write_text("train:\n  ox_balance: both\n")
    with pytest.raises(SertoolError, match="not one of classes, whole, one-class"):
        Config.from_yaml(newer)


def test_sampler_saves_ox_one_class_setting(corpus):
    codes, durations_s = corpus
    plain = EpochBatchSampler(codes, durations_s, max_batch_s=MAX_BATCH_S, seed=3)
    one = EpochBatchSampler(codes, durations_s, max_batch_s=MAX_BATCH_S, seed=3, one_class=frozenset("OX"))
    assert one.settings["one_class"] == ["O", "X"]
    with pytest.raises(SertoolError, match="one_class"):
        one.load_state_dict(plain.state_dict())


def test_weighted_gives_every_class_the_same_mass(corpus):
    codes, _ = corpus
    draws = np.concatenate([weighted(codes, epoch=epoch, seed=0) for epoch in range(10)])
    assert len(draws) == 10 * NUM_ITEMS
    shares = {code: count / len(draws) for code, count in Counter(codes[i] for i in draws).items()}
    uniform = 1 / len(CLASS_SHARES)
    assert max(abs(share - uniform) for share in shares.values()) < 0.1 * uniform
    assert Counter(codes)["N"] / NUM_ITEMS > 3 * uniform  # the input really was imbalanced
    assert len(weighted(codes, epoch=0, seed=0, num_samples=500)) == 500


def test_strategy_options_are_checked():
    with pytest.raises(SertoolError, match="unknown sampling strategy 'balanced'"):
        epoch_strategy("balanced")
    with pytest.raises(SertoolError, match="--max-per-class.*not 'whole'"):
        epoch_strategy("whole", max_per_class=10)
    with pytest.raises(SertoolError, match="--num-samples.*not 'undersample'"):
        epoch_strategy("undersample", num_samples=10)
    assert epoch_strategy("whole")(["N", "H"], epoch=5, seed=1).tolist() == [0, 1]


# --- buckets and batches ------------------------------------------------------------------------------

def test_bucket_edges_exact_and_equal_mass(corpus):
    assert bucket_edges(list(range(1, 11)), num_buckets=2).tolist() == [8.0]  # {1..7}: 28 s, {8,9,10}: 27 s
    assert bucket_edges([5.0] * 10, num_buckets=4).tolist() == [5.0]  # equal durations collapse
    assert bucket_edges([3.0, 4.0], num_buckets=1).size == 0
    _, durations_s = corpus
    edges = bucket_edges(durations_s, num_buckets=8)
    assert len(edges) == 7 and np.all(np.diff(edges) > 0)
    bucket_of = np.searchsorted(edges, durations_s, side="right")
    masses = np.array([durations_s[bucket_of == b].sum() for b in range(8)])
    assert np.allclose(masses, durations_s.sum() / 8, rtol=0.02)
    assert np.diff(edges)[-1] < np.diff(edges)[0]  # long buckets are narrower


def test_duration_batches_keep_every_item_once_within_the_bound(corpus):
    codes, durations_s = corpus
    sampler = EpochBatchSampler(codes, durations_s, sampling="whole", max_batch_s=MAX_BATCH_S)
    batches = sampler.plan()
    assert sorted(_items(batches)) == list(range(NUM_ITEMS))
    padded_s = [len(batch) * durations_s[batch].max() for batch in batches]
    assert max(padded_s) <= MAX_BATCH_S
    # Buckets' partial last batches are pooled: one small batch per epoch, not one per bucket.
    assert sum(seconds < MAX_BATCH_S / 2 for seconds in padded_s) <= 1
    assert len({len(batch) for batch in batches}) > 3  # short buckets get more items per batch


def test_item_longer_than_the_bound_is_a_batch_of_its_own():
    durations_s = np.array([3.0, 20.0, 3.0, 25.0, 3.0, 3.0])
    batches = duration_batches(
        np.arange(6), durations_s, max_batch_s=12.0, edges=np.empty(0), rng=np.random.default_rng(0)
    )
    assert sorted(_items(batches)) == list(range(6))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * durations_s[batch].max() <= 12.0
    assert [1] in batches and [3] in batches


@pytest.mark.parametrize("sampling", ["whole", "undersample"])
def test_min_batch_items_wins_over_the_seconds_bound(corpus, sampling):
    codes, durations_s = corpus
    minimum, bound_s = 8, 64.0  # 11 s clips: only 5 fit in 64 s
    sampler = EpochBatchSampler(codes, durations_s, sampling=sampling, max_batch_s=bound_s, min_batch_items=minimum)
    for epoch in range(3):
        batches = sampler.plan(epoch)
        assert sorted(_items(batches)) == sorted(sampler.strategy(codes, epoch=epoch, seed=0).tolist())
        assert min(len(batch) for batch in batches) >= minimum
        over = [batch for batch in batches if len(batch) * durations_s[batch].max() > bound_s]
        assert over  # the lower bound did bind on long clips
        # A batch goes past the seconds bound only to reach the minimum, except the epoch's last batch,
        # which may hold a short remainder (fewer than `minimum` more items).
        beyond_minimum = [batch for batch in over if len(batch) > minimum]
        assert len(beyond_minimum) <= 1 and all(len(batch) < 2 * minimum for batch in beyond_minimum)
    unbounded = EpochBatchSampler(codes, durations_s, sampling=sampling, max_batch_s=bound_s)
    assert min(len(batch) for batch in unbounded.plan(0)) < minimum


def test_min_batch_items_changes_nothing_where_the_seconds_bound_already_allows_it(corpus):
    codes, durations_s = corpus
    # 96 s / 11 s: 8 items fit in any batch, so only the epoch's short last batch changes: it joins another.
    reference = EpochBatchSampler(codes, durations_s, sampling="whole", max_batch_s=MAX_BATCH_S).plan(2)
    bounded = EpochBatchSampler(codes, durations_s, sampling="whole", max_batch_s=MAX_BATCH_S, min_batch_items=8).plan(2)
    short = [batch for batch in reference if len(batch) < 8]
    assert len(short) == 1 and len(bounded) == len(reference) - 1
    unchanged = {tuple(batch) for batch in reference if len(batch) >= 8}
    grown = [batch for batch in bounded if tuple(batch) not in unchanged]
    assert len(grown) == 1 and set(short[0]) < set(grown[0])
    assert tuple(b for b in grown[0] if b not in short[0]) in unchanged


def test_min_batch_items_merges_a_short_last_batch():
    durations_s = np.full(19, 10.0)  # 20 s bound: 2 per batch without the minimum; 6 per batch with it
    batches = duration_batches(np.arange(19), durations_s, max_batch_s=20.0, edges=np.empty(0),
                               rng=np.random.default_rng(0), min_batch_items=6)
    assert sorted(len(batch) for batch in batches) == [6, 6, 7]
    assert sorted(_items(batches)) == list(range(19))


def test_bucketed_batches_pad_far_less_than_random_batches(corpus):
    codes, durations_s = corpus
    bucketed = EpochBatchSampler(codes, durations_s, sampling="whole", max_batch_s=MAX_BATCH_S).plan()
    mean_size = round(NUM_ITEMS / len(bucketed))
    random = fixed_batches(np.arange(NUM_ITEMS), batch_size=mean_size, rng=np.random.default_rng(0))
    assert _efficiency(bucketed, durations_s) >= 0.9
    assert _efficiency(random, durations_s) < 0.8
    assert padding_efficiency(bucketed, durations_s) == pytest.approx(_efficiency(bucketed, durations_s))


def test_fixed_batch_size_mode(corpus):
    codes, durations_s = corpus
    batches = EpochBatchSampler(codes, durations_s, sampling="whole", batch_size=64).plan()
    assert [len(batch) for batch in batches] == [64] * (NUM_ITEMS // 64) + [NUM_ITEMS % 64]
    assert sorted(_items(batches)) == list(range(NUM_ITEMS))


def test_batching_options_are_checked(corpus):
    codes, durations_s = corpus
    with pytest.raises(SertoolError, match="exactly one of max_batch_s"):
        EpochBatchSampler(codes, durations_s, max_batch_s=60.0, batch_size=8)
    with pytest.raises(SertoolError, match="exactly one of max_batch_s"):
        EpochBatchSampler(codes, durations_s)
    with pytest.raises(SertoolError, match="num_buckets"):
        EpochBatchSampler(codes, durations_s, max_batch_s=60.0, num_buckets=0)
    with pytest.raises(SertoolError, match="no training utterances"):
        EpochBatchSampler([], [], batch_size=8)
    with pytest.raises(SertoolError, match="--min-batch-items.*at least 1"):
        EpochBatchSampler(codes, durations_s, max_batch_s=60.0, min_batch_items=0)
    with pytest.raises(SertoolError, match="--min-batch-items.*not to fixed --batch-size"):
        EpochBatchSampler(codes, durations_s, batch_size=4, min_batch_items=8)


def test_from_records_clips_durations_to_the_training_crop():
    records = [
        Utterance(id=f"u{i}", audio_path=Path(f"/c/u{i}.wav"), split="Train", duration_s=duration, emo_class=code)
        for i, (duration, code) in enumerate([(11.0, "N"), (10.0, "H"), (3.0, "N"), (4.0, "H")])
    ]
    # Uncropped, 11 s and 10 s cannot share a 20 s batch; cropped to 5 s, all four fit (4 × 5 = 20).
    assert len(EpochBatchSampler.from_records(records, sampling="whole", max_batch_s=20.0)) > 1
    cropped = EpochBatchSampler.from_records(records, sampling="whole", max_batch_s=20.0, max_duration_s=5.0)
    assert [sorted(batch) for batch in cropped.plan()] == [[0, 1, 2, 3]]


# --- DDP ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("drop_remainder", [True, False])
def test_ranks_share_one_plan_disjointly(corpus, drop_remainder):
    codes, durations_s = corpus
    world_size = 3
    options = dict(sampling="whole", max_batch_s=MAX_BATCH_S, seed=5, drop_remainder=drop_remainder)
    reference = EpochBatchSampler(codes, durations_s, **options)
    # An epoch whose batch count does not divide by world_size: the case the rule is about.
    epoch = next(epoch for epoch in range(10) if len(reference.plan(epoch)) % world_size)
    single = reference.plan(epoch)
    shards = [
        EpochBatchSampler(codes, durations_s, rank=rank, world_size=world_size, **options).plan(epoch)
        for rank in range(world_size)
    ]
    assert len({len(shard) for shard in shards}) == 1
    remainder = len(single) % world_size
    union = Counter(_items(batch for shard in shards for batch in shard))
    if drop_remainder:
        assert union == Counter(_items(single[: len(single) - remainder]))
        assert max(union.values()) == 1  # disjoint
        assert len(union) > NUM_ITEMS - remainder * max(len(b) for b in single)
    else:
        repeated = single[: world_size - remainder]
        assert union == Counter(_items(single)) + Counter(_items(repeated))
        assert set(union) == set(range(NUM_ITEMS))  # nothing lost


def test_shard_rule_and_too_few_batches():
    batches = [[0], [1], [2], [3], [4]]
    assert [shard_batches(batches, rank=r, world_size=2) for r in range(2)] == [[[0], [2]], [[1], [3]]]
    assert [shard_batches(batches, rank=r, world_size=2, drop_remainder=False) for r in range(2)] == [
        [[0], [2], [4]], [[1], [3], [0]]
    ]
    with pytest.raises(ValueError, match="rank 2"):
        shard_batches(batches, rank=2, world_size=2)
    with pytest.raises(SertoolError, match="1 batch\\(es\\) for 2 processes"):
        EpochBatchSampler(["N", "H"], [3.0, 3.0], sampling="whole", batch_size=4, world_size=2).plan()


def test_undersampling_bucketing_and_ddp_together(corpus):
    codes, durations_s = corpus
    smallest = min(Counter(codes).values())
    options = dict(sampling="undersample", max_batch_s=MAX_BATCH_S, seed=11)
    previous: set[int] = set()
    for epoch in range(3):
        single = EpochBatchSampler(codes, durations_s, **options).plan(epoch)
        assert set(Counter(codes[i] for i in _items(single)).values()) == {smallest}
        shards = [EpochBatchSampler(codes, durations_s, rank=r, world_size=2, **options).plan(epoch) for r in range(2)]
        assert len(shards[0]) == len(shards[1])
        kept = single[: len(single) - len(single) % 2]
        assert sorted(_items(shards[0] + shards[1])) == sorted(_items(kept))
        for batch in shards[0] + shards[1]:
            assert len(batch) * durations_s[batch].max() <= MAX_BATCH_S
        assert _efficiency(shards[0] + shards[1], durations_s) >= 0.85  # fewer items per bucket, still low
        assert set(_items(single)) != previous
        previous = set(_items(single))


# --- resume -------------------------------------------------------------------------------------------

def _sampler(corpus, **overrides) -> EpochBatchSampler:
    codes, durations_s = corpus
    options = dict(sampling="undersample", max_batch_s=MAX_BATCH_S, seed=3, rank=1, world_size=2) | overrides
    return EpochBatchSampler(codes, durations_s, **options)


def test_resume_mid_epoch_yields_exactly_the_remaining_batches(corpus):
    original = _sampler(corpus)
    original.set_epoch(4)
    full = original.plan()
    iterator = iter(original)
    seen = [next(iterator) for _ in range(5)]
    assert seen == full[:5]
    state = original.state_dict()
    assert (state["epoch"], state["batches_done"]) == (4, 5)

    resumed = _sampler(corpus)
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # the trainer's usual loop: keeps the restored position
    assert list(resumed) == full[5:]
    assert list(iterator) == full[5:]
    with pytest.raises(RuntimeError, match="set_epoch"):
        list(resumed)  # a finished epoch is not silently repeated or skipped
    resumed.set_epoch(5)
    assert list(resumed) == original.plan(5)


def test_resume_refuses_other_settings(corpus):
    state = _sampler(corpus).state_dict()
    with pytest.raises(SertoolError, match="world_size 2 → 4"):
        _sampler(corpus, world_size=4).load_state_dict(state)
    with pytest.raises(SertoolError, match="seed 3 → 9"):
        _sampler(corpus, seed=9).load_state_dict(state)
    with pytest.raises(SertoolError, match="min_batch_items 1 → 8"):
        _sampler(corpus, min_batch_items=8).load_state_dict(state)
    older = {**state, "settings": {key: value for key, value in state["settings"].items()
                                   if key not in ("min_batch_items", "whole_classes", "one_class")}}
    _sampler(corpus).load_state_dict(older)  # a checkpoint written before those settings existed
    codes, durations_s = corpus
    cropped = EpochBatchSampler(codes, np.minimum(durations_s, 5.0), max_batch_s=MAX_BATCH_S, seed=3, world_size=2)
    with pytest.raises(SertoolError, match="total_duration_s"):
        cropped.load_state_dict(state)  # another training crop: another plan


class _Indices(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return NUM_ITEMS

    def __getitem__(self, index: int) -> int:
        return index


def test_resume_through_a_prefetching_dataloader(corpus):
    sampler = _sampler(corpus, world_size=1, rank=0)
    sampler.set_epoch(1)
    full = sampler.plan()
    loader = DataLoader(_Indices(), batch_sampler=sampler, num_workers=1, prefetch_factor=2)
    consumed = []
    for batch in loader:
        consumed.append(batch.tolist())
        if len(consumed) == 3:
            break
    assert consumed == full[:3]
    assert sampler.batches_done > 3  # the workers fetched ahead of the training step
    state = sampler.state_dict(batches_consumed=len(consumed))
    del loader

    resumed = _sampler(corpus, world_size=1, rank=0)
    resumed.load_state_dict(state)
    rest = [batch.tolist() for batch in DataLoader(_Indices(), batch_sampler=resumed)]
    assert consumed + rest == full
    with pytest.raises(ValueError, match="batches_consumed"):
        resumed.state_dict(batches_consumed=len(full) + 1)
