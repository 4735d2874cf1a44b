"""Benchmarks 5, 7 and 8, which run sertool in subprocesses: peak memory against corpus size, start-up, and
peak memory of `predict` against the length of a file."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from measure import (
    MSP_TRAIN_UTTERANCES,
    Figure,
    Target,
    interleaved,
    linked_utterances,
    make_utterances,
    median,
    ratio_of_rounds,
    timed,
    write_long_speechlike,
    write_manifest,
)
from sertool.core.config import Config
from sertool.inference.predictions import read_predictions

BENCH_DIR = Path(__file__).resolve().parent
_IMPORT_LINE = re.compile(r"^import time:\s*(\d+)\s*\|\s*(\d+)\s*\|( *)(\S+)\s*$")


def _run(command: list[str], *, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run ``command``; a failure is the benchmark's bug, reported with the command's error output."""
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}):\n{completed.stderr[-2000:]}")
    return completed


def child_env(cache_dir: Path) -> dict[str, str]:
    """The environment of every child: offline, its caches inside the benchmark's temp folder, and the
    sertool of this checkout first on the path (the interpreter's own may be installed from another one)."""
    path = os.pathsep.join(filter(None, [str(BENCH_DIR.parent), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "SERTOOL_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": path}


# ---------------------------------------------------------------------------------------------------------
# 5. Peak memory of training against corpus size.

def memory_scaling(folder: Path, *, small_train: int, factor: int, valid: int, duration_s: float, repeats: int,
                   cache_dir: Path) -> Figure:
    """Peak RSS of the same few training steps (fbank, one process) on a corpus and on one ``factor`` times larger.

    Both corpora share their Development split and audio files (the small one is the first rows of the
    large one); every clip has the same duration, so every step has the same shapes. A sertool that loaded
    audio up front would hold ``factor`` times more of it.
    """
    large_train = small_train * factor
    train = make_utterances(folder / "audio", [duration_s] * large_train, seed=5, prefix="train")
    dev = make_utterances(folder / "audio", [duration_s] * valid, seed=6, split="Development", prefix="dev")
    manifests = {"small": write_manifest(folder / "small.csv", [*train[:small_train], *dev]),
                 "large": write_manifest(folder / "large.csv", [*train, *dev])}
    reports = _child_reports(folder, manifests, arguments=[], repeats=repeats, env=child_env(cache_dir))
    peaks = {label: [report["max_rss_kb"] for report in values] for label, values in reports.items()}
    steps = reports["small"][0]["steps"]
    per_utterance_kb = corpus_bytes_per_utterance(manifests["large"]) / 1024
    return Figure(
        key="memory_corpus_10x",
        benchmark=f"5. peak memory, corpus ×{factor}",
        value=median(peaks["large"]) / median(peaks["small"]), unit="×", target=Target("<=", 1.2),
        compared=(f"peak RSS (VmHWM) of `train` (fbank, {steps} optimiser steps + validation) on {large_train:,} vs "
                  f"{small_train:,} training utterances, each run in its own process"),
        details={"max_rss_mb": {label: [round(kb / 1024, 1) for kb in values] for label, values in peaks.items()},
                 "steps": steps, "corpus_kb_per_utterance": round(per_utterance_kb, 3),
                 "corpus_mb_at_84k_utterances": round(per_utterance_kb * MSP_TRAIN_UTTERANCES / 1024, 1)},
    )


def memory_scaling_workers(folder: Path, *, wavlm_dir: Path, small_train: int, factor: int, valid: int,
                           clips: int, duration_s: float, workers: int, repeats: int, cache_dir: Path) -> list[Figure]:
    """Peak memory of the whole process tree (the run and its loader workers) for the same few steps of the
    tiny WavLM on a corpus and on one ``factor`` times larger.

    The training rows are hard links to ``clips`` distinct files (a corpus of 100,000 files costs the disk a few
    hundred), each with its own id, path, labels and transcript, as a real corpus's rows. Two figures: the
    highest sum of PSS (the memory really used: a page shared between the run and its forked workers counted
    once) and the highest sum of RSS (what a scheduler that adds up its processes' RSS reports: a page shared
    by nine processes counted nine times, so whatever the run holds per utterance when the workers fork counts
    once per process).
    """
    large_train = small_train * factor
    distinct = make_utterances(folder / "clips", [duration_s] * clips, seed=5, prefix="clip")
    train = linked_utterances(folder / "audio", distinct, large_train, seed=5, prefix="train")
    dev = make_utterances(folder / "audio", [duration_s] * valid, seed=6, split="Development", prefix="dev")
    manifests = {"small": write_manifest(folder / "small.csv", [*train[:small_train], *dev]),
                 "large": write_manifest(folder / "large.csv", [*train, *dev])}
    # The first run on a corpus scans its files, and its reader threads leave memory in the allocator that a
    # run on a scanned corpus does not have (docs/performance.md): a warm-up run of each first, as in use.
    reports = _child_reports(folder, manifests, arguments=["--wavlm", str(wavlm_dir), "--workers", str(workers)],
                             repeats=repeats, env=child_env(cache_dir), warm_up=True)
    steps, processes = reports["small"][0]["steps"], max(report["processes"] for report in reports["large"])
    what = (f"`train` (tiny WavLM, {workers} loader workers, {steps} optimiser steps + validation: {processes} "
            f"processes) on {large_train:,} vs {small_train:,} training utterances, each run in its own process "
            "tree, measured after each step")
    details = {"mb": {measure: {label: [round(report[key] / 1024, 1) for report in values]
                                for label, values in reports.items()}
                      for measure, key in (("tree_pss", "tree_pss_kb"), ("tree_rss", "tree_rss_kb"),
                                           ("main_vmhwm", "max_rss_kb"))},
               "steps": steps, "processes": processes, "distinct_audio_files": clips + valid}

    def figure(key: str, measure: str, name: str) -> Figure:
        peaks = {label: [report[key] for report in values] for label, values in reports.items()}
        return Figure(key=f"memory_corpus_10x_workers_{measure}",
                      benchmark=f"5. peak memory, corpus ×{factor}, tiny WavLM + {workers} workers, {name}",
                      value=median(peaks["large"]) / median(peaks["small"]), unit="×", target=Target("<=", 1.1),
                      compared=f"highest {name} of {what}", details=details)

    return [figure("tree_pss_kb", "pss", "summed PSS"), figure("tree_rss_kb", "rss", "summed RSS")]


def _child_reports(folder: Path, manifests: dict[str, Path], *, arguments: list[str], repeats: int,
                   env: dict[str, str], warm_up: bool = False) -> dict[str, list[dict]]:
    """``memory_child.py``'s report for each manifest, ``repeats`` times, the two interleaved; with ``warm_up``,
    after one run of each that is not reported (it fills the scan cache, as a corpus's first command does)."""
    folder.mkdir(parents=True, exist_ok=True)
    if warm_up:
        _child_reports(folder / "warm-up", manifests, arguments=arguments, repeats=1, env=env)
    reports: dict[str, list[dict]] = {label: [] for label in manifests}

    def run(label: str):
        def measure(round_index: int) -> float:
            completed = _run([sys.executable, str(BENCH_DIR / "memory_child.py"), str(manifests[label]),
                              str(folder / f"run-{label}-{round_index}"), *arguments], env=env)
            reports[label].append(json.loads(completed.stdout.strip().splitlines()[-1]))
            return float(reports[label][-1]["max_rss_kb"])
        return measure

    interleaved({label: run(label) for label in manifests}, rounds=repeats)
    return reports


def corpus_bytes_per_utterance(manifest: Path) -> float:
    """Python memory an opened corpus holds per utterance (its records), measured with tracemalloc.

    The RSS difference between the two corpora is within the noise of RSS itself; this says what a
    corpus the size of MSP-Podcast's would add.
    """
    import tracemalloc

    from sertool.data.corpus import open_corpus

    tracemalloc.start()
    try:
        corpus = open_corpus(manifest)
        held_bytes, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held_bytes / len(corpus.utterances)


# ---------------------------------------------------------------------------------------------------------
# 7. Start-up.

def tiny_checkpoint(folder: Path, *, cache_dir: Path) -> Path:
    """Train a tiny fbank system for one epoch and return its run folder (what `predict` accepts)."""
    from sertool.training.loop import train

    train_set = make_utterances(folder / "audio", [1.5] * 8, seed=7, prefix="train")
    dev = make_utterances(folder / "audio", [1.5] * 4, seed=8, split="Development", prefix="dev")
    config = Config()
    config.data.corpus = str(write_manifest(folder / "manifest.csv", [*train_set, *dev]))
    config.data.num_workers = 0
    config.data.cache_dir = str(cache_dir)
    config.model.backbone = "fbank"
    config.model.fbank_dim = 32
    config.model.head_hidden_dim = 16
    config.train.sampling = "whole"
    config.train.batch_size = 4
    config.train.accum_steps = 1
    config.train.epochs = 1
    run_dir = folder / "run"
    train(config, run_dir, device="cpu")
    return run_dir


def import_breakdown(command: list[str], *, env: dict[str, str], top: int = 8) -> dict[str, object]:
    """``python -X importtime``: the heaviest top-level packages and sertool modules, cumulative seconds.

    A package's cumulative time includes whatever it imports first (torch's includes numpy's).
    """
    stderr = _run([sys.executable, "-X", "importtime", *command], env=env).stderr
    packages: dict[str, float] = {}
    sertool_modules: dict[str, float] = {}
    for line in stderr.splitlines():
        match = _IMPORT_LINE.match(line)
        if not match:
            continue
        cumulative_s, name = int(match.group(2)) / 1e6, match.group(4)
        if "." not in name:
            packages[name] = max(packages.get(name, 0.0), cumulative_s)
        elif name.startswith("sertool."):
            sertool_modules[name] = max(sertool_modules.get(name, 0.0), cumulative_s)
    heaviest = lambda table: {name: round(s, 3) for name, s in sorted(table.items(), key=lambda kv: -kv[1])[:top]}
    return {"packages_s": heaviest(packages), "sertool_modules_s": heaviest(sertool_modules),
            "imports_torch": "torch" in packages, "imports_transformers": "transformers" in packages}


def startup(folder: Path, *, rounds: int, cache_dir: Path) -> list[Figure]:
    """Wall time of `sertool --help` and of `sertool predict RUN one_short.wav`, against Python's own start-up."""
    run_dir = tiny_checkpoint(folder, cache_dir=cache_dir)
    clip = make_utterances(folder / "clip", [2.0], seed=9, prefix="one_short")[0].audio_path
    env = child_env(cache_dir)
    python = sys.executable
    script = Path(python).with_name("sertool")  # the console script `make install` puts beside the interpreter
    sertool = [str(script)] if script.exists() else [python, "-m", "sertool"]
    predict_args = ["predict", str(run_dir), str(clip), "--device", "cpu"]
    bare, with_torch = "python -c pass", "python -c 'import torch'"
    commands = {
        bare: [python, "-c", "pass"],
        with_torch: [python, "-c", "import torch"],
        "sertool --help": [*sertool, "--help"],
        "sertool predict": [*sertool, *predict_args],
    }
    seconds = interleaved({name: _timed_run(command, env) for name, command in commands.items()}, rounds=rounds)
    walls = {name: round(median(values), 3) for name, values in seconds.items()}
    help_ratio, help_rounds = ratio_of_rounds(seconds["sertool --help"], seconds[bare])
    help_torch, _ = ratio_of_rounds(seconds["sertool --help"], seconds[with_torch])
    predict_ratio, predict_rounds = ratio_of_rounds(seconds["sertool predict"], seconds[with_torch])
    help_imports = import_breakdown(["-m", "sertool", "--help"], env=env)
    predict_imports = import_breakdown(["-m", "sertool", *predict_args], env=env)
    return [
        Figure(key="startup_help", benchmark="7. start-up: sertool --help", value=help_ratio, unit="×", target=None,
               compared=f"`sertool --help` ({walls['sertool --help']} s) vs `python -c pass` ({walls[bare]} s)",
               details={"median_wall_s": walls, "per_round_ratio": help_rounds,
                        "ratio_to_import_torch": round(help_torch, 3), "imports": help_imports}),
        Figure(key="startup_predict", benchmark="7. start-up: sertool predict", value=predict_ratio, unit="×",
               target=None,
               compared=(f"`sertool predict RUN one_short.wav` (2 s clip, fbank; {walls['sertool predict']} s) vs "
                         f"`python -c 'import torch'` ({walls[with_torch]} s)"),
               details={"median_wall_s": walls, "per_round_ratio": predict_rounds, "imports": predict_imports}),
    ]


def _timed_run(command: list[str], env: dict[str, str]) -> Callable[[int], float]:
    """A variant for ``interleaved``: run ``command`` and return its wall seconds."""
    return lambda _: timed(lambda: _run(command, env=env))[0]


# ---------------------------------------------------------------------------------------------------------
# 8. Peak memory of predict against the length of a file.

# The bound for a 3-hour file on the CPU, checked beside the ratio.
LONG_AUDIO_MAX_RSS_MB = 2048


def long_audio_memory(folder: Path, *, long_s: float, short_s: float, window_s: float, cache_dir: Path) -> Figure:
    """Peak RSS of `sertool predict` (a tiny fbank run) on a ``long_s`` file vs a ``short_s`` one.

    Both files are 16 kHz speech-like audio written block by block; both are cut into ``window_s``
    windows without overlap (``--hop-s`` = ``--window-s``: the same per-window work as any hop, half the
    windows of the default). Each prediction runs in its own process (``predict_child.py``), which reports
    its ``VmHWM``. A `predict` that read a window past its span, or held every window at once, would grow
    with the file.
    """
    run_dir = tiny_checkpoint(folder / "model", cache_dir=cache_dir)
    env = child_env(cache_dir)
    peaks_kb, windows = {}, {}
    for label, duration_s in (("short", short_s), ("long", long_s)):
        audio = write_long_speechlike(folder / f"{label}.wav", duration_s=duration_s, seed=11)
        out = folder / f"{label}.csv"
        completed = _run([sys.executable, str(BENCH_DIR / "predict_child.py"), str(run_dir), str(audio), "--out",
                          str(out), "--window-s", f"{window_s:g}", "--hop-s", f"{window_s:g}", "--device", "cpu"],
                         env=env)
        peaks_kb[label] = json.loads(completed.stdout.strip().splitlines()[-1])["max_rss_kb"]
        windows[label] = len(read_predictions(out).segments)
        audio.unlink()  # 346 MB for 3 hours: not kept longer than needed
    long_mb, short_mb = peaks_kb["long"] / 1024, peaks_kb["short"] / 1024
    hours = lambda seconds: f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min"
    return Figure(
        key="memory_long_audio",
        benchmark=f"8. peak memory, predict {hours(long_s)} vs {hours(short_s)} file",
        value=peaks_kb["long"] / peaks_kb["short"], unit="×", target=Target("<=", 1.2),
        compared=(f"peak RSS (VmHWM) of `sertool predict` (tiny fbank run, CPU, {window_s:g}-s windows) on one "
                  f"{hours(long_s)} file ({long_mb:.0f} MB, {windows['long']:,} windows) vs one {hours(short_s)} "
                  f"file ({short_mb:.0f} MB, {windows['short']} windows), each in its own process"),
        details={"max_rss_mb": {"long": round(long_mb, 1), "short": round(short_mb, 1)}, "windows": windows,
                 "long_within_2_gb": long_mb <= LONG_AUDIO_MAX_RSS_MB},
    )
