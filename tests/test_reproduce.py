"""`make reproduce` in miniature: a two-row grid end to end, then again with nothing left to do."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from sertool.config import DEFAULT_BACKBONE_IDS
from sertool.experiments.grid import read_grid
from sertool.experiments.reproduce import reproduce
from tests.corpus_files import write_learnable_corpus

PAPER_GRID = Path(__file__).resolve().parent.parent / "configs" / "paper" / "grid.yaml"


def _grid(folder: Path) -> Path:
    """Two of the paper's systems, with demo stand-ins and overrides small enough for a test."""
    folder.mkdir()
    for system in ("wavlm", "mmwavlm-gender"):
        shutil.copy(PAPER_GRID.parent / f"{system}.yaml", folder)
    grid = yaml.safe_load(PAPER_GRID.read_text())
    grid["tables"] = [{"title": "Two systems", "rows": [{"system": "wavlm", "paper": [0.653, 0.7, 0.5651, 0.6394]},
                                                        {"system": "mmwavlm-gender"}]}]
    grid["ensembles"] = [{"name": "both", "members": ["wavlm", "mmwavlm-gender"]}]
    grid["demo_scale"]["overrides"] = {
        "data": {"num_workers": 0},
        "model": {"head_hidden_dim": 8, "fbank_dim": 16, "head_dropout": 0.0},
        "train": {"epochs": 1, "batch_size": 4, "accum_steps": 1, "sampling": "whole"},
    }
    (folder / "grid.yaml").write_text(yaml.safe_dump(grid, sort_keys=False))
    return folder / "grid.yaml"


def test_every_system_of_the_paper_grid_has_a_loadable_config():
    grid = read_grid(PAPER_GRID)
    assert len(grid.systems) == 12
    for system in grid.systems:
        demo = grid.config(system, scale="demo", corpus="c")
        assert demo.model.backbone == "fbank" and demo.train.epochs == 6
        real = grid.config(system, scale="real", corpus="c")
        assert real.model.backbone in ("wavlm", "whisper")
        assert real.model.text_model == "FacebookAI/roberta-large"
    assert grid.config("mmwhisper", scale="real", corpus="c").model.backbone == "whisper"
    located = grid.config("mmwavlm", scale="real", corpus="c",
                          model_locations={"microsoft/wavlm-large": "/models/wavlm", "FacebookAI/roberta-large": "/m/rb"})
    assert (located.model.backbone_path, located.model.text_model) == ("/models/wavlm", "/m/rb")


# A hub id as the hub writes them: owner/name, letters, digits, '_', '.', '-' (no spaces, no '#').
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


def test_every_paper_config_at_real_scale_names_well_formed_hub_ids():
    grid = read_grid(PAPER_GRID)
    systems = sorted(path.stem for path in PAPER_GRID.parent.glob("*.yaml") if path.name != "grid.yaml")
    assert systems == sorted(grid.systems)  # no config outside the grid, none missing
    for system in systems:
        config = grid.config(system, scale="real", corpus="c")
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
    tables = reproduce(grid, corpus=corpus, scale="demo", out_dir=tmp_path / "results", say=said.append)
    text = tables.read_text()
    assert "Demo scale" in text and "| wavlm | " in text and "/ 0.6530" in text
    assert "| both | Development |" in text and "| both | Test1 |" in text and "not run" not in text
    assert {p.name for p in (tmp_path / "results" / "predictions").iterdir()} == {
        "wavlm-Development.csv", "wavlm-Test1.csv", "mmwavlm-gender-Development.csv", "mmwavlm-gender-Test1.csv"}
    assert said == ["wavlm: training", "mmwavlm-gender: training"]

    said.clear()
    again = reproduce(grid, corpus=corpus, scale="demo", out_dir=tmp_path / "results", say=said.append)
    assert said == ["wavlm: done earlier, skipped", "mmwavlm-gender: done earlier, skipped"]
    assert again.read_text() == text


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
        reproduce(grid, corpus=corpus, scale="demo", out_dir=tmp_path / "r", only=["wavlm"])
    reproduce(grid, corpus=corpus, scale="demo", out_dir=tmp_path / "r", only=["wavlm"])
    assert calls == [False, True]
