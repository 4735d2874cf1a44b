"""`sertool train` through the CLI: config files, flag overrides, hub ids offline, run-folder rules."""
from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from sertool.cli.commands import cli
from sertool.core.config import RECIPES
from sertool.store.checkpoints import load_checkpoint
from tests.cases import case
from tests.corpus_files import write_learnable_corpus
from tests.tiny_speech import save_tiny_wavlm

FAST = ["--num-workers", "0", "--epochs", "1", "--batch-size", "4", "--head-hidden-dim", "8", "--accum-steps", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c", per_split={"Train": 8, "Development": 4})


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args], catch_exceptions=False)


def test_offline_default_hub_id_fails_fast_and_says_how_to_pass_a_folder(corpus, tmp_path, offline_hub,
                                                                         network_waits):
    result = run("train", "--corpus", corpus, "--backbone", "wavlm", "--aux", "gender", "--out", tmp_path / "r", *FAST)
    assert result.exit_code == 2
    assert "microsoft/wavlm-large" in result.output and "--backbone-path DIR" in result.output
    assert network_waits.none(), network_waits  # fast: nothing waited on a network or slept


def test_wavlm_from_a_local_folder_trains(corpus, tmp_path):
    folder = save_tiny_wavlm(tmp_path / "tiny-wavlm")
    result = run("train", "--corpus", corpus, "--backbone", "wavlm", "--backbone-path", folder, "--aux", "gender",
                 "--out", tmp_path / "r", *FAST)
    assert result.exit_code == 0, result.output
    checkpoint = load_checkpoint(tmp_path / "r")
    assert checkpoint["pretrained"]["backbone"] == str(folder)
    assert checkpoint["config"]["model"]["aux"] == ["gender"]


def test_flags_override_the_config_file(corpus, tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"data": {"corpus": str(corpus)},
                                           "model": {"backbone": "fbank", "fbank_dim": 16, "pooling": "mean"},
                                           "train": {"epochs": 3, "lr_heads": 0.01}}))
    result = run("train", "--config", config_file, "--epochs", "1", "--out", tmp_path / "r",
                 *FAST[:2], "--batch-size", "4", "--no-text")
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 1  # the flag
    assert saved["train"]["lr_heads"] == 0.01 and saved["model"]["pooling"] == "mean"  # the file
    assert saved["train"]["accum_steps"] == RECIPES["small-cpu"]["train.accum_steps"]  # fbank's recipe
    assert saved["train"]["weight_decay"] == 1e-4  # the default (no recipe sets it)


@pytest.mark.parametrize(("content", "message"), [
    ({"train": {"epochz": 3}}, "unknown key train.epochz"),
    ({"train": {"epochs": "many"}}, "train.epochs must be int"),
    ({"model": {"aux": ["gender", "age"]}}, "age is not one of gender, speaker"),
    ("- just\n- a list\n", "top level must be a mapping"),
    # An inline comment without a space before '#' is part of the value in YAML.
    ("model:\n  text_model: FacebookAI/roberta-large# frozen\n", "model.text_model 'FacebookAI/roberta-large# frozen'"
                                                                 ": not a model id or folder. An inline YAML comment"),
    ({"data": {"asr": " openai/whisper-large-v3"}}, "data.asr ' openai/whisper-large-v3': a model id or folder cannot"),
])
def test_bad_config_files_are_named(tmp_path, content, message):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    result = run("train", "--config", config_file, "--out", tmp_path / "r")
    assert result.exit_code == 2 and message in result.output and str(config_file) in result.output


@case("guards", "a --config key misspelt (trian:, train: {epoch: 1}) or at the wrong level (epochs: at the top)",
      "one line naming the closest known key or the section it belongs in, and every known key of that level")
@pytest.mark.parametrize(("content", "message"), [
    ("trian:\n  epochs: 1\n", "unknown key trian; did you mean train? Known at the top level: the sections data, "
                               "model, train and the fields recipe, seed"),
    ("train:\n  epoch: 1\n", "unknown key train.epoch; did you mean epochs? Known in train: accum_steps, "),
    ("sed: 3\n", "unknown key sed; did you mean seed?"),
    ("epochs: 3\n", "unknown key epochs; it belongs under train: (train.epochs). Known at the top level: "),
    ("model:\n  lr_heads: 0.1\n", "unknown key model.lr_heads; it belongs under train: (train.lr_heads). Known in "
                                   "model: "),
    ("train:\n  seed: 3\n", "unknown key train.seed; it belongs at the top level. Known in train: "),
    ("zzz: 1\n", "unknown key zzz. Known at the top level: the sections data, model, train and the fields"),
])
def test_an_unknown_config_key_names_the_closest_known_key_at_its_level(corpus, tmp_path, content, message):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(content)
    result = run("train", "--config", config_file, "--corpus", corpus, "--out", tmp_path / "r")
    assert result.exit_code == 2 and f"error: --config {config_file}: {message}" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_resume_takes_no_other_settings(tmp_path):
    result = run("train", "--resume", tmp_path, "--epochs", "3")
    assert result.exit_code == 2 and "drop --epochs" in result.output
    assert run("train", "--corpus", tmp_path).exit_code == 2  # no --out


