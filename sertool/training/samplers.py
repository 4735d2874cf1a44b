"""Which utterances a training epoch uses and how they are grouped into batches.

Small pieces, each a pure function of its inputs and ``(seed, epoch)``, composed by ``EpochBatchSampler``:

1. An epoch strategy picks the indices one epoch uses: ``undersample`` (the paper's default: a fresh
   class-balanced subset every epoch), ``whole`` (every item once) or ``weighted`` (inverse class frequency,
   with replacement). ``epoch_strategy`` looks one up by name and binds its options.
2. A batcher groups them: ``duration_batches`` bounds each batch's *padded* seconds (batch size × longest
   item ≤ ``max_batch_s``, at least ``min_batch_items`` items) with items drawn from equal-mass duration
   buckets (``bucket_edges``), or
   ``fixed_batches`` makes random batches of N items (the reference for benchmarks).
3. ``shard_batches`` gives each DDP rank a disjoint share of the same plan, with the same number of batches
   on every rank.

Nothing is stored between epochs: the plan of epoch ``e`` is regenerated from ``(seed, e)``, which is why a
mid-epoch resume is exact while ``state_dict`` holds only the epoch and the number of batches done. Random
numbers come from generators seeded with ``(seed, epoch, stream)``, never from global RNG state.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from sertool.core.errors import SertoolError
from sertool.data.records import Utterance
from sertool.runtime.batching import fill_batches

# Independent random streams of one epoch: changing how batches are formed must not change which items
# an epoch selects, and vice versa.
_SELECTION_STREAM = 0
_BATCHING_STREAM = 1

# Sampler settings added after the first checkpoints were written, with the value those checkpoints used.
_SETTINGS_BEFORE_THEY_WERE_SAVED: dict[str, Any] = {"min_batch_items": 1, "whole_classes": [], "one_class": []}

# A strategy maps (class codes, epoch, seed) to the indices one epoch uses.
EpochStrategy = Callable[..., np.ndarray]


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, stream])


def class_counts(class_codes: Sequence[str | None]) -> dict[str | None, int]:
    """Number of items per class code, codes sorted, ``None`` (no code) last.

    Strategies treat ``None`` as one more group of its own, like O and X; this is what a training log
    should show next to the undersampled size.
    """
    return {code: len(indices) for code, indices in _class_groups(class_codes).items()}


def _class_groups(class_codes: Sequence[str | None]) -> dict[str | None, np.ndarray]:
    """The ascending indices of each code's items, codes sorted, ``None`` last. In numpy, not a loop of
    appends: every epoch asks (84,000 codes an epoch on MSP-Podcast, every epoch planned at start)."""
    order = sorted(dict.fromkeys(class_codes), key=lambda code: (code is None, code or ""))
    if not order:
        return {}
    number = {code: position for position, code in enumerate(order)}
    numbers = np.fromiter(map(number.__getitem__, class_codes), dtype=np.int64, count=len(class_codes))
    by_number = np.argsort(numbers, kind="stable")  # stable: each group's indices stay ascending
    ends = np.cumsum(np.bincount(numbers, minlength=len(order)))
    return dict(zip(order, np.split(by_number, ends[:-1]), strict=True))


def undersample(
    class_codes: Sequence[str | None], *, epoch: int, seed: int, max_per_class: int | None = None,
    whole_classes: frozenset[str] = frozenset(), one_class: frozenset[str] = frozenset(),
) -> np.ndarray:
    """A fresh class-balanced subset: every class cut to the size of the smallest one.

    Each epoch draws a different random subset of the larger classes, reproducible from ``(seed, epoch)``,
    so over many epochs most of the data is seen while every epoch is balanced (and short). Every distinct
    code is a class, O and X included; items without a code (``None``) form one more class. O and X are
    therefore cut like the others: more O/X utterances in the pool (e.g. Development's, moved into
    training) change which ones an epoch draws, not how many.

    Args:
        class_codes: the EmoClass code of each item (index i is item i).
        epoch: epoch number; a new epoch draws a new subset.
        seed: run seed.
        max_per_class: instead of the smallest class's size, keep ``min(count, max_per_class)`` items of
            each class. Classes smaller than the cap keep all their items, so they are then NOT equal: the
            cap limits the majority classes without throwing away most of the data.
        whole_classes: codes kept whole in every epoch, outside the balance (e.g. ``{"O", "X"}``): they
            neither are cut nor set the size the other classes are cut to.
        one_class: codes balanced as ONE class (e.g. ``{"O", "X"}``): their union is cut to the same size
            as every other class, drawn at random from all of them, and sets that size like one class.

    Returns:
        Indices into ``class_codes``, ascending (order carries no meaning: batching shuffles).

    Raises:
        SertoolError: ``max_per_class`` is not positive, or a code is both whole and in ``one_class``.
    """
    if max_per_class is not None and max_per_class < 1:
        raise SertoolError(f"max_per_class must be a positive number of items per class, got {max_per_class}")
    if whole_classes & one_class:
        raise SertoolError(f"classes {', '.join(sorted(whole_classes & one_class))} cannot be both kept whole and "
                           f"balanced as one class (--ox-balance)")
    groups = _class_groups(class_codes)
    if one_class:
        merged = [indices for code, indices in groups.items() if code in one_class]
        groups = {code: indices for code, indices in groups.items() if code not in one_class}
        if merged:  # the key is no code of its own (codes are letters): "O+X"
            groups["+".join(sorted(one_class))] = np.sort(np.concatenate(merged))
    balanced = [indices for code, indices in groups.items() if code not in whole_classes]
    if not balanced:
        return np.arange(len(class_codes), dtype=np.int64)
    size = min(len(indices) for indices in balanced) if max_per_class is None else max_per_class
    rng = _rng(seed, epoch, _SELECTION_STREAM)
    chosen = [indices if code in whole_classes else rng.choice(indices, size=min(len(indices), size), replace=False)
              for code, indices in groups.items()]
    return np.sort(np.concatenate(chosen))


def whole(class_codes: Sequence[str | None], *, epoch: int, seed: int) -> np.ndarray:
    """Every item once per epoch (the imbalanced whole set); ``epoch`` and ``seed`` do not matter here."""
    return np.arange(len(class_codes), dtype=np.int64)


def weighted(
    class_codes: Sequence[str | None], *, epoch: int, seed: int, num_samples: int | None = None
) -> np.ndarray:
    """Items drawn with replacement at inverse class frequency, so every class gets the same expected mass.

    Unlike ``undersample`` no item of a large class is excluded for the epoch, but items of small classes
    repeat. ``None`` codes form one class of their own.

    Args:
        class_codes: the EmoClass code of each item.
        epoch: epoch number; each epoch draws anew.
        seed: run seed.
        num_samples: items per epoch (None: as many as there are items).

    Returns:
        Indices into ``class_codes``, ascending, with repeats.

    Raises:
        SertoolError: ``num_samples`` is not positive.
    """
    if num_samples is not None and num_samples < 1:
        raise SertoolError(f"num_samples must be a positive number of items per epoch, got {num_samples}")
    groups = _class_groups(class_codes)
    if not groups:
        return np.empty(0, dtype=np.int64)
    probabilities = np.empty(len(class_codes))
    for indices in groups.values():
        probabilities[indices] = 1.0 / len(indices)
    probabilities /= probabilities.sum()
    size = len(class_codes) if num_samples is None else num_samples
    drawn = _rng(seed, epoch, _SELECTION_STREAM).choice(len(class_codes), size=size, replace=True, p=probabilities)
    return np.sort(drawn)


STRATEGIES: dict[str, EpochStrategy] = {"undersample": undersample, "whole": whole, "weighted": weighted}


def epoch_strategy(name: str, *, max_per_class: int | None = None, num_samples: int | None = None,
                   whole_classes: frozenset[str] = frozenset(),
                   one_class: frozenset[str] = frozenset()) -> EpochStrategy:
    """The strategy called ``name`` with its options bound: call it as ``strategy(codes, epoch=, seed=)``.

    Raises:
        SertoolError: unknown name, or an option given to a strategy that does not use it (a silently
            ignored option would make the user believe it took effect).
    """
    if name not in STRATEGIES:
        raise SertoolError(f"unknown sampling strategy '{name}' (--sampling); choose one of {', '.join(STRATEGIES)}")
    if max_per_class is not None and name != "undersample":
        raise SertoolError(f"max_per_class (--max-per-class) applies to --sampling undersample only, not '{name}'")
    if num_samples is not None and name != "weighted":
        raise SertoolError(f"num_samples (--num-samples) applies to --sampling weighted only, not '{name}'")
    if whole_classes and name != "undersample":
        raise SertoolError(f"classes outside the balance (--ox-balance whole, --ox-outside-balance) apply to "
                           f"--sampling undersample only, not '{name}'")
    if one_class and name != "undersample":
        raise SertoolError(f"classes balanced as one (--ox-balance one-class) apply to --sampling undersample only, "
                           f"not '{name}'")
    options: dict[str, dict[str, Any]] = {
        "undersample": {"max_per_class": max_per_class, "whole_classes": frozenset(whole_classes),
                        "one_class": frozenset(one_class)},
        "weighted": {"num_samples": num_samples},
    }
    return functools.partial(STRATEGIES[name], **options.get(name, {}))


def bucket_edges(durations_s: Sequence[float] | np.ndarray, *, num_buckets: int) -> np.ndarray:
    """Duration bucket boundaries such that each bucket holds about the same total seconds.

    Equal *mass* rather than equal counts: long utterances cost more, so buckets of long items are
    narrower. Each boundary ends a bucket where the cumulative sorted seconds come nearest to k/num_buckets
    of the total. Item d belongs to bucket ``np.searchsorted(edges, d, side="right")``.

    Example: ``bucket_edges([1, 2, ..., 10], num_buckets=2)`` is ``[8.0]``: buckets {1..7} (28 s) and
    {8, 9, 10} (27 s).

    Args:
        durations_s: item durations in seconds.
        num_buckets: wanted number of buckets; fewer come back where many durations are equal.

    Returns:
        The ascending inner edges (at most ``num_buckets - 1``), each the shortest duration of its bucket.

    Raises:
        SertoolError: ``num_buckets`` is below 1.
    """
    if num_buckets < 1:
        raise SertoolError(f"num_buckets (--num-buckets) must be at least 1, got {num_buckets}")
    durations = np.sort(np.asarray(durations_s, dtype=np.float64))
    if num_buckets == 1 or durations.size < 2:
        return np.empty(0)
    mass = np.cumsum(durations)
    edges = []
    for k in range(1, num_buckets):
        target = mass[-1] * k / num_buckets
        first = int(np.searchsorted(mass, target))  # the item whose prefix first reaches the target
        before = mass[first - 1] if first else 0.0
        # End the bucket after that item or just before it, whichever prefix is nearer the target.
        if first + 1 < durations.size and mass[first] - target < target - before:
            first += 1
        edges.append(durations[first])
    return np.unique(edges)


def duration_batches(
    indices: np.ndarray,
    durations_s: np.ndarray,
    *,
    max_batch_s: float,
    edges: np.ndarray,
    rng: np.random.Generator,
    min_batch_items: int = 1,
) -> list[list[int]]:
    """Batches whose padded seconds (size × longest item) stay within ``max_batch_s``.

    A batch is padded to its longest item, so size × longest is exactly the audio the model processes:
    the bound caps memory, not just an average. Items are grouped by duration bucket so that a batch holds
    similar lengths (little padding), shuffled within their bucket, and batches are shuffled across
    buckets. The items of each bucket's last, partial batch are pooled and re-batched in bucket order, so an
    epoch has one partial batch rather than one per bucket. A single item longer than ``max_batch_s``
    forms a batch of its own (it cannot be split).

    ``min_batch_items`` is a lower bound that wins over ``max_batch_s``: a batch closes only once it holds
    that many items, even if it then exceeds the seconds bound (long clips), and an epoch's last batch, if
    it would be smaller, joins the batch before it. Only an epoch with fewer items than the bound has a
    smaller batch. The CCC loss is a statistic of the batch: with too few items it is mostly noise.

    Args:
        indices: the items of the epoch (repeats allowed).
        durations_s: duration of every item of the dataset, indexed by item.
        max_batch_s: bound on padded seconds per batch.
        edges: bucket boundaries from ``bucket_edges``.
        rng: the epoch's batching generator.
        min_batch_items: fewest items per batch (1: no lower bound).

    Returns:
        Lists of item indices.
    """
    indices = np.asarray(indices, dtype=np.int64)
    bucket_of = np.searchsorted(edges, durations_s[indices], side="right")
    batches: list[list[int]] = []
    leftovers: list[int] = []
    for bucket in np.unique(bucket_of):
        filled = fill_batches(rng.permutation(indices[bucket_of == bucket]), durations_s, max_batch_s, min_batch_items)
        batches.extend(filled[:-1])
        leftovers.extend(filled[-1])
    # Each bucket's last batch is usually partial. Re-batching those items, gathered in bucket order (so
    # neighbours have similar lengths and pad little), leaves one small batch per epoch instead of one per
    # bucket: tiny batches make a noisy CCC loss, which is a batch statistic.
    last = fill_batches(np.asarray(leftovers, dtype=np.int64), durations_s, max_batch_s, min_batch_items)
    if len(last[-1]) < min_batch_items and len(batches) + len(last) > 1:
        tail = last.pop()
        # Into its neighbour in bucket order, or else the batch of the most similar lengths: least padding.
        tail_s = durations_s[tail].max()
        host = last[-1] if last else min(batches, key=lambda batch: abs(durations_s[batch].max() - tail_s))
        host.extend(tail)
    batches.extend(last)
    return [batches[position] for position in rng.permutation(len(batches))]


def fixed_batches(indices: np.ndarray, *, batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Random batches of ``batch_size`` items, the last one possibly smaller; no length awareness."""
    shuffled = rng.permutation(np.asarray(indices, dtype=np.int64)).tolist()
    return [shuffled[start:start + batch_size] for start in range(0, len(shuffled), batch_size)]


