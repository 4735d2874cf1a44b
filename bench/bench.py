"""`make bench`: sertool's performance benchmarks (see docs/performance.md).

Every figure is a ratio of two variants measured in the same run, in alternating rounds, as a median:
the machine is shared and noisy, absolute times would not compare between runs. The script builds all it
needs (synthetic audio, tiny random models, corpora) in a temporary folder, prints a table and writes a
JSON file with the machine, the versions, every figure and its raw measurements.

Usage::

    python bench/bench.py --out bench/results.json [--only training,text] [--markdown table.md]
    python bench/bench.py --from-json bench/results.json --markdown table.md   # re-render, measure nothing

A target that does not hold is a finding, not a crash: the exit status is 1 only when a benchmark could not
run at all.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # after bench/ itself: tests.tiny_speech builds the tiny models
# OpenMP threads that wait for each other by spinning turn any other load on the machine into 10-20× slower
# steps (measured on a shared 2-core machine; see docs/performance.md); sleeping waiters keep the
# comparisons stable. Set before torch loads its OpenMP runtime; children inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from measure import Figure, cpu_ceiling_share, make_utterances, msp_like_durations  # noqa: E402

# Sizes, chosen so that the whole run takes about 10 minutes on 2 idle CPU cores (benchmarks 9 and 10 take half).
CORPUS_UTTERANCES = 96  # the shared benchmark corpus: about 11 minutes of audio
WAVLM_UTTERANCES = 48  # the tiny WavLM is slower per second of audio than fbank
MM_EPOCH_UTTERANCES = 48  # benchmark 2's whole epochs (three variants, one of them back-propagates through MiniLM)
ROUNDS = 5  # interleaved rounds per timed comparison
MEMORY_SMALL_TRAIN = 100  # benchmark 5: training utterances of the small corpus (the large one has 10×)
# Benchmark 5 with loader workers: 10,000 and 100,000 training rows (MSP-Podcast's Train has 84,000), hard links
# to 200 one-second clips, the tiny WavLM with 4 workers; 3 rounds (RSS moves by a few % between runs).
MEMORY_WORKERS_SMALL_TRAIN, MEMORY_WORKERS_CLIPS, MEMORY_WORKERS, MEMORY_WORKERS_ROUNDS = 10_000, 200, 4, 3
LONG_AUDIO_S, SHORT_AUDIO_S = 3 * 3600.0, 180.0  # benchmark 8: a 3-hour file vs a 3-minute one
QUANTIZE_TINY_UTTERANCES, QUANTIZE_BASE_UTTERANCES = 48, 8  # benchmark 10: clips run per variant and round
QUANTIZE_BASE_ROUNDS = 5  # a WavLM-Base-sized pass over 8 clips takes about 10 s on 2 cores
# Benchmark 10's agreement: the Base-sized read-out is fitted on 24 clips and compared on 32 others; the
# tiny WavLM trains on 64 short clips for 4 epochs (about a minute) and is compared on 48 held-out ones.
QUANTIZE_FIT_UTTERANCES, QUANTIZE_AGREEMENT_UTTERANCES = 24, 32
QUANTIZE_TRAIN_UTTERANCES, QUANTIZE_TRAIN_EPOCHS, QUANTIZE_HELD_OUT_UTTERANCES = 64, 4, 48
FEATURE_CACHE_UTTERANCES = 32  # benchmark 11 (Whisper and WavLM): a recomputed epoch of them takes ~5 s on 2 cores


class Context:
    """What the benchmarks share: the temp folder, the benchmark corpus and the tiny WavLM."""

    def __init__(self, folder: Path) -> None:
        from tests.tiny_speech import save_tiny_wavlm

        self.folder = folder
        self.cache_dir = folder / "cache"
        self.corpus = make_utterances(folder / "corpus", msp_like_durations(CORPUS_UTTERANCES, seed=0), seed=0)
        self.wavlm_dir = save_tiny_wavlm(folder / "tiny-wavlm")


def _fbank_and_tiny_wavlm(context: Context, measure: Callable[..., Figure]) -> list[Figure]:
    """``measure`` of the fbank system on the benchmark corpus and of the tiny WavLM on its first
    ``WAVLM_UTTERANCES``."""
    from train_bench import fbank_config, wavlm_config

    return [measure(context.corpus, fbank_config(), name="fbank", rounds=ROUNDS),
            measure(context.corpus[:WAVLM_UTTERANCES], wavlm_config(context.wavlm_dir), name="tiny WavLM",
                    rounds=ROUNDS)]


def _with_cpu_ceiling_shares(figures: list[Figure], *, faster: str, reference: str) -> list[Figure]:
    """``figures``, then each one's speed-up as a share of its CPU ceiling (the padding efficiency of its
    ``faster`` variant over that of its ``reference``)."""
    return [*figures, *(cpu_ceiling_share(figure, efficiency=figure.details["padding_efficiency"][faster],
                                          reference_efficiency=figure.details["padding_efficiency"][reference],
                                          key=f"{figure.key}_cpu_ceiling_share",
                                          benchmark=f"{figure.benchmark}: share of its CPU ceiling")
                        for figure in figures)]


def _training(context: Context) -> list[Figure]:
    from train_bench import bucketing_throughput

    return _with_cpu_ceiling_shares(_fbank_and_tiny_wavlm(context, bucketing_throughput), faster="bucketed",
                                    reference="fixed")


def _padding(context: Context) -> list[Figure]:
    from train_bench import padding_at_scale

    return [padding_at_scale()]


def _text(context: Context) -> list[Figure]:
    from train_bench import text_cache

    return text_cache(context.corpus, cache_dir=context.cache_dir, rounds=ROUNDS, epoch_utterances=MM_EPOCH_UTTERANCES)


def _whisper(context: Context) -> list[Figure]:
    from infer_bench import whisper_real_length

    return [whisper_real_length(rounds=ROUNDS, best_of=3)]


def _inference(context: Context) -> list[Figure]:
    from infer_bench import inference_batching

    return _with_cpu_ceiling_shares(_fbank_and_tiny_wavlm(context, inference_batching), faster="batched",
                                    reference="one_at_a_time")


def _quantize(context: Context) -> list[Figure]:
    from infer_bench import (
        QUANTIZE_SPEEDUP_TARGET,
        quantized_agreement_readout,
        quantized_agreement_trained,
        quantized_inference,
        save_base_sized_wavlm,
    )
    from train_bench import wavlm_config

    base_config = wavlm_config(save_base_sized_wavlm(context.folder / "wavlm-base-sized"))
    fit = context.corpus[-QUANTIZE_FIT_UTTERANCES:]  # the agreement's clips come from the start: never fitted on
    return [quantized_inference(context.corpus[:QUANTIZE_TINY_UTTERANCES], wavlm_config(context.wavlm_dir),
                                name="tiny WavLM", rounds=ROUNDS, target=None),
            quantized_inference(context.corpus[:QUANTIZE_BASE_UTTERANCES], base_config,
                                name="WavLM-Base-sized", rounds=QUANTIZE_BASE_ROUNDS, target=QUANTIZE_SPEEDUP_TARGET),
            quantized_agreement_trained(context.folder / "quantize-trained", context.wavlm_dir,
                                        train_clips=QUANTIZE_TRAIN_UTTERANCES, test_clips=QUANTIZE_HELD_OUT_UTTERANCES,
                                        epochs=QUANTIZE_TRAIN_EPOCHS),
            quantized_agreement_readout(fit, context.corpus[:QUANTIZE_AGREEMENT_UTTERANCES], base_config,
                                        name="WavLM-Base-sized")]


def _onnx(context: Context) -> list[Figure]:
    from infer_bench import save_base_sized_wavlm, trained_tiny_wavlm
    from onnx_bench import onnx_agreement, onnx_inference
    from train_bench import fbank_config, wavlm_config

    base_config = wavlm_config(save_base_sized_wavlm(context.folder / "wavlm-base-sized"))
    run_dir, held_out = trained_tiny_wavlm(context.folder / "quantize-trained", context.wavlm_dir,
                                           train_clips=QUANTIZE_TRAIN_UTTERANCES, test_clips=QUANTIZE_HELD_OUT_UTTERANCES,
                                           epochs=QUANTIZE_TRAIN_EPOCHS)
    return [*onnx_inference(context.folder / "onnx-fbank", context.corpus[:QUANTIZE_TINY_UTTERANCES], fbank_config(),
                            name="fbank", rounds=ROUNDS),
            *onnx_inference(context.folder / "onnx-wavlm-base", context.corpus[:QUANTIZE_BASE_UTTERANCES], base_config,
                            name="WavLM-Base-sized", rounds=QUANTIZE_BASE_ROUNDS),
            onnx_agreement(run_dir, context.folder / "onnx-trained", held_out, name="tiny WavLM trained here")]


def _feature_cache(context: Context) -> list[Figure]:
    from train_bench import wavlm_layer_cache, whisper_feature_cache

    utterances = context.corpus[:FEATURE_CACHE_UTTERANCES]
    return [*whisper_feature_cache(utterances, folder=context.folder / "feature-cache", rounds=ROUNDS),
            *wavlm_layer_cache(utterances, model_dir=context.wavlm_dir, folder=context.folder / "layer-cache",
                               rounds=ROUNDS)]


def _memory(context: Context) -> list[Figure]:
    from process_bench import memory_scaling, memory_scaling_workers

    return [memory_scaling(context.folder / "memory", small_train=MEMORY_SMALL_TRAIN, factor=10, valid=8, duration_s=3.0,
                           repeats=2, cache_dir=context.cache_dir),
            *memory_scaling_workers(context.folder / "memory-workers", wavlm_dir=context.wavlm_dir,
                                    small_train=MEMORY_WORKERS_SMALL_TRAIN, factor=10, valid=8,
                                    clips=MEMORY_WORKERS_CLIPS, duration_s=1.0, workers=MEMORY_WORKERS,
                                    repeats=MEMORY_WORKERS_ROUNDS, cache_dir=context.cache_dir)]


def _memory_plan(context: Context) -> list[Figure]:
    from plan_bench import memory_plan_accuracy

    return memory_plan_accuracy(context.folder / "memory-plan")


def _long_audio(context: Context) -> list[Figure]:
    from process_bench import long_audio_memory

    return [long_audio_memory(context.folder / "long-audio", long_s=LONG_AUDIO_S, short_s=SHORT_AUDIO_S, window_s=10.0,
                              cache_dir=context.cache_dir)]


def _loader(context: Context) -> list[Figure]:
    from train_bench import loader_keeps_up

    return [loader_keeps_up(context.corpus, epochs=2, num_workers=1)]


def _startup(context: Context) -> list[Figure]:
    from process_bench import startup

    return startup(context.folder / "startup", rounds=3, cache_dir=context.cache_dir)


def _msp_startup(context: Context) -> list[Figure]:
    from msp_scale import MSP_FILES, msp_scale_startup
    from process_bench import tiny_checkpoint

    checkpoint = tiny_checkpoint(context.folder / "msp-startup-model", cache_dir=context.cache_dir)
    return msp_scale_startup(context.folder / "msp-startup", files=MSP_FILES, checkpoint=checkpoint,
                             cache_dir=context.cache_dir)


def _gpu(context: Context) -> list[Figure]:
    from gpu_bench import gpu_benchmarks

    return gpu_benchmarks(context.folder / "gpu", torch.device("cuda"))


BENCHMARKS: dict[str, Callable[[Context], list[Figure]]] = {
    "training": _training, "padding": _padding, "text": _text, "whisper": _whisper, "inference": _inference,
    "quantize": _quantize, "onnx": _onnx,
    "memory": _memory, "memory_plan": _memory_plan, "long_audio": _long_audio, "loader": _loader, "startup": _startup,
    "msp_startup": _msp_startup, "feature_cache": _feature_cache, "gpu": _gpu,
}


def machine_info() -> dict[str, Any]:
    """Where and with what the figures were measured."""
    import transformers

    from sertool.store.checkpoints import code_revision

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model or platform.processor(), "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
        "transformers": transformers.__version__, "sertool_revision": code_revision(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def format_value(figure: Figure) -> str:
    if figure.unit in ("s", "GB"):
        return f"{figure.value:.1f} {figure.unit}"
    return f"{figure.value:.2f}×" if figure.unit == "×" else f"{figure.value:.3f}"


def result_text(figure: Figure) -> str:
    return {True: "PASS", False: "FAIL", None: "info"}[figure.passed]


def table_rows(figures: list[Figure], errors: dict[str, str]) -> list[tuple[str, str, str, str, str]]:
    """Benchmark, measured, target, result (PASS, FAIL, info or ERROR) and what was compared: a row per
    figure, then one per benchmark that could not run (``errors``: its name → the error)."""
    rows = [(figure.benchmark, format_value(figure), str(figure.target or "—"), result_text(figure), figure.compared)
            for figure in figures]
    return rows + [(name, "—", "—", "ERROR", message) for name, message in errors.items()]


def print_table(figures: list[Figure], errors: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sertool benchmarks (ratios measured in the same run)", show_lines=True)
    for column, options in (("benchmark", {}), ("measured", {"justify": "right"}), ("target", {"justify": "right"}),
                            ("result", {}), ("what was compared", {"ratio": 1})):
        table.add_column(column, **options)
    colours = {"PASS": "green", "FAIL": "red", "info": "cyan", "ERROR": "red"}
    for benchmark, measured, target, result, compared in table_rows(figures, errors):
        table.add_row(benchmark, measured, target, f"[{colours[result]}]{result}[/]", compared)
    Console(width=max(140, Console().width)).print(table)


def markdown_table(figures: list[Figure], errors: dict[str, str]) -> str:
    """The table as Markdown, for docs/performance.md."""
    lines = ["| benchmark | measured | target | result | what was compared |", "|---|---:|---:|---|---|"]
    for *cells, compared in table_rows(figures, errors):
        lines.append(f"| {' | '.join(cells)} | {compared.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json", help="JSON results file.")
    parser.add_argument("--only", help=f"Comma-separated subset of: {', '.join(BENCHMARKS)}.")
    parser.add_argument("--markdown", type=Path, help="Also write the table as Markdown here.")
    parser.add_argument("--from-json", type=Path, help="Print (and --markdown) the table of an earlier results file "
                        "instead of measuring.")
    args = parser.parse_args(argv)
    if args.from_json:
        return render_saved(args.from_json, markdown=args.markdown)
    selected = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [name for name in selected if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    skipped = []
    if "gpu" in selected and not torch.cuda.is_available():
        print("no CUDA GPU: the GPU section is skipped")
        selected.remove("gpu")
        skipped.append("gpu")

    _quiet()
    info = machine_info()
    print(f"{info['cpus_usable']} CPUs ({info['cpu_model']}), torch {info['torch']}, {info['torch_threads']} threads, "
          f"load average {info['load_average_at_start']}")
    started = time.perf_counter()
    figures: list[Figure] = []
    errors: dict[str, str] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sertool-bench-") as folder:
        os.environ["SERTOOL_CACHE"] = str(Path(folder) / "cache")  # nothing outside the temp folder
        context = Context(Path(folder))
        for name in selected:
            print(f"[{time.perf_counter() - started:6.1f} s] {name} ...", flush=True)
            begun = time.perf_counter()
            try:
                figures.extend(BENCHMARKS[name](context))
            except Exception as error:  # one broken benchmark must not hide the others' figures
                traceback.print_exc()
                errors[name] = f"{type(error).__name__}: {error}"
            seconds[name] = round(time.perf_counter() - begun, 1)
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    total_s = round(time.perf_counter() - started, 1)

    print_table(figures, errors)
    failed = [figure.benchmark for figure in figures if figure.passed is False]
    print(f"{len(figures)} figures in {total_s} s: {sum(f.passed is True for f in figures)} pass, {len(failed)} fail, "
          f"{sum(f.passed is None for f in figures)} informational, {len(errors)} errors")
    results = {"machine": info, "total_seconds": total_s, "seconds_per_benchmark": seconds,
               "figures": [figure.to_dict() for figure in figures], "errors": errors, "skipped": skipped}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    if args.markdown:
        args.markdown.write_text(markdown_table(figures, errors), encoding="utf-8")
        print(f"wrote {args.markdown}")
    return 1 if errors else 0


def render_saved(path: Path, *, markdown: Path | None) -> int:
    """Print the table of a results file written earlier (and write it as Markdown)."""
    results = json.loads(path.read_text(encoding="utf-8"))
    figures = [Figure.from_dict(data) for data in results["figures"]]
    print_table(figures, results["errors"])
    if markdown:
        markdown.write_text(markdown_table(figures, results["errors"]), encoding="utf-8")
        print(f"wrote {markdown}")
    return 0


def _quiet() -> None:
    """Silence warnings and progress bars that say nothing about performance."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
    warnings.filterwarnings("ignore", message="At least one mel filterbank has all zero values")


if __name__ == "__main__":
    sys.exit(main())
