"""Ensembles of prediction sets: the paper's mean, weighted means, members of different attributes joined, and
a subset chosen per attribute.

Every ensemble is an ``EnsemblePlan``: for each attribute, which members to average and with what weights.
The paper's ensemble (the mean of 2-3 systems) is the plan with every member at equal weight. Each attribute
takes only the members that predict it: the paper's future work, a separate system per attribute
(``train --attributes``), is the plan of an arousal, a valence and a dominance system (``mean_plan`` of members
of one attribute each), and members that share an attribute are averaged on it; an attribute no member
predicts is left out of the plan. ``select_per_attribute`` chooses, for each attribute, the subset of its
members whose mean is best on Development. One ``apply_plan`` runs them all, and a plan saved as JSON
(``write_plan``) re-applies the same choice to Test predictions later.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import IO, Any

import numpy as np

from sertool.core.errors import SertoolError
from sertool.core.io import SeenIds, load_json
from sertool.data.records import ATTRIBUTES
from sertool.inference.predictions import Predictions, Segment, align, check_rating_scale
from sertool.models.ccc import ccc_scores

PLAN_FORMAT = "sertool-ensemble"
PLAN_VERSION = 1
PLAN_KINDS: tuple[str, ...] = ("mean", "weighted", "select")
# Subset selection scores every subset on Development; one CCC over ~30k rows takes ~30 ms on a laptop
# CPU, so 4096 subsets (all of 12 members) is about two minutes.
MAX_SUBSETS = 4096


@dataclass(frozen=True)
class EnsemblePlan:
    """Which members an ensemble averages for each attribute, and their weights.

    Attributes:
        members: one name per member, as the caller refers to it (e.g. a predictions CSV path); the
            members given to ``apply_plan`` must come in this order.
        weights: per attribute name, ``(member index, weight)`` pairs; weights are normalised to sum to 1. An
            attribute that no member predicts has no entry: the ensemble does not predict it.
        kind: how the plan was made: ``"mean"``, ``"weighted"`` or ``"select"``.
        development_ccc: for ``"select"`` plans, the Development CCC of each attribute's chosen subset.
            The choice was made on the same data, so these are optimistic; report Test scores.
        backbone_paths: per member, where its speech backbone lives (hub id or folder, named like the
            members; None: where the member recorded it), or None for every member
            (``ensemble --member-backbone-path``).

    Raises:
        ValueError: no attribute, an unknown one, an index out of range or repeated, or weights that are
            negative, not finite, or sum to 0.
    """

    members: tuple[str, ...]
    weights: Mapping[str, tuple[tuple[int, float], ...]]
    kind: str = "mean"
    development_ccc: Mapping[str, float] | None = None
    backbone_paths: tuple[str | None, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        if self.backbone_paths is not None and len(self.backbone_paths) != len(self.members):
            raise ValueError(f"{len(self.backbone_paths)} backbone paths for {len(self.members)} members")
        if self.kind not in PLAN_KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {', '.join(PLAN_KINDS)}")
        unknown = [str(name) for name in self.weights if name not in ATTRIBUTES]
        if unknown or not self.weights:
            raise ValueError(f"attributes {', '.join(unknown)}: not one of {', '.join(ATTRIBUTES)}" if unknown
                             else "no attribute has members")
        normalised = {name: _normalised(self.weights[name], len(self.members), name)
                      for name in ATTRIBUTES if name in self.weights}
        object.__setattr__(self, "weights", normalised)

    @property
    def attributes(self) -> tuple[str, ...]:
        """The attributes the ensemble predicts (those with members), in ``ATTRIBUTES`` order."""
        return tuple(self.weights)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description; ``from_dict`` reads it back."""
        attributes: dict[str, Any] = {}
        for name in self.attributes:
            entry: dict[str, Any] = {"members": [{"member": index, "weight": weight}
                                                 for index, weight in self.weights[name]]}
            if self.development_ccc is not None:
                entry["development_ccc"] = self.development_ccc[name]
            attributes[name] = entry
        document = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "kind": self.kind,
                    "members": list(self.members), "attributes": attributes}
        if self.backbone_paths is not None:
            document["backbone_paths"] = list(self.backbone_paths)
        return document

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "ensemble plan") -> EnsemblePlan:
        """Read ``to_dict``'s output.

        Args:
            data: the parsed JSON.
            source: how errors name it, e.g. the plan file's path.

        Raises:
            SertoolError: not a sertool ensemble plan, or an invalid one (naming the field).
        """
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise SertoolError(f"{source}: not a sertool ensemble plan (no \"format\": \"{PLAN_FORMAT}\")")
        if data.get("version") != PLAN_VERSION:
            raise SertoolError(f"{source}: plan version {data.get('version')!r}; this sertool reads version "
                               f"{PLAN_VERSION}. Re-create the plan with this version")
        members = data.get("members")
        attributes = data.get("attributes")
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise SertoolError(f"{source}: \"members\" must be a non-empty list of names")
        if not isinstance(attributes, dict) or not attributes or any(name not in ATTRIBUTES for name in attributes):
            raise SertoolError(f"{source}: \"attributes\" must be an object keyed by attribute name ("
                               f"{', '.join(ATTRIBUTES)}; those the ensemble predicts)")
        refuse_repeated_members(members, [f"{source}: members[{index}]" for index in range(len(members))])
        weights: dict[str, tuple[tuple[int, float], ...]] = {}
        development_ccc: dict[str, float] = {}
        for name, entry in attributes.items():
            try:
                weights[name] = tuple((_index(item["member"]), float(item["weight"])) for item in entry["members"])
                if "development_ccc" in entry:
                    development_ccc[name] = float(entry["development_ccc"])
            except (TypeError, KeyError, ValueError):
                raise SertoolError(f"{source}: attributes.{name} needs \"members\": [{{\"member\": index, "
                                   "\"weight\": number}, ...]") from None
        backbone_paths = data.get("backbone_paths")
        if backbone_paths is not None and (
                not isinstance(backbone_paths, list) or len(backbone_paths) != len(members)
                or not all(path is None or isinstance(path, str) for path in backbone_paths)):
            raise SertoolError(f"{source}: \"backbone_paths\" must list one backbone location (a string, or null) per "
                               "member")
        try:
            return cls(members=tuple(members), weights=weights, kind=data.get("kind", "mean"),
                       development_ccc=development_ccc if len(development_ccc) == len(weights) else None,
                       backbone_paths=None if backbone_paths is None else tuple(backbone_paths))
        except ValueError as error:
            raise SertoolError(f"{source}: {error}") from None


