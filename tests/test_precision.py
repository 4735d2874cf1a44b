"""Mixed precision (``--amp``): what runs in float32 whatever the autocast, and what half precision changes.

There is no GPU here: fp16 and bf16 are exercised with CPU autocast (``torch.autocast("cpu", dtype=...)``),
which casts the same kinds of operation (matrix products, convolutions) to half precision as CUDA's does.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from sertool.api import load
from sertool.core.config import ModelConfig
from sertool.data.records import ATTRIBUTES
from sertool.inference import predictor
from sertool.models.asr import Transcriber
from sertool.models.backbones import FbankBackbone, WhisperBackbone, build_backbone
from sertool.models.heads import EmotionHeads
from sertool.models.pooling import masked_mean
from sertool.models.ser_model import SERModel
from sertool.models.speaker_embedding import LogMelStatistics
from sertool.models.utterance_stats import FloorBlend
from sertool.runtime.precision import ieee_float32
from sertool.training import loop
from sertool.training.loop import train
from tests.cases import case
from tests.corpus_files import write_learnable_corpus
from tests.systems import small_config
from tests.tiny_asr import save_tiny_asr
from tests.tiny_speech import save_tiny_wavlm, save_tiny_whisper

# transformers' WavLM attention passes torch a bool padding mask with a float position bias.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

SAMPLE_RATE = 16_000
HALF_DTYPES = [torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_precision")
    return {"wavlm": save_tiny_wavlm(root / "wavlm"), "whisper": save_tiny_whisper(root / "whisper")}


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Speech-like noise of 1.5, 0.55 and 1 s, zero-padded, and a 0.25-s clip of digital silence."""
    lengths = [24_000, 8_800, 16_000, 4_000]
    generator = torch.Generator().manual_seed(0)
    time_s = torch.arange(max(lengths)) / SAMPLE_RATE
    envelope = 0.1 * (1 + torch.sin(2 * torch.pi * 3.0 * time_s))
    sample_mask = torch.arange(max(lengths)) < torch.tensor(lengths).unsqueeze(1)
    waveforms = envelope * torch.randn(len(lengths), max(lengths), generator=generator) * sample_mask
    waveforms[-1] = 0.0
    return waveforms, sample_mask


@case("values", "--amp fp16 or bf16 (autocast) over a zero-padded batch with an all-silent clip, into each log-mel "
      "front end (fbank encoder, log-mel-stats speaker statistics, Whisper)",
      "the log-mel is computed in float32 with autocast off: the very features of float32, finite (fp16 rounded "
      "the 1e-10 power floor to 0: log 0 = −inf, NaN after the mask, every step skipped)")
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_log_mel_front_ends_compute_in_float32_under_autocast(tiny, dtype: torch.dtype) -> None:
    waveforms, sample_mask = _batch()
    fbank = FbankBackbone(32, num_blocks=1).eval()
    whisper = build_backbone(ModelConfig(backbone="whisper", backbone_path=str(tiny["whisper"]))).eval()
    assert isinstance(whisper, WhisperBackbone)
    front_ends = {
        "fbank": lambda: fbank.log_mel(waveforms, sample_mask)[0],
        "log-mel-stats": lambda: LogMelStatistics()(waveforms, sample_mask),
        "whisper": lambda: whisper.log_mel(waveforms, sample_mask.sum(dim=-1))[0],
    }
    with torch.no_grad():
        expected = {name: compute() for name, compute in front_ends.items()}
        with torch.autocast("cpu", dtype=dtype):
            features = {name: compute() for name, compute in front_ends.items()}
            encoded = {"fbank": fbank(waveforms, sample_mask)[0], "whisper": whisper(waveforms, sample_mask)[0]}
    assert [name for name, frames in encoded.items() if not torch.isfinite(frames).all()] == []
    assert [name for name, value in features.items()
            if value.dtype != torch.float32 or not torch.equal(value, expected[name])] == []


