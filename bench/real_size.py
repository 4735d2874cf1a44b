"""The paper's systems at real size on the CPU, a couple of optimiser steps each, against the memory plan
(``make realsize``; docs/performance.md, "The paper's systems at real size"). Not part of ``make bench`` or
``make test``: it takes about an hour on 2 cores and about 16 GB of RAM.

Random weights of the real shapes (built from the configs in ``plan_bench.py``: WavLM-Large, Whisper-Large-v3,
RoBERTa-Large; nothing is downloaded), a small corpus of MSP-like clips (2.75–11 s, transcripts), the paper's
configs (``sertool/configs/paper``) with ``--max-steps 2 --eval-every-steps 2``. Each system trains in a process
of its own (``plan_child.py``: the plan of the run, then the run), one after the other, each once the machine has
the memory it needs available:

- ``wavlm-gender``: WavLM-Large fine-tuned, with gender, ``--gradient-checkpointing``;
- ``mmwhisper-fill``: MMWhisper (Whisper-Large-v3's encoder, frozen, and RoBERTa-Large) with ``--feature-cache``
  on an empty cache: the fill (time, the high-water mark at its end, size on disk), then 2 steps;
- ``mmwhisper-cached``: the same run again, from the filled cache;
- ``mmwhisper-ddp``: the same, from the filled cache, on 2 torchrun ranks (gloo, one thread each): a fine-tuned
  WavLM-Large's weights, gradients and AdamW state take 5.2 GB a rank before any activation (6.5 GB with DDP's
  gradient buckets), so two of them and rank 0's ``last.pt`` do not fit 15 GB even with small micro-batches;
  MMWhisper's trainable part is 13 M parameters.

Each system's figures: wall time (the run, and the process), the resident high-water mark (``VmHWM``; under DDP
the sum and the largest over the ranks), the plan's estimate of the same run and their ratio, the steps done, the
load average before and after, and the high-water mark at each report of the run (``plan_child.PhaseClock``),
which says where the peak fell. Written to ``OUT/<system>.json`` as each ends (a re-run skips the systems already
measured, ``--force`` measures them again) and gathered in ``OUT/realsize.json``, with a table printed.

Usage: ``python bench/real_size.py --out DIR [--only wavlm-gender,mmwhisper-ddp] [--force]``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(1, str(BENCH_DIR.parent))  # after bench/ itself: tests.tiny_speech and tests.tiny_text build models

from plan_bench import PAPER_CONFIGS, ROBERTA_LARGE, ROOT, WAVLM_LARGE, WHISPER_LARGE_V3, msp_like_corpus, run_child  # noqa: E402

RESULTS_NAME = "realsize.json"
DDP_RANKS = 2
GB = 1e9


@dataclass(frozen=True)
class Sizes:
    """The models' config fields over the tiny test models' (``tests/tiny_speech.py``, ``tests/tiny_text.py``), the
    corpus, and the memory a system waits for before it starts."""

    wavlm: dict[str, Any] = field(default_factory=dict)
    whisper: dict[str, Any] = field(default_factory=dict)
    roberta: dict[str, Any] = field(default_factory=dict)
    train_clips: int = 24
    valid_clips: int = 8
    needs_available_bytes: int = 0


# The real shapes. The tiny tokenizer's [PAD] is 0 (RoBERTa numbers its positions after the padding index), so the
# real model's special-token ids are left to it.
REAL = Sizes(wavlm=WAVLM_LARGE, whisper={key: value for key, value in WHISPER_LARGE_V3.items() if key != "num_mel_bins"},
             roberta={key: value for key, value in ROBERTA_LARGE.items() if not key.endswith("token_id")},
             train_clips=64, valid_clips=16, needs_available_bytes=int(16 * GB))
TINY = Sizes()


def random_models(folder: Path, sizes: Sizes) -> dict[str, Path]:
    """WavLM, Whisper (128 mel bins, as large-v3) and RoBERTa with random weights of ``sizes``' shapes, each built
    once in ``folder`` (a folder is renamed into place when written whole)."""
    from tests.tiny_speech import save_tiny_wavlm, save_tiny_whisper
    from tests.tiny_text import save_tiny_text_encoder

    builders: dict[str, Callable[[Path], Path]] = {
        "wavlm": lambda path: save_tiny_wavlm(path, **sizes.wavlm),
        "whisper": lambda path: save_tiny_whisper(path, num_mel_bins=128, **sizes.whisper),
        "roberta": lambda path: save_tiny_text_encoder(path, family="roberta", **sizes.roberta)}
    paths = {}
    for name, build in builders.items():
        path = folder / name
        if not path.is_dir():
            partial = folder / f"{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            build(partial).rename(path)
        paths[name] = path
    return paths


def available_bytes() -> int:
    """``MemAvailable`` of /proc/meminfo."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def wait_for_memory(needed_bytes: int, *, poll_s: float = 30.0) -> float:
    """Sleep until the machine has ``needed_bytes`` available (other jobs share it); the seconds waited."""
    waited_s = 0.0
    while available_bytes() < needed_bytes:
        if waited_s == 0:
            print(f"waiting for {needed_bytes / GB:.0f} GB of available memory ({available_bytes() / GB:.1f} GB now)",
                  flush=True)
        time.sleep(poll_s)
        waited_s += poll_s
    return waited_s


