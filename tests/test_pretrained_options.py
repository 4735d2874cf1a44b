"""The pretrained models a model is built from, as the caller names them: checked when the model is opened,
and every message, then or while the model is built, spelling the option as the caller does (the CLI's
``--text-model DIR``, or ``sertool.load``'s ``text_model='DIR'``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

import sertool
from sertool.cli.commands import cli
from sertool.core.config import Config, ModelConfig
from sertool.core.errors import SertoolError
from sertool.core.hub import API_SPELLING, CLI_SPELLING, WEIGHTS_PATTERNS
from sertool.models.backbones import build_backbone
from sertool.models.ser_model import SERModel
from sertool.models.speaker_embedding import LOG_MEL_STATS
from sertool.store.checkpoints import save_checkpoint, stored_state
from tests.cases import case
from tests.tiny_speech import save_tiny_wavlm_xvector, save_tiny_whisper
from tests.tiny_text import save_tiny_text_encoder

SAMPLE_RATE = 16_000
SIZES = dict(fbank_dim=16, head_hidden_dim=8, head_dropout=0.0)
# field → (what the messages call it, a tiny model of that kind)
PARTS = {"text_model": ("text encoder", save_tiny_text_encoder),
         "speaker_embedding": ("speaker model", save_tiny_wavlm_xvector)}


def checkpoint(path: Path, **fields) -> Path:
    """An untrained fbank model with these model fields, saved as a checkpoint (its pretrained parts must load
    to save it, so they are given as folders and then replaced in the stored config)."""
    built = {key: value for key, value in fields.items() if not key.startswith("stored_")}
    model = SERModel(ModelConfig(backbone="fbank", **{**SIZES, **built}))
    stored = ModelConfig(backbone="fbank", **{**SIZES, **built,
                                             **{key.removeprefix("stored_"): value for key, value in fields.items()
                                                if key.startswith("stored_")}})
    save_checkpoint({"config": Config(model=stored).to_dict(), "model_state": stored_state(model)}, path)
    return path


def one_clip(folder: Path) -> Path:
    path = folder / "clip.wav"
    sf.write(path, (0.1 * np.sin(np.arange(SAMPLE_RATE) / 7.0)).astype(np.float32), SAMPLE_RATE)
    return path


def model_fields(field: str, location: str) -> dict[str, object]:
    return {"text": True, field: location} if field == "text_model" else {field: location}


@case("inference", "an MM model's text encoder or a +S Emb model's speaker model in no cache, offline",
      "refused when the model is opened (`sertool.load`, the command's start), not at the first prediction: one "
      "line naming the files needed and the option as the caller spells it (`--text-model DIR`, `text_model='DIR'`)")
@pytest.mark.parametrize("field", list(PARTS))
def test_a_missing_text_or_speaker_model_is_refused_at_load_naming_its_files_and_the_callers_option(
        field, tmp_path, monkeypatch, offline_hub):
    """Offline, with the model in no cache: `sertool.load` (not the first predict) and the CLI refuse in one line
    naming what of it is needed (config.json, tokenizer or feature-extractor files, weights: not the whole
    repository) and the option as the caller spells it; with a folder given there it loads."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    what, save = PARTS[field]
    folder = save(tmp_path / "part")
    path = checkpoint(tmp_path / "model.pt", **model_fields(field, str(folder)), **{f"stored_{field}": "someone/part"})
    with pytest.raises(SertoolError) as refused:
        sertool.load(path)  # raises here, before any predict
    message = str(refused.value)
    assert message.startswith(f"{path}: its {what} someone/part is not in the local model-hub cache")
    assert "config.json, tokenizer or feature-extractor files and PyTorch weights, not the whole repository" in message
    includes = " ".join(f'--include "{pattern}"' for pattern in WEIGHTS_PATTERNS)
    assert f"`hf download someone/part {includes} --local-dir DIR`" in message
    assert message.endswith(f"pass {field}='DIR'") and CLI_SPELLING.name(field) not in message
    clip = one_clip(tmp_path)
    result = CliRunner().invoke(cli, ["predict", str(path), str(clip)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"pass {CLI_SPELLING.name(field)} DIR" in result.output and f"{field}=" not in result.output
    # A folder without config.json is refused at load too, naming what it must hold.
    (tmp_path / "empty").mkdir()
    with pytest.raises(SertoolError, match=rf"^{field}='.*empty': no config\.json in this folder; the {what} of "
                                           r".*needs its config\.json, tokenizer or feature-extractor files"):
        sertool.load(path, **{field: tmp_path / "empty"})
    transcripts = {"transcripts": "i am happy"} if field == "text_model" else {}
    assert 1 <= sertool.load(path, **{field: folder}).predict(str(clip), **transcripts)["arousal"] <= 7


def test_the_log_mel_stand_in_needs_no_model(tmp_path, monkeypatch, offline_hub):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    path = checkpoint(tmp_path / "model.pt", speaker_embedding=LOG_MEL_STATS)
    assert 1 <= sertool.load(path).predict(str(one_clip(tmp_path)))["valence"] <= 7


@case("inference", "a pretrained model that fails while the first `predict` builds the model (a text encoder "
      "folder without weights), from Python",
      "one line naming `text_model='…'` (the CLI: `--text-model …`), never the other's spelling")
def test_a_text_model_that_fails_while_the_model_is_built_is_named_as_the_caller_spells_it(tmp_path):
    """A folder that passes the check at load (it has config.json) but holds no weights fails at the first
    predict, when the model is built: from Python the message says text_model='…', from the CLI --text-model …"""
    folder = save_tiny_text_encoder(tmp_path / "text")
    path = checkpoint(tmp_path / "model.pt", text=True, text_model=str(folder))
    broken = tmp_path / "no-weights"
    broken.mkdir()
    for item in folder.iterdir():
        if item.suffix != ".safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    clip = one_clip(tmp_path)
    model = sertool.load(path, text_model=broken)  # config.json is there: opened
    with pytest.raises(SertoolError, match=rf"^text_model='{broken}': not a loadable model folder") as refused:
        model.predict(str(clip), transcripts="i am happy")
    assert "--text-model" not in str(refused.value)
    result = CliRunner().invoke(cli, ["predict", str(path), str(clip), "--text-model", str(broken)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"--text-model {broken}: not a loadable model folder" in result.output and "text_model=" not in result.output


@pytest.mark.parametrize("spelling, where", [(CLI_SPELLING, "--backbone-path {}"), (API_SPELLING, "backbone_path='{}'")])
def test_the_backbone_loaders_name_the_option_as_the_caller_spells_it(spelling, where, tmp_path):
    whisper = str(save_tiny_whisper(tmp_path / "whisper"))
    text = str(save_tiny_text_encoder(tmp_path / "text"))
    cases = [(ModelConfig(backbone="wavlm", backbone_path=whisper), "a Whisper model; this backbone needs"),
             (ModelConfig(backbone="whisper", backbone_path=text), "a bert model, not Whisper"),
             (ModelConfig(backbone="hubert", backbone_path=text), "a bert model, not a raw-waveform speech encoder"),
             (ModelConfig(backbone="fbank", backbone_path=text), "the fbank backbone has no pretrained model")]
    for config, problem in cases:
        with pytest.raises(SertoolError) as refused:
            build_backbone(config, spelling=spelling)
        assert str(refused.value).startswith(f"{where.format(config.backbone_path)}: {problem}"), str(refused.value)
    other = API_SPELLING if spelling is CLI_SPELLING else CLI_SPELLING
    with pytest.raises(SertoolError) as refused:
        SERModel(ModelConfig(backbone="fbank", text=True, text_model=str(tmp_path / "nowhere"), **SIZES),
                 spelling=spelling)
    assert spelling.name("text_model") in str(refused.value) and other.name("text_model") not in str(refused.value)
