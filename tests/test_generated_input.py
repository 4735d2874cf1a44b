"""Proof by generated input: every command and the Python API, given extreme and random values for each of the
options it declares and hostile paths, ends with valid output or one line naming what is wrong, never a
traceback; it writes nothing outside the outputs it was named, and changes no existing file without --force.

The options are read from the command line itself (click's parameters and their declared types), so a new
option is covered the day it is added. hypothesis draws one to three options per example and shrinks a
failure to the smallest command line that shows it. ``make test`` runs a few examples per command; the
longer sweep is the same test with more::

    SERTOOL_SWEEP_EXAMPLES=300 python -m pytest tests/test_generated_input.py     # or: make sweep
"""
from __future__ import annotations

import itertools
import math
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sertool
from sertool.cli.commands import cli
from sertool.core.config import Bounds
from sertool.core.errors import SertoolError
from tests.cases import case
from tests.corpus_files import write_learnable_corpus
from tests.systems import small_config

SWEEP_EXAMPLES = int(os.environ.get("SERTOOL_SWEEP_EXAMPLES") or 0)


def examples(quick: int) -> settings:
    """``quick`` examples in ``make test``, ``SERTOOL_SWEEP_EXAMPLES`` in the sweep (drawn afresh: tests/conftest.py's
    profiles); no deadline (commands train)."""
    return settings(max_examples=SWEEP_EXAMPLES or quick, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


# ---- values ---------------------------------------------------------------------------------------------------

# Numbers as a user might type them, and as a hostile one would: the declared edges and one step past them,
# zero, signs, the largest and smallest floats, beyond int64, non-numbers. Sizes stay either small or
# astronomically large (the allocation then fails at once), never a few GB that would really be allocated.
_ALWAYS = ["nan", "inf", "-inf", "1e400", "-1e400", "", "abc", "0x10", "1_000", " 3 ", "1e308", "-0", "5e-324"]
_HUGE_INTS = [2**40, 2**62, 2**63, 2**64, 10**30]


def _edges(bounds: Bounds) -> list[float]:
    values: list[float] = [0, 1, -1, 2]
    for limit in (bounds.at_least, bounds.above, bounds.at_most, bounds.below):
        if limit is not None:
            values += [limit, limit - 1, limit + 1, limit - 1e-9, limit + 1e-9]
    return values


def number_texts(kind: type, bounds: Bounds) -> st.SearchStrategy[str]:
    """What a numeric flag is given on the command line: half the time a value it allows (so that examples
    reach the work, not only the checks), otherwise an edge, a step past one, or something else entirely."""
    edges = _edges(bounds)
    low = bounds.at_least if bounds.at_least is not None else bounds.above if bounds.above is not None else -10
    high = min(value for value in (bounds.at_most, bounds.below, low + 100) if value is not None)
    if kind is int:
        allowed = st.integers(math.ceil(low), math.floor(high)).filter(lambda value: bounds.problem(value) is None)
        numbers = st.one_of(st.sampled_from([int(value) for value in edges if math.isfinite(value)] + _HUGE_INTS),
                            st.integers(-3, 64))
        return st.one_of(allowed.map(str), allowed.map(str), numbers.map(str),
                         st.sampled_from(_ALWAYS + ["1.5", "2.0", "1e3"]))
    allowed_floats = st.floats(low, high, allow_nan=False).filter(lambda value: bounds.problem(value) is None)
    floats = st.one_of(st.sampled_from(edges + [1e-300, 1e300, 1.7976931348623157e308, 0.01, 0.25, 1.5, 30.0]),
                       st.floats(-1e6, 1e6, allow_nan=False))
    return st.one_of(allowed_floats.map(repr), allowed_floats.map(repr), floats.map(repr), st.sampled_from(_ALWAYS))


# Paths a user might give where a file or folder is named: missing, a folder, a file of the wrong kind, a pipe,
# a device, names too long or climbing out, spaces and non-ASCII, and the workspace's real files.
HOSTILE_NAMES = st.sampled_from(["", " ", "-", "missing", "missing/deep/x.csv", "a b/é 中.csv", "x" * 300, "x" * 300 + "/y",
             "../outside.csv", "/dev/null", "/", ".", "..", "~no-such-user-of-sertool/x", "./pipe", "dir", "dir/", "notes.txt",
             "notes.txt/below.csv", "corpus", "corpus/Labels/labels_consensus.csv", "run", "run/best.pt",
             "run/config.yaml", "corpus/Audios", "out.csv", "out.json", "out.png", "out.txt", "owner/name",
             "new-dir/new.csv", "line\nbreak.csv", "nul\0.csv"])


def option_values(param: click.Parameter) -> st.SearchStrategy[Any]:
    """What hypothesis gives ``param``: a string (or tuple of strings) for the command line, or True for a flag."""
    kind = param.type
    if getattr(param, "is_flag", False):
        return st.just(True)
    if hasattr(kind, "bounds"):  # sertool's _Number: its declared bounds
        one = number_texts(kind.kind, kind.bounds)
        if getattr(kind, "many", False):
            one = st.lists(one, min_size=1, max_size=3).map(",".join) | st.sampled_from([",", "1,,2", " , "])
    elif isinstance(kind, click.IntRange):
        one = number_texts(int, Bounds(at_least=kind.min, at_most=kind.max))
    elif isinstance(kind, click.Choice):
        one = st.one_of(st.sampled_from(list(kind.choices)), st.sampled_from(["", "NONE", "x" * 300, "Fbank"]))
    else:
        one = HOSTILE_NAMES
    if param.nargs == 2:
        return st.tuples(one, one)
    return one


# ---- the workspace ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workspace_template(tmp_path_factory) -> Path:
    """A corpus, a finished run, a user's own files: what every example starts from (copied per test)."""
    from sertool.training.loop import train

    root = tmp_path_factory.mktemp("generated")
    write_learnable_corpus(root / "corpus", per_split={"Train": 10, "Development": 6, "Test1": 4})
    (root / "grid").mkdir()
    (root / "grid" / "grid.yaml").write_text('tables:\n  - title: "one system"\n    rows:\n      - {system: tiny}\n')
    (root / "grid" / "tiny.yaml").write_text(
        "model: {backbone: fbank, fbank_dim: 16, head_hidden_dim: 8}\n"
        "train: {epochs: 1, max_steps: 2, sampling: whole, accum_steps: 1}\ndata: {num_workers: 0}\n")
    train(small_config(root / "corpus", epochs=1), root / "run")
    (root / "dir").mkdir()
    (root / "notes.txt").write_text("the user's own notes\n")
    return root


@pytest.fixture
def workspace(workspace_template, tmp_path, monkeypatch) -> Iterator[Path]:
    root = tmp_path / "work"
    shutil.copytree(workspace_template, root)
    os.mkfifo(root / "pipe")
    monkeypatch.chdir(root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub id must fail at once, never wait on a network
    monkeypatch.setenv("SERTOOL_DEBUG", "0")
    threads = torch.get_num_threads()
    yield root
    # --threads and sertool.load(threads=...) set this process's torch threads: later tests get theirs back.
    torch.set_num_threads(threads)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder below ``root`` with its size and modification time."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            found[os.path.relpath(path, root)] = (info.st_size, info.st_mtime_ns)
    return found


# Options whose value names where a command writes (outputs, and the caches a user points elsewhere): the only
# places a new or changed file may be.
OUTPUT_OPTIONS = {"out", "out_option", "plot", "scores", "save", "submission", "cache_dir", "feature_cache"}


def check_outcome(result, *, before: dict, after: dict, workspace: Path, outputs: list[str], owned: list[str],
                  force: bool, command: str) -> None:
    """The property: exit 0, or one line (exit 2); no traceback; files change only where outputs were named, and
    existing ones only with --force or inside a folder the command continues (``owned``: train --resume's run
    folder, reproduce's --out, which re-running updates by design)."""
    output = result.output
    assert result.exit_code in (0, 2), f"{command}: exit {result.exit_code}\n{output}\n{result.exception!r}"
    assert "Traceback" not in output and "internal error" not in output, f"{command}:\n{output}"
    if result.exit_code == 2:
        errors = [line for line in output.splitlines() if line.startswith(("error: ", "Error: "))]
        assert len(errors) == 1, f"{command}: not one error line:\n{output}"
    def places(names: list[str]) -> list[str]:
        return [os.path.normpath(os.path.join(workspace, os.path.expanduser(name))) for name in names
                if name and "\0" not in name]

    def under(full: str, targets: list[str]) -> bool:
        return any(full == target or full.startswith(target + os.sep) or target.startswith(full + os.sep)
                   for target in targets)

    allowed, continued = places(outputs + owned), places(owned)
    changed = {path for path in set(before) | set(after) if before.get(path) != after.get(path)}
    for path in changed:
        full = os.path.normpath(os.path.join(workspace, path))
        assert under(full, allowed), f"{command}: {path} changed, but no output names it (outputs: {outputs})\n{output}"
        if path in before and path in after and not os.path.isdir(full):
            assert force or under(full, continued), \
                f"{command}: {path} existed and was changed without --force\n{output}"


# ---- the commands -----------------------------------------------------------------------------------------------

def _command(path: str) -> click.Command:
    command: click.Command = cli
    for name in path.split():
        command = command.commands[name]  # type: ignore[attr-defined]
    return command


# Per command: the arguments of a valid run, and which options stay out of the draw (they would only make an
# example slow without reaching other code: the length of training is bounded by --epochs 1 --max-steps 2).
BASE: dict[str, list[str]] = {
    "data info": ["corpus"],
    "data demo": ["made-corpus", "--size", "tiny"],
    "data speakers": ["--corpus", "corpus", "--speaker-model", "log-mel-stats", "--num-speakers", "2",
                      "--per-speaker", "2", "--out", "speakers.png"],
    "data manifest": ["corpus/Audios", "meta.csv", "--out", "made.csv", "--path-column", "file",
                      "--arousal-column", "a", "--valence-column", "v", "--dominance-column", "d"],
    "train": ["--corpus", "corpus", "--backbone", "fbank", "--fbank-dim", "16", "--head-hidden-dim", "8",
              "--epochs", "1", "--max-steps", "2", "--num-workers", "0", "--out", "newrun"],
    "evaluate": ["run", "--corpus", "corpus"],
    "predict": ["run", "--corpus", "corpus", "--split", "Test1"],
    "ensemble": ["run", "run/best.pt", "--corpus", "corpus"],
    "export": ["run", "--out", "exported"],
    "baseline": ["--corpus", "corpus", "--out", "floor", "--num-workers", "0"],
    "plot": ["run", "--out", "curves.png"],
    "reproduce": ["--corpus", "corpus", "--grid", "grid/grid.yaml", "--out", "repro", "--device", "cpu"],
}
SLOW_OR_ELSEWHERE = {"quiet", "debug", "tensorboard", "mlflow", "push_to_hub"}  # --mlflow: tests/test_tracking.py
# Options left to the sweep: a drawn --seeds of 100 trains the grid 100 times.
SWEEP_ONLY = {"reproduce": {"seeds"}}
QUICK_EXAMPLES = {"data info": 8, "data demo": 4, "data speakers": 6, "data manifest": 10, "train": 20,
                  "evaluate": 15, "predict": 15, "ensemble": 10, "export": 10, "baseline": 8, "plot": 8, "reproduce": 10}


def _metadata(workspace: Path) -> None:
    lines = ["file,a,v,d"] + [f"{path.name},{index % 5 + 1},3,4" for index, path in
                              enumerate(sorted((workspace / "corpus" / "Audios").glob("*.wav")))]
    (workspace / "meta.csv").write_text("\n".join(lines) + "\n")


def _leading(command: str) -> list[str]:
    """The positional arguments of ``BASE[command]``: its words before the first option."""
    return list(itertools.takewhile(lambda word: not word.startswith("--"), BASE[command]))


def _positional(data, command: str) -> list[str]:
    """``BASE[command]``'s positional arguments, one of them (or, for a list, all of it) drawn half the time from
    the hostile paths: the checkpoint or run a command reads, the files predict reads, a corpus root."""
    arguments = [param for param in _command(command).params if isinstance(param, click.Argument)]
    words, slots = _leading(command), []
    for param in arguments:  # the base's words, as click hands them to each argument
        taken = len(words) if param.nargs == -1 else min(1, len(words))
        slots.append(words[:taken])
        words = words[taken:]
    if arguments and data.draw(st.booleans(), label="hostile argument"):
        index = data.draw(st.integers(0, len(arguments) - 1), label="argument")
        slots[index] = (data.draw(st.lists(HOSTILE_NAMES, max_size=3), label=arguments[index].name)
                        if arguments[index].nargs == -1 else [data.draw(HOSTILE_NAMES, label=arguments[index].name)])
    return [word for slot in slots for word in slot]


def _drawn_command(data, command: str, workspace: Path) -> tuple[list[str], list[str], list[str], bool]:
    """The command line of one example: the base arguments with one to three options drawn in; the output
    paths it names; the folders it may continue (``check_outcome``); whether it has --force."""
    left_out = SLOW_OR_ELSEWHERE | (set() if SWEEP_EXAMPLES else SWEEP_ONLY.get(command, set()))
    params = {param.name: param for param in _command(command).params
              if isinstance(param, click.Option) and param.name not in left_out}
    chosen = data.draw(st.lists(st.sampled_from(sorted(params)), min_size=1, max_size=3, unique=True), label="options")
    positional = _positional(data, command)
    arguments = positional + BASE[command][len(_leading(command)):]
    for name in chosen:
        param = params[name]
        value = data.draw(option_values(param), label=param.opts[0])
        flag = param.opts[0]
        if flag in arguments and value is not True:  # replace the base value
            index = arguments.index(flag)
            arguments[index + 1] = value
        elif value is True:
            arguments.append(flag)
        else:
            arguments += [flag, *value] if isinstance(value, tuple) else [flag, value]
    outputs = [arguments[index + 1] for index, item in enumerate(arguments[:-1])
               if item.lstrip("-").replace("-", "_") in OUTPUT_OPTIONS]
    outputs += {"train": ["newrun"]}.get(command, [])
    if command == "data demo":
        outputs += positional
    if command == "data demo" and "--out" in arguments:
        outputs.append(arguments[arguments.index("--out") + 1])
    owned = [arguments[index + 1] for index, item in enumerate(arguments[:-1]) if item == "--resume"]
    if command == "reproduce":
        owned += ["repro"] + ([arguments[arguments.index("--out") + 1]] if "--out" in arguments else [])
    return arguments, outputs, owned, "--force" in arguments


@case("guards", "every option and positional argument of every command given drawn values: the declared edges and "
      "one step past, NaN, infinity, 1e400, huge integers, non-numbers, unknown choices, and hostile paths (missing, "
      "a folder, a pipe, /dev/null, 300 characters, `../`, non-ASCII, a line break, the corpus's own files)",
      "exit 0, or one line and exit 2; never a traceback; no file changes except the outputs the command was named; "
      "no existing file changed without --force (hypothesis, `make sweep` for a longer run)")
@pytest.mark.parametrize("command", sorted(BASE))
def test_any_option_value_gives_output_or_one_line(command, workspace):
    if command == "data manifest":
        _metadata(workspace)
    exits: Counter[int] = Counter()

    @examples(QUICK_EXAMPLES[command])
    @given(data=st.data())
    def run_one(data):
        arguments, outputs, owned, force = _drawn_command(data, command, workspace)
        before = snapshot(workspace)
        result = CliRunner().invoke(cli, [*command.split(), *arguments], catch_exceptions=True)
        exits[result.exit_code] += 1
        check_outcome(result, before=before, after=snapshot(workspace), workspace=workspace, outputs=outputs,
                      owned=owned, force=force, command=" ".join(["sertool", command, *map(repr, arguments)]))

    run_one()
    # The draws must reach the work as well as the checks: some examples run the whole command.
    assert exits[0] > 0, f"sertool {command}: no drawn example ran to the end ({dict(exits)})"
    print(f"sertool {command}: exit statuses {dict(exits)}")


# ---- the Python API --------------------------------------------------------------------------------------------

def _waveforms() -> st.SearchStrategy[Any]:
    lengths = st.sampled_from([0, 1, 100, 3_999, 4_000, 16_000, 48_000])
    fills = st.sampled_from([0.0, 1e-30, 0.5, 1.0, 99.0, 1e30, np.nan, np.inf, -np.inf])
    plain = st.builds(lambda n, fill, dtype: (np.random.default_rng(n).normal(0, 0.1, n) + fill).astype(dtype),
                      lengths, fills, st.sampled_from([np.float32, np.float64, np.int16, np.float16]))
    shaped = st.builds(lambda n, channels: np.zeros((channels, n), dtype=np.float32) + 0.01,
                       st.sampled_from([1, 16_000]), st.sampled_from([1, 2, 8]))
    odd = st.sampled_from([[], "missing.wav", "dir", "pipe", "corpus/Labels/labels_consensus.csv", 3, None,
                           np.zeros((2, 2, 2), dtype=np.float32), b"bytes"])
    return st.one_of(plain, shaped, odd)


API_VALUES = {
    "sample_rate": st.one_of(st.sampled_from([None, 0, -1, 1, 3_999, 4_000, 16_000, 384_000, 384_001, 10**12, 2**63,
                                              16_000.0, True, "16000", np.int64(16_000)])),
    "window_s": st.sampled_from([0.0, 0.1, 0.25, 1.0, 10.0, 1e300, math.nan, math.inf, -1.0, "10"]),
    "hop_s": st.sampled_from([0.0, 1e-300, 0.1, 1.0, 5.0, 1e300, math.nan, -1.0]),
}
LOAD_VALUES = {
    "device": st.sampled_from(["auto", "cpu", "cuda", "tpu", "", None, 3]),
    "max_batch_s": st.sampled_from([1e-300, 0.0, -1.0, 1.0, 120.0, 1e300, math.nan, math.inf, "120"]),
    "amp": st.sampled_from(["auto", "bf16", "fp16", "off", "int8", None]),
    "quantize": st.sampled_from(["off", "int8", "int4", None]),
    "threads": st.sampled_from([0, 1, -1, 2**40, 1.5, "2", True]),
    "cache_dir": st.sampled_from([None, "dir", "notes.txt", "pipe", "/dev/null", "x" * 300]),
}


@case("guards", "`sertool.load` and `Model.predict` given drawn arguments: waveforms of every length, dtype, shape "
      "and extreme or non-finite fill, paths that are folders, pipes or no audio, sample rates from 0 to 2**63, "
      "windows and hops from 0 to 1e300 and NaN, every load option out of its range",
      "A/V/D dicts with finite values in 1..7, or a SertoolError; never another exception (hypothesis)")
def test_the_api_gives_ratings_or_a_sertool_error(workspace):
    @examples(40)
    @given(data=st.data())
    def run_one(data):
        load_keywords = data.draw(st.fixed_dictionaries({}, optional=LOAD_VALUES), label="load")
        predict_keywords = data.draw(st.fixed_dictionaries({}, optional=API_VALUES), label="predict")
        audio = data.draw(st.one_of(_waveforms(), st.lists(_waveforms(), min_size=1, max_size=3)), label="audio")
        try:
            model = sertool.load("run", **load_keywords)
            result = model.predict(audio, **predict_keywords)
        except SertoolError as error:
            assert "\n" not in str(error).strip(), str(error)
            return
        rows = [result] if isinstance(result, dict) else result
        for row in rows:
            assert sorted(row) == ["arousal", "dominance", "valence"]
            assert all(math.isfinite(value) and 1.0 <= value <= 7.0 for value in row.values()), row

    run_one()




# ---- file contents ---------------------------------------------------------------------------------------------

_CELLS = st.one_of(st.sampled_from(["", " ", '"', '""', ",", "nan", "inf", "-1e400", "1e308", "7.0000001", "0.999",
                                    "Train", "Development", "Test3", "X", "O", "Male", "Unknown", "../x.wav",
                                    "/etc/passwd", "MSP-PODCAST_0001_0001.wav", "\ufeff", "é", "\x00", "\t"]),
                   st.text(max_size=12))
_LINES = st.one_of(st.lists(_CELLS, min_size=0, max_size=10).map(",".join),
                   st.binary(max_size=40).map(lambda data: data.decode("latin-1")))


def _expect_output_or_one_line(result, what: str) -> None:
    assert result.exit_code in (0, 2), f"{what}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output and "internal error" not in result.output, f"{what}:\n{result.output}"
    if result.exit_code == 2:
        errors = [line for line in result.output.splitlines() if line.startswith(("error: ", "Error: "))]
        assert len(errors) == 1, f"{what}: not one error line:\n{result.output}"


@case("guards", "labels files, manifests, predictions CSVs and --transcripts CSVs of drawn lines: cells with quotes, "
      "commas, NaN, 1e400, paths that climb out, a byte-order mark, NUL bytes, and lines of raw bytes",
      "a corpus with the bad rows dropped and named, or one line; never a traceback (hypothesis)")
@pytest.mark.parametrize("table", ["labels", "manifest", "predictions", "transcripts"])
def test_any_table_gives_rows_or_one_line(workspace, table):
    labels = workspace / "corpus" / "Labels" / "labels_consensus.csv"
    original = labels.read_bytes()
    header = {"labels": original.decode().splitlines()[0], "manifest": "path,split,arousal,valence,dominance,speaker",
              "predictions": "FileName,EmoAct,EmoVal,EmoDom", "transcripts": "FileName,transcript"}[table]

    @examples(25)
    @given(lines=st.lists(_LINES, max_size=8), keep_header=st.booleans(), keep_rows=st.booleans())
    def run_one(lines, keep_header, keep_rows):
        rows = original.decode().splitlines()[1:] if keep_rows and table == "labels" else []
        text = "\n".join(([header] if keep_header else []) + rows + lines) + "\n"
        target = {"labels": labels, "manifest": workspace / "m.csv", "predictions": workspace / "p.csv",
                  "transcripts": workspace / "t.csv"}[table]
        target.write_bytes(text.encode("utf-8", "surrogateescape"))
        command = {"labels": ["data", "info", "corpus"], "manifest": ["data", "info", "m.csv"],
                   "predictions": ["evaluate", "p.csv", "--corpus", "corpus", "--split", "Test1"],
                   "transcripts": ["predict", "run", "--corpus", "corpus", "--split", "Test1", "--transcripts",
                                   "t.csv"]}[table]
        _expect_output_or_one_line(CliRunner().invoke(cli, command), f"{table}: {text!r}")

    try:
        run_one()
    finally:
        labels.write_bytes(original)


_YAML_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=8),
              st.sampled_from(["fbank", "wavlm", "gender", "Train", "corpus", "", "none"])),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children,
                                                                                max_size=3)),
    max_leaves=6)
