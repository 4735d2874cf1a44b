"""CPU inference: --quantize int8 (dynamic int8 quantisation of the speech backbone's linear layers, its
convolutional front end in bf16 on CPUs with AMX) and --threads."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

import sertool
from sertool.acceleration import cpu
from sertool.acceleration.bf16_front_end import Bf16FeatureEncoder, bf16_front_end
from sertool.acceleration.cpu import MIN_INT8_FEATURES, quantize_int8
from sertool.cli.commands import cli
from sertool.core.config import ModelConfig
from sertool.core.errors import SertoolError
from sertool.inference.inputs import corpus_split
from sertool.models.ser_model import SERModel
from sertool.training.loop import train
from tests.cases import case
from tests.corpus_files import write_learnable_corpus
from tests.systems import small_config
from tests.tiny_speech import save_tiny_wavlm, save_tiny_whisper


def trained_run(folder: Path, backbone: str) -> tuple[Path, Path]:
    """A tiny ``backbone`` system trained for one epoch on a small learnable corpus, and that corpus."""
    corpus = write_learnable_corpus(folder / "corpus", per_split={"Train": 8, "Development": 12})
    config = small_config(corpus, epochs=1)
    config.model.backbone = backbone
    if backbone != "fbank":
        save = {"wavlm": save_tiny_wavlm, "whisper": save_tiny_whisper}[backbone]
        config.model.backbone_path = str(save(folder / f"tiny-{backbone}"))
    train(config, folder / "run", device="cpu")
    return folder / "run", corpus


@pytest.fixture(scope="module")
def wavlm_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny WavLM system trained for a few steps, and its corpus."""
    return trained_run(tmp_path_factory.mktemp("quantize"), "wavlm")


def digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.mark.parametrize("amx", [True, False], ids=["amx-cpu", "no-amx-cpu"])
def test_int8_predictions_are_close_to_float32_and_nothing_on_disk_changes(wavlm_run, amx, monkeypatch):
    # both kinds of CPU, whichever this one is: with AMX the front end runs in bf16, without it stays float32
    monkeypatch.setattr(cpu, "has_amx_bf16", lambda: amx)
    run_dir, corpus = wavlm_run
    utterances, _ = corpus_split(corpus, "Development")
    before = digests(run_dir)
    float32 = sertool.load(run_dir, device="cpu")
    int8 = sertool.load(run_dir, device="cpu", quantize="int8")
    expected = float32.predict([utt.audio_path for utt in utterances], table=True).values
    quantised = int8.predict([utt.audio_path for utt in utterances], table=True).values
    assert digests(run_dir) == before
    model = int8._predictor.model
    backbone = list(model.backbone.modules())
    assert any(isinstance(module, QuantizedLinear) for module in backbone)
    # every float linear left in the backbone is one too narrow for int8 (WavLM's position-bias gate) ...
    assert all(min(module.in_features, module.out_features) < MIN_INT8_FEATURES
               for module in backbone if type(module) is torch.nn.Linear)
    # the heads read one vector per clip: they stay float32
    assert not any(isinstance(module, QuantizedLinear) for module in model.emotion_heads.modules())
    assert isinstance(model.backbone.model.feature_extractor, Bf16FeatureEncoder) == amx
    difference = np.abs(quantised - expected)
    assert 0 < difference.max() < 0.05  # on the 1–7 scale: quantised, and close
    # Small beside how much the predictions vary across clips: a broken quantisation (wrong scales, a layer
    # left float with int8 inputs) moves them by about their own spread (rms ≈ 1.4 sd). The tiny model's
    # spread changes from run to run (CPU float sums), so the bound is relative, not a fixed CCC.
    rms_change = np.sqrt(np.mean((quantised - expected) ** 2, axis=0))
    assert (rms_change < 0.25 * expected.std(axis=0)).all(), (rms_change, expected.std(axis=0))


def test_quantize_through_the_cli_writes_close_predictions(wavlm_run, tmp_path):
    run_dir, corpus = wavlm_run
    outputs = _predict_off_and_int8(run_dir, corpus, tmp_path)
    assert np.abs(outputs["int8"] - outputs["off"]).max() < 0.05


@case("inference", "`--quantize int8 --amp bf16` (or fp16) on the CPU",
      "one line: int8 layers take float32 input, drop --amp (found by the generated-input sweep: was a "
      "RuntimeError from oneDNN's qlinear_dynamic)")
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_int8_under_autocast_is_refused_in_one_line(wavlm_run, amp):
    run_dir, corpus = wavlm_run
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--corpus", str(corpus), "--quantize", "int8",
                                      "--amp", amp])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"--quantize int8 --amp {amp}: int8 layers take float32 input" in result.output


def test_int8_on_a_gpu_is_refused_in_one_line(wavlm_run, monkeypatch):
    run_dir, corpus = wavlm_run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with one GPU, as far as sertool asks
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--corpus", str(corpus), "--device", "cuda",
                                      "--quantize", "int8"])
    assert result.exit_code != 0
    assert "--quantize int8 runs on the CPU only" in result.output and "Traceback" not in result.output


def test_threads_sets_torch_s_thread_count(wavlm_run, monkeypatch):
    run_dir, corpus = wavlm_run
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir), "--corpus", str(corpus), "--device", "cpu",
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert calls == [1]
    with pytest.raises(SertoolError, match=r"sertool.load: threads must be in \[0, 1024\], got -1"):
        sertool.load(run_dir, device="cpu", threads=-1)


