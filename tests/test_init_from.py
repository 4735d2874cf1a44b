"""`train --init-from`: fine-tuning from a sertool run, an exported folder or the authors' released model."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from sertool.cli.commands import cli
from sertool.core.config import Config
from sertool.core.errors import SertoolError
from sertool.data.corpus import open_corpus
from sertool.data.records import Utterance
from sertool.inference.predictor import InferenceOptions, open_predictor
from sertool.store.checkpoints import load_checkpoint
from sertool.training.loop import _check_window, train
from sertool.training.setup import resolve_train_config
from tests.cases import case
from tests.corpus_files import write_learnable_corpus
from tests.model_files import as_before_digests, cast_floating, rewrite_weights
from tests.released_layout import released_arguments, released_state, save_backbone_config, save_released
from tests.systems import small_config
from tests.test_reliability import one_line_error

pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

# Training flags that keep the runs tiny, and a learning rate of 0: the run must then keep its initial model.
FROZEN_RUN = ["--epochs", "1", "--sampling", "whole", "--batch-size", "4", "--accum-steps", "1", "--num-workers", "0",
              "--lr-heads", "0", "--lr-backbone", "0", "--warmup-fraction", "0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_learnable_corpus(tmp_path_factory.mktemp("corpus") / "c", per_split={"Train": 4, "Development": 3})


@pytest.fixture(scope="module")
def source_run(corpus, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / "source"
    train(small_config(corpus), folder)
    return folder


def run(*args) -> object:
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def development_values(model, corpus: Path, **options) -> np.ndarray:
    utterances = open_corpus(corpus).split("Development")
    return open_predictor(model, InferenceOptions(**options)).predict(utterances).predictions.values


def test_fine_tuning_the_released_model_starts_from_it(corpus, tmp_path):
    backbone = save_backbone_config("wavlm", tmp_path / "backbone")
    arguments = released_arguments("wavlm", predict_gender=True)
    released = save_released(tmp_path / "released", arguments, released_state("wavlm", arguments))
    result = run("train", "--init-from", released, "--backbone-path", backbone, "--corpus", corpus, *FROZEN_RUN,
                 "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    model = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["model"]
    assert (model["projection_dim"], model["pooling"], model["head_norm"], model["aux"]) == (16, "mean", False, ["gender"])
    best = load_checkpoint(tmp_path / "run")
    assert best["backbone_weights"] == "stored" and best["config"]["train"]["init_from"] == str(released)
    assert any(key.startswith("backbone.model.feature_extractor.") for key in best["model_state"])  # frozen CNN kept
    np.testing.assert_array_equal(development_values(tmp_path / "run", corpus, backbone_path=str(backbone)),
                                  development_values(released, corpus, backbone_path=str(backbone)))


def test_fine_tuning_a_run_or_its_export_starts_from_it(corpus, source_run, tmp_path):
    assert run("export", source_run, "--out", tmp_path / "exported").exit_code == 0
    for name, source in (("from-run", source_run), ("from-folder", tmp_path / "exported")):
        result = run("train", "--init-from", source, "--corpus", corpus, *FROZEN_RUN, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        state, initial = load_checkpoint(tmp_path / name)["model_state"], load_checkpoint(source_run)["model_state"]
        assert state.keys() == initial.keys() and all(torch.equal(state[key], initial[key]) for key in state)
        assert load_checkpoint(tmp_path / name)["backbone_weights"] == "published"


def test_an_architecture_flag_that_strands_the_weights_is_refused(corpus, source_run, tmp_path):
    result = run("train", "--init-from", source_run, "--corpus", corpus, "--head-hidden-dim", "8", *FROZEN_RUN,
                 "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "--init-from" in result.output and "has another shape in the model the run's settings describe" in result.output


@case("checkpoints", "--init-from a model folder whose tensors were cast to float16, or whose floor is unfitted",
      "one line naming --init-from, model.safetensors and the tensor or part; nothing trained")
@pytest.mark.parametrize("damage", ["float16", "unfitted floor"])
def test_init_from_a_changed_folder_is_refused_naming_the_tensor(damage, corpus, tmp_path):
    config = small_config(corpus, epochs=1)
    config.model.floor_blend = True
    train(config, tmp_path / "source")
    assert run("export", tmp_path / "source", "--out", tmp_path / "folder").exit_code == 0
    rewrite_weights(tmp_path / "folder", cast_floating(torch.float16) if damage == "float16"
                    else lambda tensors: tensors["floor_blend.alphas"].zero_())
    result = run("train", "--init-from", tmp_path / "folder", "--corpus", corpus, *FROZEN_RUN, "--out", tmp_path / "run")
    line = one_line_error(result)
    assert line.startswith(f"error: --init-from {tmp_path / 'folder' / 'model.safetensors'}: ")
    assert (re.search(r": tensor \S+ is float16 where the model needs float(32|64) \[", line) if damage == "float16"
            else "its floor_blend was never fitted" in line)
    assert not (tmp_path / "run" / "best.pt").exists()


def test_dropping_an_auxiliary_task_is_reported_not_refused(corpus, source_run, tmp_path):
    result = run("train", "--init-from", source_run, "--corpus", corpus, "--aux", "none", *FROZEN_RUN,
                 "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "gender_head weights do not fit this run and are not used" in " ".join(result.output.split())


def test_the_initial_model_sets_the_model_section_under_the_file_and_the_flags(source_run, tmp_path):
    config_file = tmp_path / "settings.yaml"
    config_file.write_text("model:\n  head_dropout: 0.3\ntrain:\n  epochs: 3\n")
    config, _, _ = resolve_train_config(str(config_file), {"train__init_from": str(source_run), "model__aam_scale": 20.0},
                                       out=str(tmp_path / "run"), resume=None)
    source = Config.from_dict(load_checkpoint(source_run)["config"]).model
    assert (config.model.backbone, config.model.fbank_dim, config.model.head_hidden_dim) == ("fbank", 32, 16)
    assert config.model.aux == source.aux == ("gender",)
    assert (config.model.head_dropout, config.model.aam_scale, config.train.epochs) == (0.3, 20.0, 3)
    with pytest.raises(SertoolError, match="--resume uses the run's own config"):
        resolve_train_config(None, {"train__init_from": str(source_run)}, out=None, resume=str(source_run))


def test_a_fixed_whisper_window_refuses_longer_clips_before_training(tmp_path):
    config = Config()
    config.model.whisper_window_s = 15.0

    def utterance(name: str, duration_s: float) -> Utterance:
        return Utterance(id=name, audio_path=tmp_path / name, split="x", duration_s=duration_s)

    short, long = [utterance("a.wav", 9.0)], [utterance("b.wav", 16.5)]
    _check_window(config, short, short)
    with pytest.raises(SertoolError, match=r"training split holds utterances up to 16.5 s \(b.wav\).*--max-duration-s 15"):
        _check_window(config, long, short)
    config.data.max_duration_s = 12.0  # training crops fit the window; validation is never cropped
    _check_window(config, long, short)
    with pytest.raises(SertoolError, match="validation split holds utterances up to 16.5 s"):
        _check_window(config, short, long)


def test_fine_tuning_the_released_whisper_model_with_new_lora_adapters_starts_from_it(corpus, tmp_path):
    backbone = save_backbone_config("whisper", tmp_path / "backbone")
    arguments = released_arguments("whisper", finetune_method="finetune")
    released = save_released(tmp_path / "released", arguments, released_state("whisper", arguments))
    result = run("train", "--init-from", released, "--backbone-path", backbone, "--lora-rank", "2", "--corpus", corpus,
                 *FROZEN_RUN, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    state = load_checkpoint(tmp_path / "run")["model_state"]
    assert any(key.endswith("q_proj.lora_a") for key in state) and any(key.endswith("q_proj.base.weight") for key in state)
    np.testing.assert_allclose(development_values(tmp_path / "run", corpus, backbone_path=str(backbone)),
                               development_values(released, corpus, backbone_path=str(backbone)), atol=1e-6)


@pytest.fixture(scope="module")
def ox_corpus(tmp_path_factory) -> Path:
    """Development with O and X utterances (classes cycle N, H, A, S, X, O), for --dev-ox-to-train."""
    return write_learnable_corpus(tmp_path_factory.mktemp("ox-corpus") / "c", per_split={"Train": 4, "Development": 6})


def test_a_run_from_a_dev_ox_run_is_scored_only_on_what_neither_trained_on(ox_corpus, tmp_path):
    config = small_config(ox_corpus, epochs=1)
    config.data.dev_ox_to_train = True  # the initial model trains on Development's O/X
    train(config, tmp_path / "a")
    development = open_corpus(ox_corpus).split("Development")
    moved = {utt.id for utt in development if utt.emo_class in ("O", "X")}
    assert moved
    result = run("train", "--init-from", tmp_path / "a", "--corpus", ox_corpus, *FROZEN_RUN, "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    recorded = load_checkpoint(tmp_path / "b")
    assert set(recorded["training_ids"]) == set(load_checkpoint(tmp_path / "a")["training_ids"]) >= moved
    assert "training_data_unknown_from" not in recorded  # everything it trained on is known
    scored = run("evaluate", tmp_path / "b", "--corpus", ox_corpus, "--split", "Development",
                 "--scores", tmp_path / "b.json")
    assert scored.exit_code == 0, scored.output
    (system,) = json.loads((tmp_path / "b.json").read_text())["systems"]
    assert system["utterances"] == len(development) - len(moved)  # what A held out, as A is scored on
    assert (system["excluded_trained_on"], system["training_data_note"]) == (len(moved), None)


def test_a_run_from_a_model_of_unknown_training_data_says_so_in_every_score(corpus, source_run, tmp_path):
    assert run("export", source_run, "--out", tmp_path / "older").exit_code == 0
    description = tmp_path / "older" / "config.json"  # as an older sertool wrote it: no training_ids
    description.write_text(json.dumps(as_before_digests({key: value for key, value in
                                                         json.loads(description.read_text()).items()
                                                         if key != "training_ids"})))
    (tmp_path / "older" / "training_ids.json").unlink()
    initial = str(tmp_path / "older")
    result = run("train", "--init-from", initial, "--corpus", corpus, *FROZEN_RUN, "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    recorded = load_checkpoint(tmp_path / "b")
    assert recorded["training_data_unknown_from"] == [initial]
    assert set(recorded["training_ids"]) == {utt.id for utt in open_corpus(corpus).split("Train")}
    note = f"started from {initial} (--init-from), whose training data is unknown"
    table = run("evaluate", tmp_path / "b", "--corpus", corpus, "--split", "Development",
                "--scores", tmp_path / "b.json")
    assert table.exit_code == 0, table.output
    assert note in " ".join(table.output.split())
    (system,) = json.loads((tmp_path / "b.json").read_text())["systems"]
    assert note in system["training_data_note"] and system["utterances"] == 3  # still its own held-out set
    combined = run("ensemble", tmp_path / "b", source_run, "--corpus", corpus, "--split", "Development")
    assert combined.exit_code == 0, combined.output
    assert f"ensemble: {note}" in " ".join(combined.output.split())