_CONFIG_KEYS = st.sampled_from(["data", "model", "train", "seed", "recipe", "trian", "epochs"])
_SECTION_KEYS = st.sampled_from(["backbone", "fbank_dim", "head_hidden_dim", "epochs", "max_steps", "lr_heads",
                                 "aux", "corpus", "num_workers", "head_dropout", "amp", "sampling", "batch_size", "x"])


@case("guards", "a --config YAML drawn from nested mappings, lists, huge integers, NaN, unknown and misplaced keys",
      "the run trains, or one line naming the file and the key; never a traceback (hypothesis)")
def test_any_config_file_trains_or_gives_one_line(workspace):
    @examples(25)
    @given(document=st.dictionaries(_CONFIG_KEYS, st.one_of(_YAML_VALUES, st.dictionaries(_SECTION_KEYS, _YAML_VALUES,
                                                                                          max_size=4)), max_size=4))
    def run_one(document):
        import yaml

        (workspace / "drawn.yaml").write_text(yaml.safe_dump(document, allow_unicode=True))
        result = CliRunner().invoke(cli, ["train", "--config", "drawn.yaml", "--corpus", "corpus", "--backbone", "fbank",
                                          "--fbank-dim", "16", "--head-hidden-dim", "8", "--epochs", "1",
                                          "--max-steps", "1", "--num-workers", "0", "--out", "cfgrun", "--force"])
        _expect_output_or_one_line(result, f"config {document!r}")

    run_one()