@case("values", "bf16 autocast (--amp bf16/auto) through the emotion heads",
      "each head's output layer and the sigmoid run in float32: predictions are no longer rounded to bf16's "
      "steps of 0.002–0.004 on the unit scale (0.012–0.023 on 1..7) before the CCC")
def test_emotion_heads_output_layer_and_sigmoid_run_in_float32_under_autocast() -> None:
    torch.manual_seed(0)
    heads = EmotionHeads(32, hidden_dim=16, dropout=0.0).eval()
    representation = torch.randn(64, 32)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            predictions = heads(representation)
            hidden = [heads.heads[name][:-1](representation) for name in ATTRIBUTES]  # bf16, as autocast gives
        logits = torch.cat([heads.heads[name][-1](rows.float()) for name, rows in zip(ATTRIBUTES, hidden, strict=True)],
                           dim=-1)
    assert predictions.dtype == torch.float32
    torch.testing.assert_close(predictions, torch.sigmoid(logits), rtol=0, atol=1e-6)


@case("values", "a 550-frame utterance's bf16 frames mean-pooled",
      "summed and counted in float32: the mean divides by 550 (a bf16 count was 552) and is returned in float32")
def test_masked_mean_sums_and_counts_in_float32() -> None:
    generator = torch.Generator().manual_seed(0)
    frames = (1.0 + torch.rand(2, 600, 8, generator=generator)).bfloat16()
    frame_mask = torch.arange(600) < torch.tensor([[550], [600]])
    expected = (frames.double() * frame_mask[..., None]).sum(dim=1) / frame_mask.sum(dim=1, keepdim=True)
    pooled = masked_mean(frames, frame_mask)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled.double(), expected, rtol=1e-6, atol=0)


@case("values", "a floor-blend model's network predictions in bf16 (autocast)",
      "the blend with the float64 floor is returned in float32, not rounded back to bf16")
def test_floor_blend_returns_float32_for_half_precision_network_outputs() -> None:
    generator = torch.Generator().manual_seed(0)
    blend = FloorBlend(num_features=4)
    blend.weights.copy_(0.05 * torch.randn(4, 3, generator=generator, dtype=torch.float64))
    blend.intercept.fill_(0.5)
    blend.alphas.fill_(1.0)
    blend.blend.copy_(torch.tensor([0.3, 0.55, 1.0], dtype=torch.float64))
    network = torch.rand(16, 3, generator=generator).bfloat16()
    standardised = torch.randn(16, 4, generator=generator, dtype=torch.float64)
    expected = blend.blend * network.double() + (1 - blend.blend) * blend.floor(standardised)
    blended = blend(network, standardised)
    assert blended.dtype == torch.float32
    torch.testing.assert_close(blended.double(), expected, rtol=0, atol=1e-7)


@pytest.fixture(scope="module")
def asr_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_asr(tmp_path_factory.mktemp("asr"), window_s=2)