def test_aux_none_resets_the_config_files_tasks(corpus, tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"model": {"backbone": "fbank", "fbank_dim": 16, "aux": ["gender"]}}))
    result = run("train", "--config", config_file, "--corpus", corpus, "--aux", "none", "--out", tmp_path / "r", *FAST)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["model"]["aux"] == []


def test_threads_sets_the_training_process_s_torch_threads(corpus, tmp_path, monkeypatch):
    """--threads N: torch computes the run with N intra-op threads (read inside the loss, at every step)."""
    import torch

    from sertool.models import losses

    before = torch.get_num_threads()
    seen: list[int] = []
    original = losses.SERLoss.__call__

    def counting(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(losses.SERLoss, "__call__", counting)
    wanted = 1 if before > 1 else 2
    try:
        result = run("train", "--corpus", corpus, "--backbone", "fbank", "--fbank-dim", "16", "--out", tmp_path / "r",
                     "--threads", wanted, *FAST)
        assert result.exit_code == 0, result.output
        assert seen and set(seen) == {wanted}
    finally:
        torch.set_num_threads(before)
    refused = CliRunner().invoke(cli, ["train", "--corpus", str(corpus), "--out", str(tmp_path / "r2"), "--threads",
                                       "-1"])
    assert refused.exit_code == 2 and "--threads" in refused.output and not (tmp_path / "r2").exists()


def test_bounds_refuse_non_finite_values_and_each_edge():
    from sertool.core.config import Bounds

    dropout = Bounds(at_least=0, below=1)
    assert [dropout.problem(value) for value in (0.0, 0.999)] == [None, None]
    assert dropout.problem(1.0) == dropout.problem(-0.1) == "must be in [0, 1)"
    assert dropout.problem(float("nan")) == dropout.problem(float("-inf")) == "must be a finite number"
    crop = Bounds(at_least=0.25, zero=True)
    assert (crop.problem(0.0), crop.problem(0.25), crop.problem(0.1)) == (None, None, "must be 0 or ≥ 0.25")
    assert Bounds(above=0).problem(0) == "must be > 0" and Bounds(at_most=3).problem(10**400) == "must be ≤ 3"


def test_train_help_groups_the_options_by_config_section():
    from sertool.core.config import config_options

    text = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200).output
    titles = ["Run and output:", "Data (the config's data section):", "Model (the config's model section):",
              "Training (the config's train section, and the seed):"]
    starts = [text.index(title) for title in titles]
    assert starts == sorted(starts)
    ends = [*starts[1:], len(text)]
    bounds = dict(zip(["run", "data", "model", "train"], zip(starts, ends, strict=True), strict=True))
    for spec in config_options():
        start, end = bounds[spec.section or "train"]
        assert f"  {spec.flag}" in text[start:end], spec.flag
    start, end = bounds["run"]
    assert all(flag in text[start:end] for flag in ("--config", "--out", "--resume", "--force", "--quiet"))


@pytest.mark.parametrize("backbone", ["fbank", "wavlm"])
def test_train_help_shows_the_default_each_backbone_really_gets(backbone):
    """Each config flag's help gives the field's default and, where the backbone's recipe sets another value,
    that value and the backbone: what `sertool train --backbone B` resolves a field left unset to."""
    import click

    from sertool.core.config import BACKBONE_RECIPES, Config, apply_recipe, config_options

    config = Config()
    config.model.backbone = backbone
    recipe = apply_recipe(config, given={("model", "backbone")})
    assert recipe == BACKBONE_RECIPES.get(backbone, "paper")
    command = cli.commands["train"]
    ctx = click.Context(command, info_name="train")
    helps = {param.name: (param.get_help_record(ctx) or ("", ""))[1] for param in command.get_params(ctx)}
    changed = []
    for spec in config_options():
        help_text = helps[f"{spec.section}__{spec.name}" if spec.section else spec.name]
        value = getattr(getattr(config, spec.section) if spec.section else config, spec.name)
        shown = ", ".join(value) if isinstance(value, tuple | list) else str(value)
        assert "  [default: " in help_text, spec.flag
        if spec.name in ("recipe", "backbone") or value == spec.default:  # the two the choice is made from
            assert f"recipe ({backbone})" not in help_text, spec.flag
        else:
            assert f", {recipe} recipe ({backbone}): {shown}" in help_text, (spec.flag, help_text)
            changed.append(spec.flag)
    assert ("--head-hidden-dim" in changed) == (backbone == "fbank")
    assert "[default: 1024, small-cpu recipe (fbank): 256; in [1, 16384]]" in helps["model__head_hidden_dim"]