def refuse_repeated_members(names: Sequence[str], wheres: Sequence[str]) -> None:
    """Refuse a member named twice: it would count twice in the mean, a weight given by accident.

    Args:
        names: the members as a plan names them.
        wheres: how errors name each one (its place in the plan file, or the path as given).

    Raises:
        SertoolError: naming both places of the first repeat.
    """
    seen = SeenIds("member")
    for name, where in zip(names, wheres, strict=True):
        seen.refuse_repeat(name, where, fix="give each member once (--weights gives one member more say)")


def mean_plan(names: Sequence[str], weights: Sequence[float] | None = None, *,
              coverage: Sequence[Sequence[str]] | None = None) -> EnsemblePlan:
    """For every attribute, every member that predicts it: the paper's mean, or a weighted mean.

    Args:
        names: one per member (e.g. predictions CSV paths).
        weights: one per member, any positive scale (normalised among the members of each attribute); None:
            equal weights.
        coverage: per member, the attributes it predicts (``Predictions.attributes``, ``Predictor.attributes``);
            None: all three for every member. Members of one attribute each (a separate system per attribute)
            make one system of every attribute they cover.

    Raises:
        SertoolError: the weights do not match the members in number, or are negative, not finite or
            all 0 among the members of an attribute.
    """
    if not names:
        raise SertoolError("an ensemble needs at least one member")
    if weights is not None and len(weights) != len(names):
        raise SertoolError(f"{len(weights)} weights for {len(names)} ensemble members; give one weight per member")
    covered = [set(ATTRIBUTES)] * len(names) if coverage is None else [set(own) for own in coverage]
    if len(covered) != len(names):
        raise ValueError(f"mean_plan: {len(covered)} attribute sets for {len(names)} members")
    plan = {name: tuple((index, 1.0 if weights is None else float(weights[index]))
                        for index in range(len(names)) if name in covered[index])
            for name in ATTRIBUTES if any(name in own for own in covered)}
    try:
        return EnsemblePlan(members=tuple(names), weights=plan, kind="mean" if weights is None else "weighted")
    except ValueError as error:  # every attribute's members alike: the message need not name an attribute
        alike = len({tuple(index for index, _ in pairs) for pairs in plan.values()}) == 1
        raise SertoolError(f"--weights {','.join(f'{w:g}' for w in weights or ())}: weights must be finite, "
                           "non-negative and not all 0" + ("" if alike else f" ({error})")) from None