def _predictions_of(model: str) -> Any:
    """``predict MODEL`` on Test1 of the workspace's corpus, to standard output (the invocation's result)."""
    return CliRunner().invoke(cli, ["predict", model, "--corpus", "corpus", "--split", "Test1"])


def _expect_the_same_or_one_line(result, pristine, what: str) -> None:
    """Damage either changes nothing a model predicts or is refused in one line: never other numbers, exit 0."""
    _expect_output_or_one_line(result, what)
    if result.exit_code == 0:
        assert result.stdout == pristine.stdout, f"{what}: exit 0 with other predictions"


@case("checkpoints", "a checkpoint cut at a drawn byte, with drawn bytes overwritten (inside its tensors too), or "
      "replaced by drawn bytes, given to predict",
      "the undamaged checkpoint's predictions, or one line naming the file; never other predictions with exit 0, "
      "never a traceback (hypothesis)")
def test_any_damaged_checkpoint_gives_its_predictions_or_one_line(workspace):
    original = (workspace / "run" / "best.pt").read_bytes()
    (workspace / "damaged.pt").write_bytes(original)
    pristine = _predictions_of("damaged.pt")
    assert pristine.exit_code == 0, pristine.output

    @examples(25)
    @given(cut=st.integers(0, len(original)), at=st.integers(0, len(original) - 1), noise=st.binary(min_size=1,
                                                                                                     max_size=64),
           kind=st.sampled_from(["cut", "overwrite", "noise"]))
    def run_one(cut, at, noise, kind):
        data = {"cut": original[:cut], "overwrite": original[:at] + noise + original[at + len(noise):],
                "noise": noise}[kind]
        (workspace / "damaged.pt").write_bytes(data)
        _expect_the_same_or_one_line(_predictions_of("damaged.pt"), pristine, f"{kind} at {cut}/{at}")

    run_one()


