"""`make reproduce` in miniature: a two-row grid end to end, then again with nothing left to do."""
from __future__ import annotations

import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

from sertool.core.config import DEFAULT_BACKBONE_IDS
from sertool.core.constants import SCORE_NAMES
from sertool.core.errors import SertoolError
from sertool.data.corpus import open_corpus
from sertool.experiments.grid import read_grid
from sertool.experiments.options import ReproduceOptions
from sertool.experiments.reproduce import render_tables, reproduce
from sertool.inference.predictions import read_predictions
from sertool.models.ccc import ccc_scores
from sertool.models.released import CONSTRUCTOR_DEFAULTS, WHISPER_WINDOW_S, released_model_config
from sertool.store.checkpoints import load_checkpoint
from tests.corpus_files import write_learnable_corpus

PAPER_GRID = Path(__file__).resolve().parent.parent / "sertool" / "configs" / "paper" / "grid.yaml"


def _grid(folder: Path, systems=("wavlm", "mmwavlm-gender")) -> Path:
    """Two of the paper's systems and their ensemble, with demo stand-ins and overrides small enough for a test."""
    folder.mkdir()
    for system in systems:
        shutil.copy(PAPER_GRID.parent / f"{system}.yaml", folder)
    grid = yaml.safe_load(PAPER_GRID.read_text())
    grid["tables"] = [{"title": "Two systems", "rows": [{"system": systems[0], "paper": [0.653, 0.7, 0.5651, 0.6394]},
                                                        {"system": systems[1]}]}]
    grid["ensembles"] = [{"id": "both", "name": "both", "members": list(systems)}]
    grid["submissions"]["rows"] = [{"system": "both"}]
    grid["demo_scale"]["overrides"] = {
        "data": {"num_workers": 0},
        "model": {"head_hidden_dim": 8, "fbank_dim": 16, "head_dropout": 0.0},
        "train": {"epochs": 1, "max_steps": 0, "batch_size": 4, "accum_steps": 1, "sampling": "whole"},
    }
    (folder / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    return folder / "grid.yaml"


def test_every_system_of_the_paper_grid_has_a_loadable_config():
    grid = read_grid(PAPER_GRID)
    assert len(grid.systems_of(("paper",))) == 18 and len(grid.systems) == 35
    overrides = grid.demo_overrides["train"]
    for system in grid.systems:
        if system in grid.variants:
            continue  # test_every_variant_is_its_system_with_exactly_its_settings_changed
        demo = grid.config(system, scale="demo", corpus="c")
        assert demo.model.backbone == "fbank" and (demo.train.epochs, demo.train.max_steps) == (
            overrides["epochs"], overrides["max_steps"])
        real = grid.config(system, scale="real", corpus="c")
        assert real.model.backbone in ("wavlm", "whisper")
        assert real.model.text_model == "FacebookAI/roberta-large"
        # Budgeted in optimiser steps, with the baseline's 8 utterances per micro-batch at least.
        assert (real.train.epochs, real.train.max_steps, real.train.min_batch_items) == (0, 40000, 8)
        # Whisper as the authors' released models: its last encoder layer.
        assert real.model.layer_weighting == ("last" if real.model.backbone == "whisper" else "weighted")
    located = grid.config("mmwavlm", scale="real", corpus="c",
                          model_locations={"microsoft/wavlm-large": "/models/wavlm", "FacebookAI/roberta-large": "/m/rb"})
    assert (located.model.backbone_path, located.model.text_model) == ("/models/wavlm", "/m/rb")


def _changed(before: dict, after: dict, prefix: str = "") -> dict[str, object]:
    """The keys (``train.epochs``) whose values differ between two config dicts, with the new value."""
    changed: dict[str, object] = {}
    for key in before.keys() | after.keys():
        if isinstance(before.get(key), dict):
            changed.update(_changed(before[key], after[key], f"{prefix}{key}."))
        elif before.get(key) != after.get(key):
            changed[f"{prefix}{key}"] = after.get(key)
    return changed


def test_every_variant_is_its_system_with_exactly_its_settings_changed():
    grid = read_grid(PAPER_GRID)
    assert grid.variants and all(grid.variants[name].of not in grid.variants for name in grid.variants)
    for name, variant in grid.variants.items():
        for scale in ("demo", "real"):
            if not grid.runs_at(name, scale):
                with pytest.raises(SertoolError, match="runs at real scale only"):
                    grid.config(name, scale=scale, corpus="c")
                continue
            base = grid.config(variant.of, scale=scale, corpus="c").to_dict()
            derived = grid.config(name, scale=scale, corpus="c").to_dict()
            wanted = {f"{section}.{key}": value for section, values in variant.settings_at(scale).items()
                      for key, value in values.items()}
            assert _changed(base, derived) == {key: value for key, value in wanted.items()
                                               if value != _lookup(base, key)}, (name, scale)


def _lookup(config: dict, key: str):
    section, name = key.split(".")
    return config[section][name]


def test_the_release_form_variants_build_the_released_models_downstream_form():
    grid = read_grid(PAPER_GRID)
    released = released_model_config({**CONSTRUCTOR_DEFAULTS, "pretrain_model": "wavlm_large", "hidden_dim": 256,
                                      "lora_rank": 16})
    downstream = ("projection_dim", "pooling", "head_hidden_dim", "head_dropout", "head_norm", "head_output")
    for name in ("wavlm_release-form", "wavlm-gender_release-form", "mmwhisper_release-form", "mmwhisper_release"):
        model = grid.config(name, scale="real", corpus="c").model
        assert {key: getattr(model, key) for key in downstream} == {key: getattr(released, key) for key in downstream}
    padded = grid.config("mmwhisper_padded-input", scale="real", corpus="c").model
    assert padded.whisper_window_s == WHISPER_WINDOW_S and padded.projection_dim == 0  # the input alone
    assert grid.config("mmwhisper_release", scale="real", corpus="c").model.whisper_window_s == WHISPER_WINDOW_S
    assert not grid.runs_at("mmwhisper_padded-input", "demo")  # the fbank stand-in has no Whisper input
    assert {variant.source for name, variant in grid.variants.items() if "release" in name or "padded" in name} == {
        "release"}


def test_table_4_compares_sampling_at_equal_epochs_then_at_equal_steps():
    grid = read_grid(PAPER_GRID)
    table = next(table for table in grid.tables if table.title.startswith("Sampling"))
    assert table.part == "paper"
    budgets = {}
    for row in table.rows:
        real = grid.config(row.system, scale="real", corpus="c").train
        demo = grid.config(row.system, scale="demo", corpus="c").train
        budgets[row.system] = (real.sampling, real.epochs, real.max_steps, demo.epochs, demo.max_steps, row.paper)
    paper_whole, paper_undersampled = (0.6620, 0.5574, 0.5735, 0.5996), (0.6694, 0.7334, 0.5795, 0.6588)
    assert budgets == {
        # The paper's logic: 20 epochs each (an undersampled epoch is shorter), the paper's figures beside.
        "mmwavlm-whole_20-epochs": ("whole", 20, 0, 2, 0, paper_whole),
        "mmwavlm_20-epochs": ("undersample", 20, 0, 2, 0, paper_undersampled),
        # sertool's control: the grid's step budget for both.
        "mmwavlm-whole": ("whole", 0, 40000, 0, 150, None), "mmwavlm": ("undersample", 0, 40000, 0, 150, None)}


def test_the_ox_treatment_table_runs_every_ox_row_under_each_ox_balance():
    grid = read_grid(PAPER_GRID)
    table = next(table for table in grid.tables if table.title.startswith("O/X inside undersampling"))
    assert table.part == "variants"
    treatments: dict[tuple, set[str]] = {}
    for row in table.rows:
        config = grid.config(row.system, scale="real", corpus="c")
        key = (config.data.train_ox, config.data.dev_ox_to_train)
        treatments.setdefault(key, set()).add(config.train.ox_balance)
    # The full set and Table 5's rows that train on O/X (not "− O/X"), each under the three treatments.
    assert treatments == {(train_ox, dev_ox): {"classes", "whole", "one-class"}
                          for train_ox in ("keep", "drop-as-many-non-ox", "only") for dev_ox in (False, True)}


@pytest.mark.parametrize("variants, message", [
    ({"x": {"of": "wavlm", "source": "paper", "what": "w", "set": {"train": {"epoch": 3}}}}, "unknown key train.epoch"),
    ({"x": {"of": "wavlm", "source": "paper", "what": "w", "set": {"train": {"epochs": -1}}}}, "train.epochs"),
    ({"x": {"of": "wavlm", "source": "me", "what": "w", "set": {}}}, "source 'me'"),
    ({"x": {"of": "wavlm", "source": "paper", "what": "w", "set": {}, "scales": ["big"]}}, "scale 'big'"),
    ({"x": {"of": "wavlm", "source": "paper", "what": "w", "set": {}},
      "y": {"of": "x", "source": "paper", "what": "w", "set": {}}}, "another variant"),
    ({"x": {"source": "paper", "what": "w", "set": {}}}, "KeyError"),
])
def test_a_malformed_variant_is_refused_naming_the_grid(tmp_path, variants, message):
    grid = yaml.safe_load(PAPER_GRID.read_text())
    grid["variants"] = variants
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    with pytest.raises(SertoolError, match=message) as caught:
        read_grid(path)
    assert str(path) in str(caught.value)


def _what(grid, system: str) -> tuple:
    config = grid.config(system, scale="real", corpus="c")
    return (config.model.backbone, config.model.text, config.model.aux, config.train.sampling,
            config.data.dev_ox_to_train, config.data.train_ox)


def test_the_paper_ensembles_have_the_paper_members():
    grid = read_grid(PAPER_GRID)
    members = {item.id: [_what(grid, member) for member in item.members] for item in grid.ensembles}
    wavlm_gender_dev_ox = ("wavlm", False, ("gender",), "undersample", True, "keep")
    assert members["best-2"] == [wavlm_gender_dev_ox, ("whisper", True, (), "undersample", False, "keep")]
    assert members["best-3"] == [wavlm_gender_dev_ox, ("wavlm", False, ("gender",), "undersample", False, "keep"),
                                 ("whisper", True, ("gender",), "undersample", True, "keep")]


def test_the_ox_table_shows_both_readings_of_minus_non_ox():
    grid = read_grid(PAPER_GRID)
    table = next(table for table in grid.tables if table.title.startswith("O/X"))
    readings = {row.system: _what(grid, row.system)[4:] for row in table.rows}
    assert readings == {"mmwavlm-no-ox": (False, "drop"), "mmwavlm-fewer-non-ox": (False, "drop-as-many-non-ox"),
                        "mmwavlm-ox-only": (False, "only"), "mmwavlm-dev-ox": (True, "keep"),
                        "mmwavlm-dev-ox-fewer-non-ox": (True, "drop-as-many-non-ox"),
                        "mmwavlm-dev-ox-ox-only": (True, "only")}


def test_the_papers_table_6_lists_the_submitted_systems_with_test1_as_a_labelled_stand_in():
    grid = read_grid(PAPER_GRID)
    assert grid.submissions is not None and "Table 6" in grid.submissions.title
    assert [row.system for row in grid.submissions.rows] == ["best-2", "best-3"]
    assert all(row.paper is None for row in grid.submissions.rows)  # no per-system test figures in the facts
    assert "0.6076" in grid.submissions.note  # the team's test average, the one test figure the facts give
    scores = {"Test1": {**dict.fromkeys(SCORE_NAMES, 0.5), "utterances": 7}}
    text = render_tables(grid, {}, {"best-2": {"members": [], "seeds": {0: {"scores": scores}}}}, scale="real",
                         corpus="corpus")
    section = text.split("## Submitted systems on the challenge test set (the paper's Table 6)\n", 1)[1]
    assert "**Test1, a stand-in**" in section and "Test3, whose labels are not public" in section
    best_2, best_3 = (next(line for line in section.splitlines() if line.startswith(f"| {item.name} |"))
                      for item in grid.ensembles)
    assert best_2.endswith("| Test1 (stand-in for Test3) | 7 | " + " | ".join(["0.5000 / n/a"] * 4) + " |")
    assert best_3.endswith("| " + " | ".join(["not run"] * 5) + " |")


# A hub id as the hub writes them: owner/name, letters, digits, '_', '.', '-' (no spaces, no '#').
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


def test_every_paper_config_at_real_scale_names_well_formed_hub_ids():
    grid = read_grid(PAPER_GRID)
    systems = sorted(path.stem for path in PAPER_GRID.parent.glob("*.yaml") if path.name != "grid.yaml")
    assert systems == sorted(set(grid.systems) - set(grid.variants))  # no config outside the grid, none missing
    assert {variant.of for variant in grid.variants.values()} <= set(systems)
    for system in grid.systems:
        config = grid.config(system, scale="real", corpus="c")  # every variant runs at real scale
        model = config.model
        ids = [model.backbone_path or DEFAULT_BACKBONE_IDS[model.backbone]]
        ids += [model.text_model, config.data.asr] if model.text else []
        ids += [model.speaker_embedding] if model.speaker_embedding else []
        for hub_id in ids:
            assert HUB_ID.fullmatch(hub_id), f"{system}: {hub_id!r} is not a hub id"
    assert grid.config("mmwavlm-spk-emb", scale="real", corpus="c").model.speaker_embedding == \
        "microsoft/wavlm-base-plus-sv"


def test_a_two_row_grid_runs_end_to_end_and_skips_finished_systems(tmp_path):
    corpus = write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 12, "Development": 6, "Test1": 6})
    grid = _grid(tmp_path / "grid")
    said: list[str] = []
    [tables] = reproduce(ReproduceOptions(grid=grid, corpus=corpus, scale="demo", out=tmp_path / "results"),
                         say=said.append)
    assert tables == tmp_path / "results" / "tables.md"
    text = tables.read_text()
    assert "Demo scale" in text and "/ 0.6530" in text and "N = 1" in text
    # The budget of the demo overrides (1 epoch of 12 utterances in batches of 4: 3 steps), then n.
    assert "| wavlm | 1 epoch (3 steps run) | 6 | " in text
    assert "| both | Development | 6 |" in text and "| both | Test1 | 6 |" in text and "not run" not in text
    assert {str(p.relative_to(tmp_path / "results" / "predictions"))
            for p in (tmp_path / "results" / "predictions").rglob("*.csv")} == {
        f"{name}/seed0-{split}.csv" for name in ("wavlm", "mmwavlm-gender", "both") for split in ("Development", "Test1")}
    assert said == ["wavlm seed 0: training", "mmwavlm-gender seed 0: training"]

    said.clear()
    [again] = reproduce(ReproduceOptions(grid=grid, corpus=corpus, scale="demo", out=tmp_path / "results"),
                        say=said.append)
    assert said == ["wavlm seed 0: done earlier, skipped", "mmwavlm-gender seed 0: done earlier, skipped"]
    assert again.read_text() == text


