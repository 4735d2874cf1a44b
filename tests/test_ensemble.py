"""Ensembles: means against hand computations, per-attribute subset selection, plans as JSON, CSV members."""
from __future__ import annotations

import functools
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from sertool.core.errors import SertoolError
from sertool.inference.ensemble import (
    MAX_SUBSETS,
    EnsemblePlan,
    apply_plan,
    average,
    mean_plan,
    read_plan,
    select_per_attribute,
    write_plan,
)
from sertool.inference.predictions import Predictions, Segment, read_predictions, write_predictions
from sertool.models.ccc import ccc_scores
from tests.cases import case
from tests.corpus_files import commit

IDS = ["a.wav", "b.wav"]


def two_members() -> list[Predictions]:
    first = Predictions(ids=IDS, values=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    # Same files, listed in the other order: the ensemble must match rows by name, not position.
    second = Predictions(ids=IDS[::-1], values=np.array([[6.0, 6.0, 6.0], [3.0, 2.0, 1.0]]))
    return [first, second]


def test_average_is_the_mean_and_spread_the_std() -> None:
    ensemble = average(two_members())
    assert ensemble.ids == IDS
    # a.wav: (1,2,3) and (3,2,1); b.wav: (4,5,6) and (6,6,6).
    np.testing.assert_allclose(ensemble.values, [[2.0, 2.0, 2.0], [5.0, 5.5, 6.0]])
    np.testing.assert_allclose(ensemble.spread, [[1.0, 0.0, 1.0], [1.0, 0.5, 0.0]])


def test_weights_are_normalised() -> None:
    ensemble = average(two_members(), weights=[3, 1])
    # a.wav arousal: 0.75 * 1 + 0.25 * 3 = 1.5; spread sqrt(0.75 * 0.5² + 0.25 * 1.5²) = sqrt(0.75).
    np.testing.assert_allclose(ensemble.values[0], [1.5, 2.0, 2.5])
    np.testing.assert_allclose(ensemble.spread[0], [np.sqrt(0.75), 0.0, np.sqrt(0.75)])
    np.testing.assert_allclose(average(two_members(), weights=np.array([30, 10])).values, ensemble.values)


def test_equal_weight_spread_is_the_population_std() -> None:
    rng = np.random.default_rng(0)
    ids = [f"{i}.wav" for i in range(50)]
    members = [Predictions(ids=ids, values=rng.uniform(1, 7, size=(50, 3))) for _ in range(3)]
    stacked = np.stack([member.values for member in members])
    ensemble = average(members)
    np.testing.assert_allclose(ensemble.values, stacked.mean(axis=0))
    np.testing.assert_allclose(ensemble.spread, stacked.std(axis=0))


@case("values", "ensemble members holding values of ±1e300 (a CSV member far off the scale), any weights",
      "the weighted mean and spread of those values, never an overflow to infinity or NaN")
@pytest.mark.parametrize("weights", [None, [1.0, 3.0, 1e-300], [1e308, 1e308, 1e308]])
def test_weighted_mean_and_spread_of_huge_values_are_those_of_the_values(weights: list[float] | None) -> None:
    rng = np.random.default_rng(1)
    ids = [f"{i}.wav" for i in range(20)]
    unit = rng.uniform(-1, 1, size=(3, 20, 3))
    members = [Predictions(ids=ids, values=np.where(np.arange(20)[:, None] < 2, 1e300 * v, 4 + v)) for v in unit]
    stacked = np.stack([member.values for member in members])
    share = np.full(3, 1 / 3) if weights is None else np.array(weights) / max(weights)
    share = share / share.sum()
    ensemble = average(members, weights=weights)
    # The reference: the same mean and population std, computed in units of 1e300 on the huge rows.
    unit_rows = np.where(np.arange(20)[:, None] < 2, 1e300, 1.0)
    in_units = stacked / unit_rows
    mean = np.einsum("m,mrk->rk", share, in_units)
    std = np.sqrt(np.einsum("m,mrk->rk", share, (in_units - mean) ** 2))
    assert np.isfinite(ensemble.spread).all()
    np.testing.assert_allclose(ensemble.values / unit_rows, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ensemble.spread / unit_rows, std, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weights", [[1.0], [1.0, -1.0], [0.0, 0.0], [1.0, float("nan")]])
def test_bad_weights(weights: list[float]) -> None:
    with pytest.raises(SertoolError):
        average(two_members(), weights=weights)


def test_misaligned_ids_are_an_error() -> None:
    first, _ = two_members()
    other = Predictions(ids=["a.wav", "c.wav"], values=np.ones((2, 3)))
    with pytest.raises(SertoolError, match="b.csv lacks 1 file.* b.wav"):
        average([first, other], names=["a.csv", "b.csv"])


def development_case() -> tuple[list[Predictions], np.ndarray]:
    """Member 0 is exact on arousal and noise on valence, member 1 the reverse; both are noisy on dominance."""
    rng = np.random.default_rng(42)
    num_files = 400
    ids = [f"dev_{i:04d}.wav" for i in range(num_files)]
    labels = rng.uniform(1, 7, size=(num_files, 3))
    first, second = labels.copy(), labels.copy()
    first[:, 1] = rng.uniform(1, 7, size=num_files)
    second[:, 0] = rng.uniform(1, 7, size=num_files)
    # Independent errors on dominance: their mean is better than either alone.
    first[:, 2] += rng.normal(0, 1.0, size=num_files)
    second[:, 2] += rng.normal(0, 1.0, size=num_files)
    third = labels + rng.normal(0, 3.0, size=labels.shape)  # weak everywhere
    return [Predictions(ids=ids, values=values) for values in (first, second, third)], labels


def test_selection_picks_what_development_says() -> None:
    members, labels = development_case()
    plan = select_per_attribute(members, labels, names=["m0.csv", "m1.csv", "m2.csv"])
    assert plan.kind == "select" and plan.members == ("m0.csv", "m1.csv", "m2.csv")
    assert plan.weights["arousal"] == ((0, 1.0),)
    assert plan.weights["valence"] == ((1, 1.0),)
    assert plan.weights["dominance"] == ((0, 0.5), (1, 0.5))
    assert plan.development_ccc["arousal"] == pytest.approx(1.0)
    assert plan.development_ccc["valence"] == pytest.approx(1.0)
    ensemble = apply_plan(plan, members)
    np.testing.assert_allclose(ensemble.values[:, :2], labels[:, :2])
    np.testing.assert_allclose(ensemble.values[:, 2], (members[0].values[:, 2] + members[1].values[:, 2]) / 2)
    assert ccc_scores(ensemble.values, labels)["dominance"] == pytest.approx(plan.development_ccc["dominance"])


def test_selection_is_the_best_of_all_subsets() -> None:
    members, labels = development_case()
    plan = select_per_attribute(members, labels)
    stacked = np.stack([member.values for member in members])
    for name in ("arousal", "valence", "dominance"):
        every_subset = [ccc_scores(stacked[list(subset)].mean(axis=0), labels)[name]
                        for size in (1, 2, 3) for subset in combinations(range(3), size)]
        assert plan.development_ccc[name] == pytest.approx(max(every_subset))


def test_selection_aligns_rows_and_honours_max_subset_size() -> None:
    members, labels = development_case()
    shuffled = members[1].take(members[1].ids[::-1])
    plan = select_per_attribute([members[0], shuffled, members[2]], labels, max_subset_size=1)
    assert plan.weights["dominance"] in (((0, 1.0),), ((1, 1.0),))  # pairs not tried
    assert plan.weights["valence"] == ((1, 1.0),)  # the shuffled member still wins valence


def test_selection_refuses_too_many_subsets() -> None:
    members = [Predictions(ids=IDS, values=np.full((2, 3), 4.0)) for _ in range(13)]
    assert 2 ** 13 - 1 > MAX_SUBSETS
    with pytest.raises(SertoolError, match="lower the maximum subset size"):
        select_per_attribute(members, np.full((2, 3), 4.0))
    with pytest.raises(SertoolError, match="at least 1"):
        select_per_attribute(members[:2], np.full((2, 3), 4.0), max_subset_size=0)


def test_plan_json_round_trip(tmp_path: Path) -> None:
    members, labels = development_case()
    plan = select_per_attribute(members, labels, names=["m0.csv", "m1.csv", "m2.csv"])
    path = tmp_path / "ens.json"
    commit(path, lambda handle: write_plan(plan, handle))
    loaded = read_plan(path)
    assert loaded.to_dict() == plan.to_dict()
    np.testing.assert_array_equal(apply_plan(loaded, members).values, apply_plan(plan, members).values)
    weighted = mean_plan(["x.csv", "y.csv"], weights=[2, 1])
    assert EnsemblePlan.from_dict(json.loads(json.dumps(weighted.to_dict()))).weights == weighted.weights
    assert weighted.kind == "weighted" and mean_plan(["x.csv"]).kind == "mean"


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(format="other"), "not a sertool ensemble plan"),
    (lambda d: d.update(version=99), "plan version 99"),
    (lambda d: d["attributes"]["valence"]["members"][0].update(member=5),
     "valence: member indices [5, 1] must be distinct and in 0..1"),
    (lambda d: d["attributes"]["valence"]["members"][0].update(member=0.5), "attributes.valence needs"),
    (lambda d: d["attributes"]["dominance"].update(members=[]), "dominance: no members chosen"),
    (lambda d: d["attributes"].update(happiness=d["attributes"]["valence"]), "keyed by attribute name"),
    (lambda d: d.update(attributes={}), "keyed by attribute name"),
    (lambda d: d.update(members=[]), "non-empty list"),
])
def test_bad_plans_are_named(tmp_path: Path, change, message: str) -> None:
    data = mean_plan(["x.csv", "y.csv"]).to_dict()
    change(data)
    path = tmp_path / "ens.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SertoolError, match="ens.json") as error:
        read_plan(path)
    assert message in str(error.value)