@case("checkpoints", "an exported model folder (safetensors or ONNX) with any one of its files cut at a drawn byte, "
      "with drawn bytes overwritten, replaced by drawn bytes or removed, given to predict",
      "the undamaged folder's predictions, or one line naming the folder or file; never other predictions with "
      "exit 0, never a traceback (hypothesis)")
def test_any_damaged_model_folder_gives_its_predictions_or_one_line(workspace):
    formats = ["safetensors"] + (["onnx"] if _importable("onnx") and _importable("onnxruntime") else [])
    pristine = {}
    for model_format in formats:
        result = CliRunner().invoke(cli, ["export", "run", "--format", model_format, "--out", f"export-{model_format}"])
        assert result.exit_code == 0, result.output
        pristine[model_format] = {path.name: path.read_bytes()
                                  for path in sorted((workspace / f"export-{model_format}").iterdir())}
    shutil.rmtree(workspace / "run")  # a folder's predictions come from the folder alone
    pristine_predictions = {model_format: _predictions_of(f"export-{model_format}") for model_format in formats}
    assert all(result.exit_code == 0 for result in pristine_predictions.values())

    @examples(30)
    @given(data=st.data(), model_format=st.sampled_from(formats), kind=st.sampled_from(["cut", "overwrite", "noise",
                                                                                        "remove"]))
    def run_one(data, model_format, kind):
        files = pristine[model_format]
        folder = workspace / "damaged-model"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        name = data.draw(st.sampled_from(sorted(files)), label="file")
        original = files[name]
        cut = data.draw(st.integers(0, len(original)), label="cut")
        noise = data.draw(st.binary(min_size=1, max_size=64), label="noise")
        damaged = {"cut": original[:cut], "overwrite": original[:cut] + noise + original[cut + len(noise):],
                   "noise": noise, "remove": None}[kind]
        for other, content in files.items():
            if other != name:
                (folder / other).write_bytes(content)
        if damaged is not None:
            (folder / name).write_bytes(damaged)
        _expect_the_same_or_one_line(_predictions_of("damaged-model"), pristine_predictions[model_format],
                                     f"{model_format} {name} {kind} at {cut} {noise!r}")

    run_one()


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@case("data", "a WAV cut at a drawn byte or with drawn bytes overwritten (header included), given to predict",
      "predictions, or one line naming the file; never a traceback (hypothesis)")