def _ids(path: Path) -> set[str]:
    return set(read_predictions(path).ids)


@pytest.mark.slow
def test_no_table_cell_is_computed_on_an_utterance_its_system_trained_on(tmp_path):
    # Development holds O/X utterances (the corpus cycles through N H A S X O): the dev-ox system trains on them.
    corpus = write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 12, "Development": 12, "Test1": 6})
    development = {utt.id for utt in open_corpus(corpus).split("Development")}
    moved = {utt.id for utt in open_corpus(corpus).split("Development") if utt.emo_class in ("O", "X")}
    assert len(moved) == 4
    grid = _grid(tmp_path / "grid", systems=("wavlm", "wavlm-gender-dev-ox"))
    results = tmp_path / "results"
    text = reproduce(ReproduceOptions(grid=grid, corpus=corpus, scale="demo", out=results, seeds=2))[0].read_text()
    predictions = results / "predictions"
    trained_on = {}
    for system in ("wavlm", "wavlm-gender-dev-ox"):
        for seed in (0, 1):
            trained_on[system, seed] = set(load_checkpoint(results / "runs" / system / f"seed{seed}")["training_ids"])
            for split in ("Development", "Test1"):
                scored = _ids(predictions / system / f"seed{seed}-{split}.csv")
                split_ids = {utt.id for utt in open_corpus(corpus).split(split)}
                assert scored == split_ids - trained_on[system, seed]  # every held-out utterance, and only those
    assert {system for (system, _), ids in trained_on.items() if ids & development} == {"wavlm-gender-dev-ox"}
    for seed in (0, 1):
        scored = _ids(predictions / "both" / f"seed{seed}-Development.csv")
        assert scored == development - trained_on["wavlm", seed] - trained_on["wavlm-gender-dev-ox", seed]
        assert scored == development - moved
    # Each row names its utterance count; the dev-ox system and the ensemble are scored on fewer.
    assert re.search(r"\| wavlm \| 1 epoch \(\d+ steps run\) \| 12 \| ", text)
    assert re.search(r"\| wavlm-gender-dev-ox \| 1 epoch \(\d+ steps run\) \| 8 \| ", text)
    assert "| both | Development | 8 |" in text and "| both | Test1 | 6 |" in text


