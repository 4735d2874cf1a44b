"""sertool's resampling and mel filters (``sertool.data.dsp``): torchaudio's numbers without torchaudio.

Three references: torchaudio itself where it imports (identical numbers), the definitions evaluated directly in
float64 (the sinc sum sample by sample, the triangles bin by bin), and a process in which ``import torchaudio``
fails as it does beside a CPU-only torch installed with plain pip, where sertool's audio path must still run and
give the same numbers.
"""
from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sertool.data import dsp
from sertool.models.backbones.fbank import FbankBackbone, mel_filter_bank
from tests.cases import case
from tests.corpus_files import write_tone

ROOT = Path(__file__).resolve().parent.parent
# The rates sertool meets: recordings at 44.1, 48, 8 and 22.05 kHz (and eSpeak's 22,050 Hz) made 16 kHz,
# speed perturbation (16 kHz × 0.9 and × 1.1 back to 16 kHz), and a downsampling by an integer factor.
RATE_PAIRS = [(44_100, 16_000), (48_000, 16_000), (8_000, 16_000), (22_050, 16_000), (14_400, 16_000),
              (17_600, 16_000), (16_000, 8_000)]


def _torchaudio_functional():
    """``torchaudio.functional``, or a skip where torchaudio is not installed or does not import (its extension
    is CUDA-linked and fails to load beside a CPU-only torch: an OSError, not an ImportError)."""
    try:
        import torchaudio.functional
    except (ImportError, OSError) as error:
        pytest.skip(f"torchaudio does not import here ({type(error).__name__}); the direct references still run")
    return torchaudio.functional


@pytest.mark.parametrize("orig_rate,new_rate", RATE_PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resampling_is_torchaudios(orig_rate, new_rate, dtype):
    functional = _torchaudio_functional()
    generator = torch.Generator().manual_seed(orig_rate + new_rate)
    for shape in [(1,), (1_001,), (3, 4_410), (2, 2, 777)]:
        waveform = torch.randn(shape, generator=generator, dtype=dtype)
        expected = functional.resample(waveform, orig_rate, new_rate)
        ours = dsp.resample(waveform, orig_rate, new_rate)
        assert ours.shape == expected.shape and ours.dtype == expected.dtype
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)


def test_mel_filters_are_torchaudios():
    functional = _torchaudio_functional()
    for num_freqs, min_hz, max_hz, num_mels, sample_rate in [(201, 20.0, 8_000.0, 80, 16_000),
                                                              (257, 0.0, 4_000.0, 40, 8_000),
                                                              (513, 60.0, 7_600.0, 64, 16_000)]:
        expected = functional.melscale_fbanks(n_freqs=num_freqs, f_min=min_hz, f_max=max_hz, n_mels=num_mels,
                                              sample_rate=sample_rate).T
        ours = dsp.mel_filter_bank(num_freqs=num_freqs, min_hz=min_hz, max_hz=max_hz, num_mels=num_mels,
                                   sample_rate=sample_rate)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-7)