def _mock_cuda(monkeypatch: pytest.MonkeyPatch, *, bf16: bool) -> None:
    """Make this CPU-only torch report one CUDA GPU, with (an A100's compute capability) or without (a T4's)
    native bf16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, **kwargs: (8, 0) if bf16 else (7, 5))


@case("values", "ASR transcription (--asr) on a CUDA GPU (mocked), with and without bf16 support, and on the CPU",
      "the Whisper ASR model is loaded in bf16 on the GPU, fp16 on a GPU without bf16 (--amp auto's rule), float32 on "
      "the CPU (it was float32 everywhere); a half-precision transcript is cached under a key of its own")
@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_asr_runs_in_half_precision_on_a_gpu_and_in_float32_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, asr_folder: Path, bf16: bool, expected: torch.dtype
) -> None:
    _mock_cuda(monkeypatch, bf16=bf16)
    on_gpu = Transcriber(str(asr_folder), device="cuda")
    on_cpu = Transcriber(str(asr_folder), device="cpu")
    assert on_gpu.device.type == "cuda"
    assert on_gpu.cache_key != on_cpu.cache_key
    # The weights load in that precision: the mocked GPU's transcriber, moved to the CPU, transcribes there.
    on_gpu.device = torch.device("cpu")
    waveform = 0.1 * torch.randn(SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
    assert len(on_gpu.transcribe([waveform])) == 1
    on_cpu.transcribe([waveform])
    assert (on_gpu._model.dtype, on_cpu._model.dtype) == (expected, torch.float32)
    assert (on_gpu.dtype, on_cpu.dtype) == (expected, torch.float32)


def _tf32_switches() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@case("values", "--amp off (or any --amp) on a CUDA GPU (mocked) where torch allows TF32 matmuls and cuDNN convolutions",
      "sertool trains and predicts with TF32 off: float32 is IEEE float32 (cuDNN convolutions were TF32 by default); "
      "the process's own settings come back afterwards, and nothing changes on the CPU")
def test_float32_is_ieee_on_a_gpu_while_sertool_computes() -> None:
    before = _tf32_switches()  # torch's switches are plain settings, set (and set back) on a CPU-only build too
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
        with ieee_float32(torch.device("cpu")):
            assert _tf32_switches() == (True, True)
        with ieee_float32(torch.device("cuda", 0)):
            assert _tf32_switches() == (False, False)
        assert _tf32_switches() == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_training_and_prediction_compute_inside_ieee_float32(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The wiring: ``train`` and every prediction (``sertool.load``, evaluate, predict, ensemble) run inside
    ``ieee_float32`` on their device, the model's every forward and backward included."""
    entered: list[torch.device] = []
    forwards_inside: list[bool] = []
    inside = False

    @contextmanager
    def recording(device: torch.device) -> Iterator[None]:
        nonlocal inside
        entered.append(device)
        inside = True
        try:
            with ieee_float32(device):
                yield
        finally:
            inside = False

    forward = SERModel.forward

    def recorded_forward(self, *args, **kwargs):
        forwards_inside.append(inside)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(loop, "ieee_float32", recording)
    monkeypatch.setattr(predictor, "ieee_float32", recording)
    monkeypatch.setattr(SERModel, "forward", recorded_forward)
    corpus = write_learnable_corpus(tmp_path / "corpus", per_split={"Train": 8, "Development": 4})
    train(small_config(corpus, epochs=1, max_steps=1), tmp_path / "run")
    assert entered == [torch.device("cpu")]
    load(tmp_path / "run", device="cpu").predict(torch.zeros(SAMPLE_RATE), sample_rate=SAMPLE_RATE)
    assert entered == [torch.device("cpu")] * 2
    assert forwards_inside and all(forwards_inside)


# How far half-precision predictions may lie from float32 ones on the 1..7 scale (docs/training.md, "Mixed
# precision", says why): bf16 keeps 8 significant bits, fp16 11, 8 times finer.
TOLERANCE = {torch.bfloat16: 0.05, torch.float16: 0.01}


@case("values", "the same batch (padding, an all-silent clip) predicted in float32 and under fp16 or bf16 autocast, "
      "by a fbank, a tiny WavLM (layer-norm front end) and a tiny Whisper model",
      "float32 predictions; fp16 within 0.01 and bf16 within 0.05 of float32 on the 1..7 scale (fp16 gave NaN for "
      "fbank and Whisper)")
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("backbone", ["fbank", "wavlm", "whisper"])
def test_half_precision_predictions_agree_with_float32(tiny, backbone: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    config = ModelConfig(backbone=backbone, backbone_path=str(tiny[backbone]) if backbone in tiny else None,
                         fbank_dim=32, head_hidden_dim=16)
    model = SERModel(config).eval()
    waveforms, sample_mask = _batch()
    with torch.no_grad():
        expected = model(waveforms, sample_mask).emotion
        with torch.autocast("cpu", dtype=dtype):
            emotion = model(waveforms, sample_mask).emotion
    assert emotion.dtype == torch.float32
    ratings = model.label_scaling.from_unit(emotion.double())
    difference = (ratings - model.label_scaling.from_unit(expected.double())).abs()
    assert torch.isfinite(ratings).all()
    assert difference.max().item() <= TOLERANCE[dtype]