def test_any_damaged_audio_gives_predictions_or_one_line(workspace):
    original = sorted((workspace / "corpus" / "Audios").glob("*.wav"))[0].read_bytes()

    @examples(30)
    @given(cut=st.integers(0, len(original)), at=st.integers(0, 64), noise=st.binary(min_size=1, max_size=16),
           kind=st.sampled_from(["cut", "overwrite"]))
    def run_one(cut, at, noise, kind):
        data = original[:cut] if kind == "cut" else original[:at] + noise + original[at + len(noise):]
        (workspace / "damaged.wav").write_bytes(data)
        result = CliRunner().invoke(cli, ["predict", "run", "damaged.wav"])
        _expect_output_or_one_line(result, f"{kind} at {cut}/{at} {noise!r}")

    run_one()


@case("inference", "an ensemble plan of drawn JSON (members that are missing, itself, numbers, nested lists; "
      "weights of any value)", "predictions, or one line naming the plan; never a traceback (hypothesis)")
def test_any_ensemble_plan_gives_predictions_or_one_line(workspace):
    import json

    members = st.lists(st.sampled_from(["run", "run/best.pt", "plan.json", "missing", "", "corpus", "notes.txt"]),
                       max_size=3)
    choices = st.lists(st.fixed_dictionaries({"member": st.one_of(st.integers(-1, 3), st.text(max_size=2)),
                                              "weight": st.one_of(st.floats(), st.integers(-2, 2**70))}), max_size=3)
    attributes = st.one_of(st.dictionaries(st.sampled_from(["arousal", "valence", "dominance", "x"]),
                                           st.fixed_dictionaries({"members": choices}), max_size=3), _YAML_VALUES)
    plans = st.one_of(
        st.fixed_dictionaries({"format": st.sampled_from(["sertool-ensemble", "x"]), "members": members},
                              optional={"version": st.one_of(st.integers(-1, 3), st.text(max_size=2)),
                                        "kind": st.sampled_from(["mean", "per-attribute", "x"]),
                                        "attributes": attributes}),
        _YAML_VALUES)

    @examples(25)
    @given(plan=plans)
    def run_one(plan):
        (workspace / "plan.json").write_text(json.dumps(plan, allow_nan=True))
        result = CliRunner().invoke(cli, ["predict", "plan.json", "--corpus", "corpus", "--split", "Test1"])
        _expect_output_or_one_line(result, f"plan {plan!r}")

    run_one()