def _sinc_sum(signal: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """The definition, one output sample at a time in float64: output ``j`` is the input at time ``j / new_rate``
    interpolated by a Hann-windowed sinc with 6 zero crossings, cut off at 0.99 × the lower Nyquist frequency,
    the input being zero outside its ends."""
    cutoff_hz = 0.99 * min(orig_rate, new_rate)  # the sinc's zero crossings are 1 / cutoff_hz apart
    reach_s = 6 / cutoff_hz
    output = np.zeros(math.ceil(len(signal) * new_rate / orig_rate))
    for j in range(len(output)):
        time_s = j / new_rate
        first, last = max(0, math.ceil((time_s - reach_s) * orig_rate)), min(len(signal) - 1,
                                                                             math.floor((time_s + reach_s) * orig_rate))
        offsets = (np.arange(first, last + 1) / orig_rate - time_s) * cutoff_hz  # in zero crossings
        window = np.cos(np.pi * offsets / 12) ** 2
        output[j] = np.sum(signal[first:last + 1] * np.sinc(offsets) * window) * cutoff_hz / orig_rate
    return output


@pytest.mark.parametrize("orig_rate,new_rate", RATE_PAIRS[:4])
def test_resampling_is_the_windowed_sinc_sum(orig_rate, new_rate):
    signal = np.random.default_rng(orig_rate).standard_normal(orig_rate // 50)  # 20 ms
    ours = dsp.resample(torch.from_numpy(signal), orig_rate, new_rate).numpy()
    np.testing.assert_allclose(ours, _sinc_sum(signal, orig_rate, new_rate), rtol=0, atol=1e-9)


def test_same_rate_is_the_input_and_bad_input_is_refused():
    waveform = torch.randn(100)
    assert dsp.resample(waveform, 16_000, 16_000) is waveform
    with pytest.raises(TypeError, match="floating-point"):
        dsp.resample(torch.ones(100, dtype=torch.int16), 8_000, 16_000)
    with pytest.raises(ValueError, match="positive"):
        dsp.resample(waveform, 0, 16_000)


def test_kernels_cached_in_inference_mode_serve_autograd_later():
    """The sinc kernels are cached per rate pair; the first use inside ``torch.inference_mode`` (predict) must not
    leave an inference tensor that a later, autograd-recorded resampling cannot use."""
    dsp._sinc_kernels.cache_clear()
    waveform = torch.randn(2_000, dtype=torch.float64)
    with torch.inference_mode():
        first = dsp.resample(waveform, 44_100, 16_000)
    tracked = waveform.clone().requires_grad_()
    again = dsp.resample(tracked, 44_100, 16_000)
    again.sum().backward()
    assert torch.equal(first, again.detach()) and tracked.grad is not None


def test_mel_filters_are_the_htk_triangles():
    """Filter m of the fbank encoder's bank, evaluated at each FFT bin from its three band edges, in float64."""
    def mel(hz):
        return 2595 * np.log10(1 + hz / 700)

    edges_hz = 700 * (10 ** (np.linspace(mel(20.0), mel(8_000.0), 82) / 2595) - 1)
    bins_hz = np.linspace(0, 8_000, 201)
    expected = np.stack([np.clip(np.minimum((bins_hz - low) / (centre - low), (high - bins_hz) / (high - centre)), 0, 1)
                         for low, centre, high in zip(edges_hz[:-2], edges_hz[1:-1], edges_hz[2:], strict=True)])
    np.testing.assert_allclose(mel_filter_bank().numpy(), expected, rtol=0, atol=1e-5)
    assert mel_filter_bank().shape == (80, 201) and np.all(mel_filter_bank().numpy().max(axis=1) > 0)  # none empty


_WITHOUT_TORCHAUDIO = textwrap.dedent("""
    import json, sys
    import torch
    from sertool.data.audio import load_audio
    from sertool.models.backbones.fbank import FbankBackbone
    waveform = load_audio(sys.argv[1])
    torch.manual_seed(0)
    features, _ = FbankBackbone(dim=16).log_mel(waveform[None], torch.ones(1, len(waveform)))
    print(json.dumps({"waveform": waveform.tolist(), "features": features[0, :, :5].tolist()}))
""")


@case("data", "a plain `pip install` beside a CPU-only torch: an installed torchaudio whose import fails (OSError: "
      "its CUDA-linked extension)", "audio is read, resampled and made log-mel features with the same numbers: "
      "sertool never imports torchaudio")
def test_the_audio_path_runs_where_torchaudio_does_not_import(tmp_path):
    """A plain `pip install` beside a CPU-only torch: torchaudio is installed but ``import torchaudio`` raises
    OSError (its CUDA-linked extension). Here a torchaudio that fails so is first on the path of a fresh process:
    reading a 44.1 kHz file (resampled) and the fbank encoder's log-mel features still run, with the numbers
    this process computes."""
    broken = tmp_path / "site" / "torchaudio"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise OSError("libcudart.so.13: cannot open shared object file: '
                                        'No such file or directory")\n')
    audio = tmp_path / "tone.wav"
    write_tone(audio, duration_s=0.3, sample_rate=44_100)
    result = subprocess.run([sys.executable, "-c", _WITHOUT_TORCHAUDIO, str(audio)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(broken.parent), str(ROOT)])},
                            timeout=120)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    from sertool.data.audio import load_audio

    waveform = load_audio(audio)
    torch.manual_seed(0)
    features, _ = FbankBackbone(dim=16).log_mel(waveform[None], torch.ones(1, len(waveform)))
    assert len(shown["waveform"]) == 4_800
    np.testing.assert_array_equal(np.array(shown["waveform"], dtype=np.float32), waveform.numpy())
    np.testing.assert_array_equal(np.array(shown["features"], dtype=np.float32), features[0, :, :5].numpy())


def test_no_module_of_sertool_imports_torchaudio():
    """Every import statement of the package, deferred ones included: torchaudio is no dependency."""
    importing = []
    for path in sorted((ROOT / "sertool").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "torchaudio" for name in names):
                importing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert importing == []