def padding_efficiency(batches: Sequence[Sequence[int]], durations_s: Sequence[float] | np.ndarray) -> float:
    """Real seconds / padded seconds over all batches (1.0: no padding at all); worth logging per epoch."""
    durations = np.asarray(durations_s, dtype=np.float64)
    real_s = sum(float(durations[list(batch)].sum()) for batch in batches)
    padded_s = sum(len(batch) * float(durations[list(batch)].max()) for batch in batches)
    return real_s / padded_s if padded_s else 1.0


def shard_batches(
    batches: Sequence[list[int]], *, rank: int, world_size: int, drop_remainder: bool = True
) -> list[list[int]]:
    """This rank's share of an epoch plan that every rank computed identically.

    Rank r takes batches r, r + world_size, r + 2·world_size, ..., so step s of every rank comes from the
    same stretch of the plan. Every rank must run the same number of steps (a rank with one more batch would
    wait forever in the gradient all-reduce), so when the count is not a multiple of ``world_size``:

    - ``drop_remainder=True`` drops the plan's last ``len % world_size`` batches. The plan is reshuffled
      every epoch, so different items are dropped each time, and at most ``world_size - 1`` batches go.
    - ``drop_remainder=False`` repeats batches from the start of the plan to fill the last round, so every
      item is seen at least once and a few twice.

    Raises:
        ValueError: ``rank`` is not in ``[0, world_size)``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    remainder = len(batches) % world_size
    batches = list(batches)
    if remainder and drop_remainder:
        batches = batches[: len(batches) - remainder]
    elif remainder:
        batches += [batches[position % len(batches)] for position in range(world_size - remainder)]
    return batches[rank::world_size]


class EpochBatchSampler(Sampler[list[int]]):
    """Batch sampler for training: epoch strategy → batches → this rank's shard, resumable mid-epoch.

    Use it as ``DataLoader(dataset, batch_sampler=sampler)`` and call ``set_epoch(epoch)`` before each epoch
    (as with ``DistributedSampler``). Indices refer to positions in the record list it was built from.

    Features and their trade-offs:

    - ``sampling="undersample"`` (the paper's default): a fresh class-balanced subset each epoch; shorter
      epochs, better CCC in the paper. ``max_per_class`` caps classes instead of equalising them.
      ``"whole"``: every item once (imbalanced). ``"weighted"``: inverse class frequency with replacement,
      ``num_samples`` items per epoch.
    - ``max_batch_s``: batches bounded by padded seconds from ``num_buckets`` duration buckets; memory is
      bounded exactly and padding stays low. ``batch_size``: random batches of N items instead (padding is
      then high on a mix of 3 to 11 s clips). Exactly one of the two. ``min_batch_items`` puts a lower
      bound on the items of a ``max_batch_s`` batch that wins over the seconds bound (the CCC loss needs
      enough items to mean something).
    - DDP: ``rank`` / ``world_size`` from the trainer; every rank computes the same plan from the same seed
      and takes a disjoint share, with the same number of batches (see ``shard_batches`` for
      ``drop_remainder``). No communication.
    - Resume: ``state_dict()`` / ``load_state_dict()`` hold the epoch and the batches done; the plan itself
      is regenerated from ``(seed, epoch)``, so the sampler settings must match the checkpoint's.
    """

    def __init__(
        self,
        class_codes: Sequence[str | None],
        durations_s: Sequence[float],
        *,
        sampling: str = "undersample",
        max_per_class: int | None = None,
        num_samples: int | None = None,
        whole_classes: frozenset[str] = frozenset(),
        one_class: frozenset[str] = frozenset(),
        max_batch_s: float | None = None,
        batch_size: int | None = None,
        min_batch_items: int = 1,
        num_buckets: int = 20,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_remainder: bool = True,
    ) -> None:
        """Build the sampler.

        Args:
            class_codes: EmoClass code (or None) of each item.
            durations_s: duration of each item in seconds, as the loader will deliver it (clip it first
                where training crops; ``from_records`` does).
            sampling: ``"undersample"``, ``"whole"`` or ``"weighted"``.
            max_per_class: undersampling cap per class (None: the smallest class's size).
            num_samples: items per epoch of ``"weighted"`` (None: the number of items).
            whole_classes: ``"undersample"``: class codes kept whole in every epoch, outside the balance.
            one_class: ``"undersample"``: class codes balanced together as one class.
            max_batch_s: bound on batch size × longest item, in seconds.
            batch_size: fixed number of items per batch instead of ``max_batch_s``.
            min_batch_items: ``max_batch_s`` batching: fewest items per batch, even where that exceeds
                ``max_batch_s`` (see ``duration_batches``); 1: no lower bound.
            num_buckets: duration buckets of ``max_batch_s`` batching.
            seed: run seed; the same on every rank.
            rank: this process's rank.
            world_size: number of processes.
            drop_remainder: what to do with batches that do not divide by ``world_size``.

        Raises:
            SertoolError: no items, not exactly one of ``max_batch_s`` / ``batch_size``, or a bad option.
            ValueError: lengths differ or ``rank`` is out of range (the trainer's mistake, not the user's).
        """
        if len(class_codes) != len(durations_s):
            raise ValueError(f"{len(class_codes)} class codes but {len(durations_s)} durations")
        if not class_codes:
            raise SertoolError("no training utterances to sample from: check the training split and --train-ox")
        if (max_batch_s is None) == (batch_size is None):
            raise SertoolError("set exactly one of max_batch_s (--max-batch-s) and batch_size (--batch-size)")
        if max_batch_s is not None and max_batch_s <= 0:
            raise SertoolError(f"max_batch_s (--max-batch-s) must be positive seconds, got {max_batch_s}")
        if batch_size is not None and batch_size < 1:
            raise SertoolError(f"batch_size (--batch-size) must be at least 1, got {batch_size}")
        if min_batch_items < 1:
            raise SertoolError(f"min_batch_items (--min-batch-items) must be at least 1, got {min_batch_items}")
        if min_batch_items > 1 and batch_size is not None:
            raise SertoolError("min_batch_items (--min-batch-items) applies to max_batch_s (--max-batch-s) batching, "
                               "not to fixed --batch-size batches")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.class_codes = list(class_codes)
        self.durations_s = np.asarray(durations_s, dtype=np.float64)
        self.strategy = epoch_strategy(sampling, max_per_class=max_per_class, num_samples=num_samples,
                                       whole_classes=whole_classes, one_class=one_class)
        self.max_batch_s = max_batch_s
        self.batch_size = batch_size
        self.min_batch_items = min_batch_items
        # Edges come from every item, not from an epoch's subset, so buckets stay the same across epochs.
        self.edges = bucket_edges(self.durations_s, num_buckets=num_buckets) if max_batch_s is not None else np.empty(0)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_remainder = drop_remainder
        # What must be equal for a resumed run to regenerate the same plan (rank is not: every rank loads
        # the same state, and all ranks are at the same step).
        self.settings: dict[str, Any] = {
            "sampling": sampling, "max_per_class": max_per_class, "num_samples": num_samples,
            "whole_classes": sorted(whole_classes), "one_class": sorted(one_class),
            "max_batch_s": max_batch_s, "batch_size": batch_size, "min_batch_items": min_batch_items,
            "num_buckets": num_buckets, "seed": seed,
            "world_size": world_size, "drop_remainder": drop_remainder, "num_items": len(self.class_codes),
            # Catches another corpus or another training crop with the same number of items.
            "total_duration_s": round(float(self.durations_s.sum()), 3),
        }
        self.epoch = 0
        self._batches_done = 0
        self._restored = False  # set by load_state_dict until the restored epoch starts
        self._cached_plan: tuple[int, list[list[int]]] | None = None

    @classmethod
    def from_records(
        cls, records: Sequence[Utterance], *, max_duration_s: float | None = None, **options: Any
    ) -> "EpochBatchSampler":
        """Build from utterances; durations are clipped to ``max_duration_s`` where training crops clips.

        ``options`` are the keyword arguments of ``EpochBatchSampler``.
        """
        durations_s = [
            record.duration_s if max_duration_s is None else min(record.duration_s, max_duration_s)
            for record in records
        ]
        return cls([record.emo_class for record in records], durations_s, **options)

    def global_plan(self, epoch: int) -> list[list[int]]:
        """All ranks' batches of ``epoch``, before sharding (identical on every rank)."""
        indices = self.strategy(self.class_codes, epoch=epoch, seed=self.seed)
        rng = _rng(self.seed, epoch, _BATCHING_STREAM)
        if self.max_batch_s is not None:
            return duration_batches(indices, self.durations_s, max_batch_s=self.max_batch_s, edges=self.edges, rng=rng,
                                    min_batch_items=self.min_batch_items)
        # The ignore below: batch_size is an int whenever max_batch_s is None (the constructor requires one).
        return fixed_batches(indices, batch_size=self.batch_size, rng=rng)  # type: ignore[arg-type]

    def plan(self, epoch: int | None = None) -> list[list[int]]:
        """This rank's batches of ``epoch`` (default: the current epoch), start to end.

        Raises:
            SertoolError: with ``drop_remainder`` the epoch has fewer batches than ranks, leaving none.
        """
        epoch = self.epoch if epoch is None else epoch
        if self._cached_plan is not None and self._cached_plan[0] == epoch:
            return self._cached_plan[1]
        everything = self.global_plan(epoch)
        batches = shard_batches(
            everything, rank=self.rank, world_size=self.world_size, drop_remainder=self.drop_remainder
        )
        if not batches:
            raise SertoolError(
                f"epoch {epoch} has {len(everything)} batch(es) for {self.world_size} processes, leaving none per "
                "process: lower max_batch_s / batch_size, or use fewer processes"
            )
        self._cached_plan = (epoch, batches)
        return batches

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch.

        Right after ``load_state_dict``, setting the restored epoch keeps the restored position instead, so
        the usual ``for epoch in range(start_epoch, epochs): sampler.set_epoch(epoch)`` resumes mid-epoch.
        """
        if not (self._restored and epoch == self.epoch):
            self._batches_done = 0
        self.epoch = epoch
        self._restored = False

    @property
    def batches_done(self) -> int:
        """Batches of the current epoch yielded so far (or restored as done)."""
        return self._batches_done

    def __len__(self) -> int:
        """Batches of a whole epoch on this rank (a resumed epoch yields ``len - batches_done`` of them)."""
        return len(self.plan())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.plan()
        if self._batches_done >= len(batches):
            # Iterating a finished epoch again would silently train on nothing (or on a repeat).
            raise RuntimeError(f"epoch {self.epoch} is finished: call set_epoch(next_epoch) before iterating again")
        self._restored = False
        while self._batches_done < len(batches):
            batch = batches[self._batches_done]
            self._batches_done += 1
            yield batch

    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        """What a checkpoint needs to continue this epoch exactly where training stopped.

        Args:
            batches_consumed: batches of this epoch the trainer has actually trained on. DataLoader workers
                fetch batches ahead of the training step, so the sampler's own count of batches *yielded*
                runs ahead of it: pass the trainer's count whenever ``num_workers > 0``.

        Raises:
            ValueError: ``batches_consumed`` exceeds the batches yielded so far.
        """
        done = self._batches_done if batches_consumed is None else batches_consumed
        if not 0 <= done <= self._batches_done:
            raise ValueError(f"batches_consumed={done}, but only {self._batches_done} batches were yielded")
        return {"epoch": self.epoch, "batches_done": done, "settings": dict(self.settings)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next batch is the first one not consumed when it was saved.

        Raises:
            SertoolError: the sampler settings differ from the checkpoint's, so the plan would differ.
        """
        saved = {**_SETTINGS_BEFORE_THEY_WERE_SAVED, **state["settings"]}
        changed = [f"{key} {saved.get(key)!r} → {value!r}" for key, value in self.settings.items()
                   if saved.get(key) != value]
        if changed:
            raise SertoolError(
                "cannot resume mid-epoch: sampler settings differ from the checkpoint's "
                f"({'; '.join(changed)}); resume with the checkpoint's settings"
            )
        self.epoch = int(state["epoch"])
        self._batches_done = int(state["batches_done"])
        self._restored = True