class Suite:
    """The systems of one suite in ``out``: their models, corpus, configs and runs."""

    def __init__(self, out: Path, sizes: Sizes) -> None:
        self.out, self.sizes = out, sizes
        # Built in a process of their own: building Whisper-Large-v3 whole (its decoder too, 6.2 GB) would leave
        # this process holding gigabytes of freed heap through every run.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            self.models = pool.submit(random_models, out / "models", sizes).result()
        corpus = out / "corpus"
        self.corpus = (corpus / "manifest.csv" if (corpus / "manifest.csv").is_file()
                       else msp_like_corpus(corpus, train=sizes.train_clips, valid=sizes.valid_clips))
        self.feature_cache = out / "feature-cache"

    def config(self, system: str, **flags: Any) -> Any:
        """The paper's ``system`` config on this suite's corpus and models, 2 steps and a validation."""
        from sertool.training.setup import resolve_new_config

        backbone = "wavlm" if system.startswith("wavlm") else "whisper"
        given = {"data__corpus": str(self.corpus), "data__num_workers": 0, "train__max_steps": 2,
                 "train__eval_every_steps": 2, "model__backbone_path": str(self.models[backbone]),
                 **({"model__text_model": str(self.models["roberta"])} if system.startswith("mm") else {}),
                 **flags}
        return resolve_new_config(str(PAPER_CONFIGS / f"{system}.yaml"), given)

    def systems(self) -> dict[str, Callable[[Path], dict[str, Any]]]:
        """Each system's run, in the order they must run (the cached ones read the fill's cache)."""
        return {"wavlm-gender": self.wavlm_gender, "mmwhisper-fill": self.mmwhisper_fill,
                "mmwhisper-cached": self.mmwhisper_cached, "mmwhisper-ddp": self.mmwhisper_ddp}

    def wavlm_gender(self, folder: Path) -> dict[str, Any]:
        """WavLM + gender, fine-tuned with gradient checkpointing."""
        return one_process(self.config("wavlm-gender", train__gradient_checkpointing=True), folder)

    def mmwhisper_fill(self, folder: Path) -> dict[str, Any]:
        """MMWhisper with an empty feature cache: the fill, then 2 steps from it; the cache's size on disk."""
        shutil.rmtree(self.feature_cache, ignore_errors=True)
        figures = one_process(self.config("mmwhisper", data__feature_cache=str(self.feature_cache)), folder)
        figures["feature_cache_bytes"] = sum(path.stat().st_size for path in self.feature_cache.rglob("*")
                                             if path.is_file())
        return figures

    def mmwhisper_cached(self, folder: Path) -> dict[str, Any]:
        """MMWhisper from the filled feature cache."""
        return one_process(self.config("mmwhisper", data__feature_cache=str(self.feature_cache)), folder)

    def mmwhisper_ddp(self, folder: Path) -> dict[str, Any]:
        """MMWhisper from the filled feature cache on ``DDP_RANKS`` torchrun ranks."""
        from sertool.training.run_folder import write_config_file

        folder.mkdir(parents=True, exist_ok=True)
        write_config_file(folder, self.config("mmwhisper", data__feature_cache=str(self.feature_cache)))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(DDP_RANKS),
                   str(BENCH_DIR / "plan_child.py"), str(folder / "config.yaml"), str(folder / "run"),
                   str(folder / "report.json")]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=BENCH_DIR,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        process_s = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"torchrun plan_child.py failed: {done.stderr[-3000:]}")
        ranks = [json.loads((folder / f"report.rank{rank}.json").read_text()) for rank in range(DDP_RANKS)]
        return {"ranks": ranks, "process_s": process_s, "wall_s": max(rank["wall_s"] for rank in ranks),
                "steps": ranks[0]["steps"], "peak_rss_bytes": sum(rank["peak_rss_bytes"] for rank in ranks),
                "peak_rss_max_bytes": max(rank["peak_rss_bytes"] for rank in ranks),
                "planned_peak_bytes": sum(rank["planned_peak_bytes"] for rank in ranks),
                "planned_peak_max_bytes": max(rank["planned_peak_bytes"] for rank in ranks)}