@pytest.mark.parametrize("backbone", ["fbank", "whisper"])
def test_quantize_through_the_cli_on_the_other_backbones(backbone, tmp_path):
    # Their linear layers are quantised too; the predictions stay close to float32's.
    run_dir, corpus = trained_run(tmp_path, backbone)
    outputs = _predict_off_and_int8(run_dir, corpus, tmp_path)
    difference = np.abs(outputs["int8"] - outputs["off"])
    assert np.isfinite(outputs["int8"]).all() and 0 < difference.max() < 0.05
    model = sertool.load(run_dir, device="cpu", quantize="int8")._predictor.model
    assert any(isinstance(module, QuantizedLinear) for module in model.backbone.modules())


def test_int8_leaves_what_reads_one_vector_per_clip_and_the_text_encoder_in_float32(tmp_path):
    from tests.tiny_text import save_tiny_text_encoder

    config = ModelConfig(backbone="fbank", fbank_dim=32, head_hidden_dim=16, text=True,
                         text_model=str(save_tiny_text_encoder(tmp_path / "text")))
    model = SERModel(config).eval()
    texts = ["a calm voice", "an angry shout"]
    expected = model.text_encoder.embed(texts)
    quantize_int8(model)
    assert any(isinstance(module, QuantizedLinear) for module in model.backbone.modules())
    # The text encoder's embeddings go to an on-disk cache that float32 runs read: they must not change.
    assert torch.equal(model.text_encoder.embed(texts), expected)
    outside = [name for name, module in model.named_modules()
               if isinstance(module, QuantizedLinear) and not name.startswith("backbone.")]
    assert outside == []


def _speechlike_batch(*, seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Two clips of loud and very quiet stretches (a 1000× range, as speech and pauses), the second shorter
    and zero-padded: what a per-call int8 scale gets wrong (quiet frames share the loud frames' scale)."""
    generator = torch.Generator().manual_seed(seed)
    samples = int(16_000 * seconds)
    loudness = torch.where(torch.rand(samples // 1600, generator=generator) < 0.5, 1.0, 1e-3)
    waveforms = torch.randn(2, samples, generator=generator) * loudness.repeat_interleave(1600)[:samples]
    waveforms[1, samples * 2 // 3:] = 0.0
    return waveforms


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_the_bf16_front_end_computes_the_float32_one_to_bf16_precision_in_every_frame(norm, tmp_path):
    # "group": WavLM-Base's front end (a per-channel group norm on the first layer, folded into its weights);
    # "layer": the Large models' (a layer norm after every convolution), here with convolution biases
    from transformers import WavLMModel

    folder = save_tiny_wavlm(tmp_path / "wavlm", feat_extract_norm=norm, conv_bias=norm == "layer")
    encoder = WavLMModel.from_pretrained(folder).eval().feature_extractor
    front_end = bf16_front_end(encoder)
    assert front_end is not None
    waveforms = _speechlike_batch()
    with torch.inference_mode():
        expected, computed = encoder(waveforms), front_end(waveforms)
    assert computed.dtype == torch.float32 and computed.shape == expected.shape
    # relative to each frame's own size, quiet frames included: bf16 keeps 8 significant bits per value
    # (here 1.3-3 % at most after seven layers, 32 channels wide); a wrong window, chunk or norm statistic
    # is off by tens of per cent (a variance off by half: 50 %)
    per_frame = (computed - expected).norm(dim=1) / expected.norm(dim=1)
    assert 0 < per_frame.max() < 0.08, per_frame.max()


def test_a_front_end_of_another_shape_stays_float32(tmp_path):
    from transformers import WavLMModel

    encoder = WavLMModel.from_pretrained(save_tiny_wavlm(tmp_path / "wavlm")).eval().feature_extractor
    encoder.conv_layers[1].conv.padding = (1,)
    assert bf16_front_end(encoder) is None


@pytest.mark.parametrize("amx", [True, False], ids=["amx-cpu", "no-amx-cpu"])
def test_int8_changes_only_the_backbone_s_linear_layers_and_front_end(amx, monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "has_amx_bf16", lambda: amx)
    config = ModelConfig(backbone="wavlm", backbone_path=str(save_tiny_wavlm(tmp_path / "wavlm", feat_extract_norm="group")),
                         head_hidden_dim=16)
    model = SERModel(config).eval()
    waveforms = _speechlike_batch()
    mask = waveforms != 0
    with torch.inference_mode():
        expected = model(waveforms, mask)
    original_front_end = model.backbone.model.feature_extractor
    quantize_int8(model)
    wavlm = model.backbone.model
    assert (wavlm.feature_extractor is not original_front_end) == amx
    assert isinstance(wavlm.feature_extractor, Bf16FeatureEncoder) == amx
    # every weight left is float32: norms, the positional convolution, pooling, heads (and the float32 front
    # end's convolutions without AMX); bf16 exists only inside the front end's products
    assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
    assert isinstance(wavlm.encoder.pos_conv_embed.conv, torch.nn.Conv1d)
    with torch.inference_mode():
        quantised = model(waveforms, mask)
    assert torch.isfinite(quantised.emotion).all()
    assert torch.allclose(quantised.emotion, expected.emotion, atol=0.01)  # unit scale: 0.06 on the 1–7 scale


def _predict_off_and_int8(run_dir, corpus, tmp_path) -> dict[str, np.ndarray]:
    """`sertool predict` of the Development split with --quantize off and int8: each one's A/V/D rows."""
    outputs = {}
    for quantize in ("off", "int8"):
        out = tmp_path / f"{quantize}.csv"
        result = CliRunner().invoke(cli, ["predict", str(run_dir), "--corpus", str(corpus), "--split", "Development",
                                          "--device", "cpu", "--quantize", quantize, "--out", str(out)])
        assert result.exit_code == 0, result.output
        outputs[quantize] = np.loadtxt(out, delimiter=",", skiprows=1, usecols=(1, 2, 3))
    return outputs
