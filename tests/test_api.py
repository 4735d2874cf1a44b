"""The Python API: sertool.load(...).predict(...), its docstring examples, and a light `import sertool`."""
from __future__ import annotations

import ast
import doctest
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

import sertool
import sertool.api
from sertool.cli.commands import cli
from sertool.core.errors import SertoolError
from sertool.inference.predictions import read_predictions
from sertool.training.loop import train
from tests.cases import case
from tests.corpus_files import write_learnable_corpus, write_tone
from tests.systems import small_config


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """What the docstring examples name, relative to this folder: runs/demo, talk.wav (25 s), a.wav, b.wav."""
    root = tmp_path_factory.mktemp("api")
    corpus = write_learnable_corpus(root / "corpus", per_split={"Train": 8, "Development": 4})
    train(small_config(corpus), root / "runs" / "demo")
    write_tone(root / "talk.wav", duration_s=25.0)
    write_tone(root / "a.wav", duration_s=1.5)
    write_tone(root / "b.wav", duration_s=2.5, sample_rate=44_100, channels=2)
    return root


def test_the_docstring_examples_run(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    tests = doctest.DocTestFinder().find(sertool.api, globs={"sertool": sertool})
    assert sum(len(test.examples) for test in tests) >= 15
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    for test in tests:
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()


def test_the_api_gives_the_cli_s_numbers(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    result = CliRunner().invoke(cli, ["predict", "runs/demo", "talk.wav", "a.wav", "b.wav", "--out", "cli.csv"])
    assert result.exit_code == 0, result.output
    cli_values = read_predictions(workspace / "cli.csv")
    table = sertool.load("runs/demo").predict(["talk.wav", "a.wav", "b.wav"], table=True)
    assert table.ids == cli_values.ids
    np.testing.assert_allclose(table.values, cli_values.values, atol=1e-6)
    assert [(s.start_s, s.end_s) for s in table.segments] == [(s.start_s, s.end_s) for s in cli_values.segments]


def test_waveforms_are_read_like_the_files_they_came_from(workspace):
    model = sertool.load(workspace / "runs" / "demo")
    samples, rate = sf.read(workspace / "b.wav", dtype="float32")  # 44.1 kHz stereo, [samples, channels]
    expected = model.predict(str(workspace / "b.wav"))
    for waveform in (samples, samples.T, torch.from_numpy(samples.T.copy()), samples.astype(np.float64)):
        assert model.predict(waveform, sample_rate=rate) == expected
    mono, mono_rate = sf.read(workspace / "a.wav", dtype="float32")
    pieces = [mono, mono[: len(mono) // 2]]
    table = model.predict(pieces, sample_rate=mono_rate, table=True)
    assert table.ids == ["waveform[0]", "waveform[1]"]
    one_at_a_time = [list(model.predict(piece, sample_rate=mono_rate).values()) for piece in pieces]
    np.testing.assert_allclose(table.values, one_at_a_time, atol=1e-5)  # a padded batch equals one at a time


@pytest.mark.parametrize("call, message", [
    (lambda model: model.predict(np.zeros(16_000, dtype=np.float32)), "give its rate in Hz as sample_rate="),
    (lambda model: model.predict("a.wav", sample_rate=16_000), "an audio file carries its own rate"),
    (lambda model: model.predict("runs"), "a folder; pass its audio files"),
    (lambda model: model.predict([]), "no audio given"),
    (lambda model: model.predict(np.full(16_000, np.nan), sample_rate=16_000), "NaN or infinite"),
    (lambda model: model.predict(np.zeros((2, 2, 2)), sample_rate=16_000), "must be 1-D or 2-D"),
    (lambda model: model.predict(np.zeros(16_000, dtype=np.int16), sample_rate=16_000), "give float samples"),
    (lambda model: model.predict(["a.wav", "a.wav"]), r"audio\[1\]: input 'a\.wav' already appears at audio\[0\]"),
    (lambda model: model.predict([0.1, 0.2]), "got float"),
    (lambda model: model.predict(np.zeros(100, dtype=np.float32), sample_rate=16_000), "shorter than"),
    (lambda model: model.predict("nothing.wav"), "audio file not found"),
    (lambda model: model.predict(["a.wav", "b.wav"], transcripts="one text"), "one transcript per input"),
])
def test_bad_inputs_get_one_clear_line(call, message, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    with pytest.raises(SertoolError, match=message) as error:
        call(sertool.load("runs/demo"))
    assert "\n" not in str(error.value)


def _nan_model(workspace: Path) -> Path:
    """runs/demo with one head weight set to NaN: every prediction it makes is not finite."""
    from sertool.store.checkpoints import load_checkpoint, save_checkpoint

    path = workspace / "nan.pt"
    if not path.exists():
        payload = load_checkpoint(workspace / "runs" / "demo")
        key = next(name for name in payload["model_state"] if name.endswith("weight") and "head" in name)
        payload["model_state"][key] = torch.full_like(payload["model_state"][key], float("nan"))
        save_checkpoint({k: v for k, v in payload.items() if k not in ("format", "format_version")}, path)
    return path


_TONE = (0.1 * np.sin(np.arange(16_000 * 12) / 10)).astype(np.float32)  # 12 s: two windows of 10 s, 5 s apart


def _loud_from(start_s: float) -> np.ndarray:
    loud = _TONE.copy()
    loud[int(start_s * 16_000):] *= 1e30
    return loud


@case("inference", "a waveform given to sertool.load(...).predict that fails a check downstream: 0.1 s long, "
      "samples of 1e30 (in the whole or in its second window), a model whose output is not finite",
      "one line naming waveform[1] (and its window: waveform[1]@32000), never the deleted temporary file")
@pytest.mark.parametrize(("second", "model", "named"), [
    (_TONE[:1_600], "runs/demo", "waveform[1]: 0.100 s of audio is shorter than the 0.25 s"),
    (_TONE[:32_000] * np.float32(1e30), "runs/demo", "cannot predict waveform[1]: waveform[1]: samples reach 1e+29"),
    (_loud_from(11.0), "runs/demo", "cannot predict waveform[1]@32000: waveform[1]: samples reach 1e+29"),
    (_TONE, "nan.pt", "waveform[1] [0.00–10.00 s]: the model's prediction for waveform[1]@0 is not finite"),
])
def test_a_waveform_failing_downstream_is_named_as_given(workspace, second, model, named):
    if model == "nan.pt":
        _nan_model(workspace)
    with pytest.raises(SertoolError) as error:
        sertool.load(workspace / model).predict([_TONE[:32_000], second], sample_rate=16_000)
    message = str(error.value)
    assert named in message and "sertool-" not in message and ".wav" not in message and "\n" not in message


@case("inference", "sertool.load(...).predict(waveform, sample_rate=1000 or 10**12)",
      "one line naming the waveform and the 4–384 kHz range (was: a 'damaged header' of the temporary file, or a "
      "traceback)")
@pytest.mark.parametrize("rate", [1_000, 10**12])
def test_a_waveform_rate_outside_speech_rates_is_named(workspace, rate):
    with pytest.raises(SertoolError, match=rf"^waveform: sample_rate={rate} Hz is outside the 4,000–384,000 Hz"):
        sertool.load(workspace / "runs" / "demo").predict(_TONE[:32_000], sample_rate=rate)


def test_import_is_light_and_three_lines_predict_with_a_run_an_export_and_an_ensemble(workspace):
    runner = CliRunner()
    assert runner.invoke(cli, ["export", str(workspace / "runs" / "demo"), "--out", str(workspace / "models" / "demo")]).exit_code == 0
    assert runner.invoke(cli, ["ensemble", str(workspace / "runs" / "demo"), str(workspace / "models" / "demo"),
                               "--corpus", str(workspace / "corpus"), "--save", str(workspace / "ens.json")]).exit_code == 0
    script = (
        "import sys, sertool\n"
        "assert 'torch' not in sys.modules, 'import sertool loaded torch'\n"
        "from click.testing import CliRunner\n"
        "from sertool.cli.commands import cli\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        "assert 'torch' not in sys.modules, 'sertool --help loaded torch'\n"
        "for model in sys.argv[1:]:\n"
        "    print(sertool.load(model).predict('a.wav'))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, "runs/demo", "models/demo", "ens.json"], cwd=workspace,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    printed = [ast.literal_eval(line) for line in result.stdout.splitlines()]
    assert len(printed) == 3 and printed[0] == printed[1]
    assert printed[2] == pytest.approx(printed[0], abs=1e-12)  # the mean of two identical members


def test_load_offers_every_inference_option_with_the_cli_s_default():
    """``sertool.load`` spells its options out (for help() and editors); they must stay those of
    ``InferenceOptions`` — the flags of `predict`, `evaluate` and `ensemble` — with the same defaults."""
    import dataclasses
    import inspect

    from sertool.api import load
    from sertool.inference.predictor import InferenceOptions

    offered = {name: parameter.default for name, parameter in inspect.signature(load).parameters.items()
               if parameter.kind is inspect.Parameter.KEYWORD_ONLY}
    # num_workers: data-loader processes of a corpus run; the API predicts what it is handed, in-process.
    expected = {field.name: field.default for field in dataclasses.fields(InferenceOptions) if field.name != "num_workers"}
    assert offered == expected


def test_from_pretrained_is_load_under_the_hubs_name(workspace):
    from sertool.api import Model

    run, clip = workspace / "runs" / "demo", str(workspace / "a.wav")
    by_hub_name = Model.from_pretrained(run, device="cpu").predict(clip)
    assert by_hub_name == sertool.load(run, device="cpu").predict(clip)
    with pytest.raises(SertoolError, match="max_batch_s"):
        Model.from_pretrained(run, max_batch_s=-1.0)  # the same checks as load