def average(members: Sequence[Predictions], weights: Sequence[float] | None = None, *,
            names: Sequence[str] | None = None) -> Predictions:
    """The (weighted) mean of the members, ids aligned by name; ``spread`` is the members' std.

    Args:
        members: predictions of the same files, in any row order.
        weights: one per member (normalised); None: the simple mean.
        names: how errors name the members, e.g. their paths.

    Returns:
        Predictions in ``members[0]``'s id order.

    Raises:
        SertoolError: the members cover different files, or the weights are invalid.
    """
    names = _names(members, names)
    return apply_plan(mean_plan(names, weights), members)


def select_per_attribute(members: Sequence[Predictions], labels: np.ndarray, *,
                         names: Sequence[str] | None = None, max_subset_size: int | None = None) -> EnsemblePlan:
    """For each attribute, the subset of its members (those that predict it) whose mean scores the best
    Development CCC.

    Every non-empty subset of at most ``max_subset_size`` of an attribute's members is averaged and scored; ties
    go to the smaller subset (then the one with lower member indices), so a member is only added when it helps.
    An attribute no member predicts stays out of the plan.

    Args:
        members: Development predictions of each candidate system, in any row order.
        labels: ``[N, 3]`` Development rater means (A, V, D) in ``members[0].ids`` order.
        names: one per member, stored in the plan (e.g. predictions CSV paths).
        max_subset_size: largest subset to try; None: all members.

    Returns:
        A ``"select"`` plan with equal weights inside each chosen subset and its Development CCC per
        attribute (optimistic: chosen on the same data).

    Raises:
        SertoolError: the members cover different files, ``max_subset_size`` is below 1, or an attribute has
            more than ``MAX_SUBSETS`` subsets of members to try.
    """
    names = _names(members, names)
    aligned = align(members, names=names)
    labels = np.asarray(labels, dtype=np.float64)
    if labels.shape != (len(aligned[0]), len(ATTRIBUTES)) or not np.all(np.isfinite(labels)):
        raise ValueError(f"select_per_attribute: labels must be finite, shape {(len(aligned[0]), len(ATTRIBUTES))}, "
                         f"got {labels.shape}")
    if max_subset_size is not None and max_subset_size < 1:
        raise SertoolError(f"maximum subset size {max_subset_size}: must be at least 1")
    # Each attribute's candidates: the members that predict it (an attribute none predicts has none).
    candidates = {name: indices for name in ATTRIBUTES
                  if (indices := [index for index, member in enumerate(aligned) if name in member.attributes])}
    largest = {name: len(indices) if max_subset_size is None else min(max_subset_size, len(indices))
               for name, indices in candidates.items()}
    for name, indices in candidates.items():
        num_subsets = sum(math.comb(len(indices), size) for size in range(1, largest[name] + 1))
        if num_subsets > MAX_SUBSETS:
            raise SertoolError(
                f"{len(indices)} members of {name} give {num_subsets} subsets to score, more than {MAX_SUBSETS}; "
                "lower the maximum subset size (3 is usually enough) or ensemble fewer members"
            )
    best_score: dict[str, float] = {}
    best_subset: dict[str, tuple[int, ...]] = {}
    for name, indices in candidates.items():
        truth = labels[:, [ATTRIBUTES.index(name)]]
        column = {index: aligned[index].values[:, aligned[index].columns([name])] for index in indices}  # [N, 1]
        best_score[name] = -math.inf
        # Sizes ascending and a strict ">" make ties go to the smaller, earlier subset.
        for size in range(1, largest[name] + 1):
            for subset in combinations(indices, size):
                mean = np.mean([column[index] for index in subset], axis=0)
                score = ccc_scores(mean, truth, attributes=(name,))[name]
                if score > best_score[name]:
                    best_score[name], best_subset[name] = score, subset
    weights = {name: tuple((index, 1.0) for index in subset) for name, subset in best_subset.items()}
    return EnsemblePlan(members=tuple(names), weights=weights, kind="select", development_ccc=best_score)