def test_apply_plan_needs_one_member_per_plan_member() -> None:
    with pytest.raises(SertoolError, match="plan has 3 members"):
        apply_plan(mean_plan(["x", "y", "z"]), two_members())


def test_csv_members_give_the_in_memory_ensemble(tmp_path: Path) -> None:
    members, labels = development_case()
    paths = []
    for index, member in enumerate(members):
        paths.append(tmp_path / f"m{index}.csv")
        # Rows in a different order per file, as files from different runs may be.
        shuffled = member.take(list(np.random.default_rng(index).permutation(member.ids)))
        commit(paths[-1], functools.partial(write_predictions, shuffled))
    loaded = [read_predictions(path) for path in paths]
    from_files = average(loaded, names=[str(path) for path in paths]).take(members[0].ids)
    in_memory = average(members)
    np.testing.assert_allclose(from_files.values, in_memory.values, atol=1e-6)
    np.testing.assert_allclose(from_files.spread, in_memory.spread, atol=1e-6)
    # Selection on the files, labels put in the first file's row order, chooses what it does in memory.
    row_of = {file_id: row for row, file_id in enumerate(members[0].ids)}
    loaded_labels = labels[[row_of[file_id] for file_id in loaded[0].ids]]
    assert select_per_attribute(loaded, loaded_labels).weights == select_per_attribute(members, labels).weights


def test_segments_are_combined_when_members_share_them() -> None:
    def member(offset: float) -> Predictions:
        return Predictions(ids=["long.wav"], values=np.full((1, 3), 3.0 + offset),
                           segments=[Segment("long.wav", 0.0, 8.0, (2.0 + offset, 3.0, 4.0)),
                                     Segment("long.wav", 4.0, 12.0, (5.0, 5.0, 5.0 + offset))])
    ensemble = average([member(0.0), member(2.0)])
    assert [segment.values for segment in ensemble.segments] == [(3.0, 3.0, 4.0), (5.0, 5.0, 6.0)]
    different = Predictions(ids=["long.wav"], values=np.full((1, 3), 3.0),
                            segments=[Segment("long.wav", 0.0, 6.0, (2.0, 3.0, 4.0))])
    with pytest.raises(SertoolError, match="different segments"):
        average([member(0.0), different])
