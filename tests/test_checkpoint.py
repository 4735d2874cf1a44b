"""Checkpoints: never run code from a file, store only what is not published, write atomically."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from sertool.cli.commands import cli
from sertool.core.config import ModelConfig
from sertool.core.errors import SertoolError
from sertool.models.ser_model import SERModel
from sertool.store.checkpoints import (
    frozen_pretrained_keys,
    load_checkpoint,
    load_stored_state,
    save_checkpoint,
    stored_state,
)
from tests.cases import case
from tests.corpus_files import write_learnable_corpus
from tests.tiny_speech import save_tiny_whisper


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def _malicious_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    payload = _Payload()
    payload.marker = tmp_path / "pwned"
    path = tmp_path / "evil" / "last.pt"
    path.parent.mkdir()
    torch.save({"format": "sertool-checkpoint", "format_version": 1, "config": {}, "x": payload}, path)
    (tmp_path / "evil" / "best.pt").write_bytes(path.read_bytes())
    return path, payload.marker


@case("checkpoints", "a `.pt` with a pickle payload given to evaluate, predict, ensemble, `train --resume`",
      "refused, payload never runs")
def test_a_pickle_payload_is_refused_by_every_command_without_running(tmp_path):
    path, marker = _malicious_checkpoint(tmp_path)
    corpus = write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 4, "Development": 4})
    clip = next((corpus / "Audios").iterdir())
    commands = [
        ["evaluate", str(path), "--corpus", str(corpus)],
        ["predict", str(path), str(clip)],
        ["ensemble", str(path), str(tmp_path / "other.pt"), "--corpus", str(corpus)],
        ["train", "--resume", str(path.parent)],
    ]
    for args in commands:
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 2, (args, result.output)
        assert "refused" in result.output and "could run code" in result.output, (args, result.output)
        assert not marker.exists(), args
    with pytest.raises(SertoolError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


@case("checkpoints", "a damaged or foreign `.pt`",
      "\"not a readable checkpoint\" / \"not a sertool checkpoint\"")
def test_garbage_and_foreign_files_are_clear_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SertoolError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(SertoolError, match="not a sertool checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(SertoolError, match="without best.pt"):
        load_checkpoint(tmp_path)


def test_frozen_pretrained_weights_are_not_stored_and_come_back_from_the_model_folder(tmp_path):
    config = ModelConfig(backbone="whisper", backbone_path=str(save_tiny_whisper(tmp_path / "whisper")),
                         head_hidden_dim=8, head_dropout=0.0)
    torch.manual_seed(0)
    model = SERModel(config).eval()
    state = stored_state(model)
    assert not any(key.startswith("backbone.") and "layer_weight" not in key for key in state), \
        [k for k in state if k.startswith("backbone.")][:5]
    assert frozen_pretrained_keys(model)  # the frozen encoder is there, just not stored
    save_checkpoint({"model_state": state}, tmp_path / "m.pt")
    torch.manual_seed(1)  # another initialisation of the heads: the checkpoint must override it
    rebuilt = SERModel(config).eval()
    load_stored_state(rebuilt, load_checkpoint(tmp_path / "m.pt")["model_state"], source="m.pt")
    waveforms = torch.randn(2, 16_000)
    mask = torch.ones_like(waveforms, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(waveforms, mask).emotion, model(waveforms, mask).emotion)
    stored_bytes = io.BytesIO()
    torch.save(state, stored_bytes)
    everything = io.BytesIO()
    torch.save(model.state_dict(), everything)
    assert stored_bytes.tell() < everything.tell() / 2


def test_a_mismatched_checkpoint_is_refused(tmp_path):
    small = SERModel(ModelConfig(backbone="fbank", fbank_dim=16, head_hidden_dim=8))
    other = SERModel(ModelConfig(backbone="fbank", fbank_dim=16, head_hidden_dim=8, aux=("gender",)))
    with pytest.raises(SertoolError, match="do not fit"):
        load_stored_state(small, stored_state(other), source="other.pt")


@case("guards", "full disk on write",
      "one line naming the file; the previous file unchanged, no temp file left")
def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    save_checkpoint({"model_state": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", full_disk)
    with pytest.raises(SertoolError, match="No space left on device"):
        save_checkpoint({"model_state": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temp file left behind