def apply_plan(plan: EnsemblePlan, members: Sequence[Predictions]) -> Predictions:
    """Combine the members as the plan says, attribute by attribute.

    ``spread`` is, per attribute, the weighted standard deviation of the members that attribute uses
    (population form, around the weighted mean; 0 where one member is used). Segments of long audio
    are combined the same way when every member has the same segments.

    Args:
        plan: from ``mean_plan``, ``select_per_attribute`` or ``read_plan``.
        members: one per ``plan.members``, in that order, rows in any order.

    Returns:
        Predictions in ``members[0]``'s id order, of the plan's attributes.

    Raises:
        SertoolError: the number of members differs from the plan's, the plan takes an attribute from a member
            that does not predict it (``check_coverage``), a member is not on the 1..7 scale
            (``check_rating_scale``), they cover different files, or some have segments the others lack.
    """
    if len(members) != len(plan.members):
        raise SertoolError(f"the ensemble plan has {len(plan.members)} members ({', '.join(plan.members)}) "
                           f"but {len(members)} prediction sets were given; give one per plan member, in order")
    check_coverage(plan, [member.attributes for member in members], source="the ensemble plan")
    for name, member in zip(plan.members, members, strict=True):  # averaging a 0..1 member with 1..7 ones means nothing
        check_rating_scale(member, source=f"ensemble member {name}")
    aligned = align(members, names=plan.members)
    values, spread = _combine(plan, [member.values for member in aligned], [member.attributes for member in aligned])
    return Predictions(ids=aligned[0].ids, values=values, spread=spread, segments=_combine_segments(plan, aligned),
                       attributes=plan.attributes)


def check_coverage(plan: EnsemblePlan, coverage: Sequence[Sequence[str]], *, source: str) -> None:
    """Refuse a plan that takes an attribute from a member that does not predict it.

    Args:
        coverage: per member of ``plan``, in order, the attributes it predicts.
        source: how the message names the plan (its file).

    Raises:
        SertoolError: naming the first such attribute and member, and what that member predicts.
    """
    for name, pairs in plan.weights.items():
        for index, _ in pairs:
            if name not in coverage[index]:
                raise SertoolError(f"{source}: takes {name} from {plan.members[index]}, which predicts only "
                                   f"{', '.join(coverage[index])}; make the plan again from the members as they are")


def write_plan(plan: EnsemblePlan, handle: IO[str]) -> None:
    """Save a plan as JSON to an open text stream (``--save ens.json``, committed through ``OutputPlan.writing``)."""
    json.dump(plan.to_dict(), handle, indent=1)
    handle.write("\n")