def one_process(config: Any, folder: Path) -> dict[str, Any]:
    """``plan_child.py``'s report of ``config``, with the process's wall time beside the run's."""
    started = time.perf_counter()
    report = run_child(config, folder)
    return {**report, "process_s": time.perf_counter() - started}


def run_suite(out: Path, sizes: Sizes, *, only: set[str] | None = None, force: bool = False,
              say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the suite's systems (``only`` those, else all) into ``out``, each measured once unless ``force``: every
    system's figures so far, as written to ``out/realsize.json``."""
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SERTOOL_CACHE", str(out / "cache"))  # the children's transcript embeddings and scans
    suite = Suite(out, sizes)
    for system, measure in suite.systems().items():
        result_path = out / f"{system}.json"
        if (only is not None and system not in only) or (result_path.is_file() and not force):
            continue
        waited_s = wait_for_memory(sizes.needs_available_bytes)
        say(f"{system}: running ({available_bytes() / GB:.1f} GB available, load average "
            f"{os.getloadavg()[0]:.1f})")
        load_before = os.getloadavg()[0]
        figures = measure(out / "runs" / system)
        figures.update(system=system, load_before=load_before, load_after=os.getloadavg()[0], waited_s=waited_s)
        result_path.write_text(json.dumps(figures, indent=2), encoding="utf-8")
        say(f"{system}: done in {figures['process_s']:.0f} s")
    results = {"machine": {"cpus": os.cpu_count(), "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf(
                   "SC_PHYS_PAGES"), "python": platform.python_version(), "torch": _version("torch"),
                           "transformers": _version("transformers")},
               "systems": {system: json.loads((out / f"{system}.json").read_text())
                           for system in suite.systems() if (out / f"{system}.json").is_file()}}
    (out / RESULTS_NAME).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def peak_phase(report: dict[str, Any]) -> str:
    """The first of a run's reports (``plan_child.PhaseClock``'s marks: the set-up's end, each step's and each
    validation's report, the run's end) by which its high-water mark was reached, in words. A validation is
    reported before the step that ends with it: its mark covers that step too."""
    phase = next(mark["phase"] for mark in report["marks"] if mark["peak_rss_bytes"] >= report["peak_rss_bytes"])
    return {"set-up": "the end of the set-up", "the rest (last.pt)": "the end (last.pt)"}.get(
        phase, f"the {phase} report")


def table(results: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    rows = ["| system | steps | run s (process s) | peak resident | plan | plan ÷ peak | load before → after | "
            "notes |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for system, figures in results["systems"].items():
        notes = []
        if figures.get("fill"):
            notes.append(f"fill {figures['fill']['seconds']:.0f} s, high-water mark at its end "
                         f"{figures['fill']['peak_rss_bytes'] / GB:.1f} GB")
        if "feature_cache_bytes" in figures:
            notes.append(f"cache {figures['feature_cache_bytes'] / GB:.2f} GB on disk")
        if "ranks" in figures:
            notes.append(f"{len(figures['ranks'])} ranks: largest {figures['peak_rss_max_bytes'] / GB:.1f} GB "
                         f"(plan {figures['planned_peak_max_bytes'] / GB:.1f} GB)")
        else:
            reached = f", the run's reached by {peak_phase(figures)}" if figures.get("marks") else ""
            notes.append(f"largest micro-batch {figures['items']} × {figures['longest_s']:.1f} s, "
                         f"plan's peak at its {figures['phase']}{reached}")
        peak, plan = figures["peak_rss_bytes"], figures["planned_peak_bytes"]
        rows.append(f"| {system} | {figures['steps']} | {figures['wall_s']:.0f} ({figures['process_s']:.0f}) | "
                    f"{peak / GB:.1f} GB | {plan / GB:.1f} GB | {plan / peak:.2f} | "
                    f"{figures['load_before']:.1f} → {figures['load_after']:.1f} | {'; '.join(notes)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Folder for the models, corpus, runs and figures.")
    parser.add_argument("--only", help="Comma-separated systems to run (default: all that have no figures yet).")
    parser.add_argument("--force", action="store_true", help="Measure again the systems that have figures.")
    parser.add_argument("--tiny", action="store_true", help="Tiny models and corpus: the suite's wiring, in a minute.")
    args = parser.parse_args(argv)
    only = None if args.only is None else set(args.only.split(","))
    results = run_suite(args.out, TINY if args.tiny else REAL, only=only, force=args.force)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
