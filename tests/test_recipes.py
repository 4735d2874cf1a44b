"""Recipes: the backbone's defaults fill exactly the fields the user left unset, are recorded in the run
folder and the checkpoints, and the paper's defaults stay the paper's."""
from __future__ import annotations

import dataclasses

import pytest
import yaml
from click.testing import CliRunner

from sertool.cli.commands import cli
from sertool.core.config import BACKBONE_RECIPES, RECIPES, Config
from sertool.store.checkpoints import load_checkpoint
from sertool.training.setup import resolve_train_config
from tests.corpus_files import write_learnable_corpus

SMALL = RECIPES["small-cpu"]


def _get(config: Config, key: str):
    section, _, name = key.rpartition(".")
    return getattr(getattr(config, section) if section else config, name)


def _flag_name(key: str) -> str:
    section, _, name = key.rpartition(".")
    return f"{section}__{name}" if section else name


def _resolve(config_file=None, **flags):
    return resolve_train_config(config_file, flags, out="run", resume=None)[0]


def test_the_small_recipe_changes_something_and_only_known_fields():
    assert SMALL, "the fbank recipe should differ from the paper's defaults"
    defaults = Config()
    assert all(_get(defaults, key) != value for key, value in SMALL.items()), "a recipe value equal to the default"


def test_fbank_without_a_config_gets_the_small_recipe_and_records_it():
    config = _resolve(model__backbone="fbank", model__aux=("gender",))
    assert config.recipe == BACKBONE_RECIPES["fbank"] == "small-cpu"
    for key, value in SMALL.items():
        assert _get(config, key) == value, key


@pytest.mark.parametrize("backbone", ["wavlm", "whisper", "hubert", "wav2vec2", None])
def test_pretrained_backbones_keep_the_papers_defaults(backbone):
    config = _resolve(model__backbone=backbone)
    assert config.recipe == "paper"
    expected = Config()
    expected.recipe = "paper"
    if backbone:
        expected.model.backbone = backbone
    assert config == expected


@pytest.mark.parametrize("key", sorted(SMALL))
def test_a_flag_wins_over_the_recipe(key):
    value = _get(Config(), key)  # the paper's default, given explicitly
    config = _resolve(model__backbone="fbank", **{_flag_name(key): value})
    assert _get(config, key) == value
    assert config.recipe == "small-cpu"


def test_a_config_file_wins_over_the_recipe_and_a_run_config_reproduces_itself(tmp_path):
    key = sorted(SMALL)[0]
    section, _, name = key.rpartition(".")
    paper_value = _get(Config(), key)
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"model": {"backbone": "fbank"}, section: {name: paper_value}}
                                          if section else {"model": {"backbone": "fbank"}, name: paper_value}))
    config = _resolve(str(config_file))
    assert _get(config, key) == paper_value
    # A run folder's config.yaml holds every field: read back, the recipe changes nothing.
    saved = tmp_path / "run.yaml"
    saved.write_text(yaml.safe_dump(config.to_dict()))
    assert _resolve(str(saved)) == config


def test_recipe_paper_turns_the_small_recipe_off():
    config = _resolve(model__backbone="fbank", recipe="paper")
    expected = dataclasses.replace(Config(), recipe="paper")
    expected.model.backbone = "fbank"
    assert config == expected


def test_train_writes_the_resolved_recipe_into_config_yaml_and_checkpoints(tmp_path):
    corpus = write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 8, "Development": 4})
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--backbone", "fbank", "--aux", "gender", "--corpus", str(corpus),
                                      "--out", str(out), "--num-workers", "0", "--fbank-dim", "16",
                                      "--head-hidden-dim", "8", "--epochs", "1", "--max-batch-s", "8"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    stored = load_checkpoint(out)["config"]
    assert saved == stored
    assert saved["recipe"] == "small-cpu"
    for key, value in SMALL.items():
        if key in ("model.fbank_dim", "model.head_hidden_dim", "train.epochs", "train.max_batch_s"):
            continue  # set on the command line above
        section, _, name = key.rpartition(".")
        written = saved[section][name] if section else saved[name]
        assert written == (list(value) if isinstance(value, tuple) else value), key


def test_init_from_keeps_the_initial_models_architecture_and_takes_the_training_recipe(tmp_path):
    """The weights of --init-from fix the model section: the recipe fills only the training fields."""
    from sertool.store.checkpoints import load_checkpoint
    from sertool.training.loop import train
    from tests.systems import small_config

    corpus = write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 4, "Development": 3})
    train(small_config(corpus, epochs=1), tmp_path / "source")
    config = _resolve(train__init_from=str(tmp_path / "source"))
    source = Config.from_dict(load_checkpoint(tmp_path / "source")["config"]).model
    assert config.model == source  # head_hidden_dim 16, dropout 0: not the recipe's 256 / 0.2
    assert config.recipe == "small-cpu"
    assert config.train.lr_heads == SMALL["train.lr_heads"] and config.train.sampling == SMALL["train.sampling"]