def read_plan(path: str | Path) -> EnsemblePlan:
    """Load a plan saved by ``write_plan``.

    Raises:
        SertoolError: the file is missing, not JSON, or not a valid plan.
    """
    return EnsemblePlan.from_dict(load_json(path, what="ensemble plan"), source=str(path))


def _combine(plan: EnsemblePlan, member_values: Sequence[np.ndarray],
             member_attributes: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Each member's ``[R, its attributes]`` values → the plan's ``[R, its attributes]`` weighted mean and weighted
    std, each attribute from the members the plan names for it."""
    num_rows = len(member_values[0])
    values = np.empty((num_rows, len(plan.attributes)))
    spread = np.empty((num_rows, len(plan.attributes)))
    for column, name in enumerate(plan.attributes):
        weights = np.array([weight for _, weight in plan.weights[name]])
        stacked = np.stack([member_values[index][:, list(member_attributes[index]).index(name)]
                            for index, _ in plan.weights[name]])  # [k, R]
        # Each row scaled by one power of two (exact) so that the squares of values far off the scale (a CSV
        # member may hold 1e300) cannot overflow: the spread is then that of the values, not infinity.
        _, exponent = np.frexp(np.abs(stacked).max(axis=0))  # [R]
        chosen = np.ldexp(stacked, -exponent)  # [k, R]
        mean = weights @ chosen
        values[:, column] = np.ldexp(mean, exponent)
        spread[:, column] = np.ldexp(np.sqrt(weights @ np.square(chosen - mean)), exponent)
    return values, spread


def _combine_segments(plan: EnsemblePlan, aligned: Sequence[Predictions]) -> list[Segment]:
    keyed = [{(s.id, s.start_s, s.end_s): s.values for s in member.segments} for member in aligned]
    if not any(keyed):
        return []
    keys = sorted(keyed[0])
    if any(sorted(member_segments) != keys for member_segments in keyed[1:]):
        raise SertoolError(
            f"ensemble members {', '.join(plan.members)} have different segments; predict long audio with "
            "the same window and hop for every member, or without segments for all"
        )
    values, _ = _combine(plan, [np.array([member_segments[key] for key in keys]).reshape(len(keys), -1)
                                for member_segments in keyed], [member.attributes for member in aligned])
    return [Segment(file_id, start_s, end_s, tuple(float(v) for v in row))
            for (file_id, start_s, end_s), row in zip(keys, values, strict=True)]


def _index(value: Any) -> int:
    """A member index from JSON: an integer, not a float that happens to truncate to one."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"member index {value!r} is not an integer")
    return value


def _names(members: Sequence[Predictions], names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [f"member {index}" for index in range(len(members))]
    if len(names) != len(members):
        raise ValueError(f"{len(names)} names for {len(members)} members")
    return list(names)


def _normalised(pairs: Sequence[tuple[int, float]], num_members: int, attribute: str) -> tuple[tuple[int, float], ...]:
    indices = [index for index, _ in pairs]
    weights = [weight for _, weight in pairs]
    if not pairs:
        raise ValueError(f"{attribute}: no members chosen")
    if any(not 0 <= index < num_members for index in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"{attribute}: member indices {indices} must be distinct and in 0..{num_members - 1}")
    if any(not math.isfinite(weight) or weight < 0 for weight in weights) or max(weights) <= 0:
        raise ValueError(f"{attribute}: weights {weights} must be finite, non-negative and not all 0")
    # Scale by the largest first: the sum of finite weights can overflow (1e308 + 1e308 = inf, and every
    # weight / inf = 0), the sum of weights <= 1 cannot.
    largest = max(weights)
    scaled = [weight / largest for weight in weights]
    total = sum(scaled)
    return tuple((index, weight / total) for index, weight in zip(indices, scaled, strict=True))