@pytest.mark.slow
def test_seeds_give_mean_and_sd_per_cell_from_the_per_seed_scores(tmp_path):
    corpus = write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 12, "Development": 6})
    grid = _grid(tmp_path / "grid")
    results = tmp_path / "results"
    text = reproduce(ReproduceOptions(grid=grid, corpus=corpus, scale="demo", out=results, seeds=3))[0].read_text()
    assert "mean ± sd over N = 3 seeds" in text
    labels = {utt.id: utt.labels() for utt in open_corpus(corpus).split("Development")}
    for name in ("wavlm", "both"):
        per_seed = []
        for seed in range(3):
            table = read_predictions(results / "predictions" / name / f"seed{seed}-Development.csv")
            per_seed.append(ccc_scores(table.values, np.array([labels[i] for i in table.ids]))["average"])
        assert len(set(per_seed)) == 3  # three different trainings
        cell = f"{statistics.mean(per_seed):.3f} ± {statistics.stdev(per_seed):.3f}"
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert row.split(" | ")[-1].startswith(cell), (row, cell)
    for seed in range(3):
        assert load_checkpoint(results / "runs" / "wavlm" / f"seed{seed}")["config"]["seed"] == seed


def test_an_interrupted_training_is_resumed(tmp_path, monkeypatch):
    corpus = write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 8, "Development": 4})
    grid = _grid(tmp_path / "grid")
    from sertool.experiments import reproduce as module

    real_train = module.train
    calls = []

    def interrupted_once(config, run_dir, **kwargs):
        calls.append(kwargs.get("resume", False))
        if len(calls) == 1:
            real_train(config, run_dir, **kwargs)
            (Path(run_dir) / "summary.json").unlink()  # as if killed before the end
            raise KeyboardInterrupt
        return real_train(config, run_dir, **kwargs)

    monkeypatch.setattr(module, "train", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        reproduce(ReproduceOptions(grid=grid, corpus=corpus, scale="demo", out=tmp_path / "r", systems="wavlm"))
    reproduce(ReproduceOptions(grid=grid, corpus=corpus, scale="demo", out=tmp_path / "r", systems="wavlm"))
    assert calls == [False, True]


def test_the_variant_tables_run_their_variants_and_mark_real_scale_only_rows(tmp_path):
    corpus = write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 12, "Development": 6, "Test1": 6})
    path = _grid(tmp_path / "grid")
    grid = yaml.safe_load(path.read_text())
    grid["variants"] = {
        "wavlm_two-epochs": {"of": "wavlm", "source": "paper", "what": "two epochs",
                             "set": {"train": {"epochs": 2}}},
        "wavlm_real-only": {"of": "wavlm", "source": "release", "what": "needs the real models",
                            "set": {"train": {"epochs": 3}}, "scales": ["real"]}}
    grid["tables"].append({"title": "Variants", "part": "variants", "note": "What the variants measure.",
                           "rows": [{"system": "wavlm"}, {"system": "wavlm_two-epochs"}, {"system": "wavlm_real-only"}]})
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    said: list[str] = []
    [written] = reproduce(ReproduceOptions(grid=path, corpus=corpus, scale="demo", out=tmp_path / "r",
                                           tables="variants"), say=said.append)
    assert written == tmp_path / "r" / "variants.md"
    text = written.read_text()
    assert said[:2] == ["wavlm seed 0: training", "wavlm_two-epochs seed 0: training"]
    assert said[2].startswith("wavlm_real-only: demo scale: not run")
    assert "## Variants\n\nWhat the variants measure.\n" in text and "## Two systems" not in text
    assert "Ensembles" not in text and "Table 6" not in text  # the paper's part only
    assert "| wavlm | 1 epoch (3 steps run) | 6 | " in text and "| wavlm_two-epochs | 2 epochs (6 steps run) | 6 | " in text
    assert "| wavlm_real-only | — | " + " | ".join(["real scale only"] * 5) + " |" in text
    config = load_checkpoint(tmp_path / "r" / "runs" / "wavlm_two-epochs" / "seed0")["config"]
    assert config["train"]["epochs"] == 2
    # The paper's part afterwards: its own file beside the variants', which it leaves as they were.
    [paper] = reproduce(ReproduceOptions(grid=path, corpus=corpus, scale="demo", out=tmp_path / "r"))
    assert paper.name == "tables.md" and "## Two systems" in paper.read_text() and written.read_text() == text
    with pytest.raises(SertoolError, match="--systems mmwavlm-gender: not in the variants tables"):
        reproduce(ReproduceOptions(grid=path, corpus=corpus, scale="demo", out=tmp_path / "r", tables="variants",
                                   systems="mmwavlm-gender"))
