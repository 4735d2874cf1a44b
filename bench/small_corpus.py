"""The evidence behind the small-corpus fbank recipe (docs/training.md, "Small corpora on the CPU").

Trains variants of the fbank system on small real corpora over several seeds, scores each run's best.pt
(chosen on Development, as `sertool train` does) on Development and Test1, runs `sertool baseline` on each
corpus, and appends one JSON line per run to RESULTS. Finished runs are skipped, so an interrupted sweep
continues where it stopped. Test1 is reported, never used to choose anything.

Usage::

    python bench/small_corpus.py run --corpus urdu=urdu.csv --corpus demo=demo/corpus \\
        --variant defaults --variant recipe --seeds 0,1,2 --out bench/small
    python bench/small_corpus.py ensemble --corpus urdu=urdu.csv --variant recipe --seeds 0,1,2 --out bench/small
    python bench/small_corpus.py table --out bench/small            # markdown, mean ± sd over seeds
    python bench/small_corpus.py resample ../shared/data/urdu /tmp/urdu16k   # read 16 kHz once, not every epoch

A variant is a name in VARIANTS: config overrides applied on top of `sertool train --backbone fbank
--aux gender` (the defaults a user gets without a config). Runs use one torch thread (``--threads``):
CPU results are bitwise reproducible only at the same thread count.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see docs/training.md, "CPU training on a shared machine"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from sertool.core.config import Config, apply_recipe, apply_value  # noqa: E402
from sertool.data.records import ATTRIBUTES  # noqa: E402

# name → {"section.key": value} on top of `--backbone fbank --aux gender`; the recipe fills what a variant
# leaves unset (as `sertool train` does). "budget_steps" sets --epochs to about that many optimiser steps.
_DEMO_CONFIG = {"data.max_duration_s": 4.0, "model.head_hidden_dim": 256, "model.head_dropout": 0.2,
                "train.epochs": 8, "train.sampling": "whole", "train.max_batch_s": 48.0, "train.accum_steps": 1,
                "train.lr_heads": 2e-3, "train.patience": 0}  # sertool/configs/demo/fbank-gender.yaml
_RECIPE_AT_300 = {**_DEMO_CONFIG, "train.lr_heads": 1e-3, "budget_steps": 300}
VARIANTS: dict[str, dict] = {
    "defaults": {"recipe": "paper"},  # what `sertool train --backbone fbank --aux gender` gave before recipes
    "recipe": {},                     # the fbank backbone's recipe (small-cpu) before the floor blend joined it
    "recipe-rerun": {},               # the same, rerun on later code (300 steps on URDU: min_batch_items)
    "recipe-b300": {"budget_steps": 300},
    "demo-config": _DEMO_CONFIG,
    "whole-e20": {**_DEMO_CONFIG, "train.epochs": 20},
    "whole-e20-lr1e-3": {**_DEMO_CONFIG, "train.epochs": 20, "train.lr_heads": 1e-3},  # = the recipe on URDU
    "weighted-e20": {**_DEMO_CONFIG, "train.epochs": 20, "train.sampling": "weighted"},
    "b300-crop1.5": {**_RECIPE_AT_300, "data.max_duration_s": 1.5},
    "b300-specaug": {**_RECIPE_AT_300, "model.spec_augment": True},
    "recipe-lmstats": {"model.speaker_embedding": "log-mel-stats"},  # raw log-mel mean ⊕ std beside the pooled frames
    "recipe-d128": {"model.fbank_dim": 128},
    "recipe-speed10": {"data.speed_perturbation": 0.1},  # 3-way speed perturbation: 0.9, 1.0, 1.1
    "recipe-wide": {"model.utterance_stats": True},  # the baseline's statistics, standardised, beside the pooled frames
    "recipe-wide-drop50": {"model.utterance_stats": True, "model.utterance_stats_dropout": 0.5},
    "recipe-wide-d128": {"model.utterance_stats": True, "model.fbank_dim": 128},
    # "recipe-b300-level" (the per-utterance normalisation's mean and std fed back to the encoder as two
    # input channels) ran on a prototype encoder option that was not kept: see docs/training.md. So did
    # "recipe-floor-insample" (the floor inside the model, frozen, plus heads whose last layers start at 0:
    # step 0 predicts the floor and training learns a correction) and "recipe-floor" (the same, the heads
    # correcting the floor's cross-fitted predictions on the training clips: folds of speakers).
}
# Every variant above was measured before the floor blend joined the recipe: they keep the network alone.
VARIANTS = {name: {"model.floor_blend": False, **overrides} for name, overrides in VARIANTS.items()}
# What `sertool train --backbone fbank --aux gender` gives now: the recipe, whose network is blended with the
# floor (`sertool baseline`'s ridge inside the model) at weights chosen on Development.
VARIANTS["recipe-blend"] = {}


def _config(corpus: str, variant: str, seed: int) -> Config:
    config = Config()
    settings = {"data.corpus": corpus, "data.num_workers": 0, "model.backbone": "fbank",
                "model.aux": ("gender",), "seed": seed, **VARIANTS[variant]}
    budget = settings.pop("budget_steps", None)
    given = set()
    for key, value in settings.items():
        section, _, name = key.rpartition(".")
        apply_value(config, section or None, name, value, source=f"variant {variant}")
        given.add((section or None, name))
    apply_recipe(config, given=given)  # as `sertool train` does for the fields a variant leaves unset
    if budget:  # a budget in optimiser steps, as whole epochs (about `budget` steps)
        config.train.epochs = max(1, round(budget / _steps_per_epoch(config)))
    return config


def _steps_per_epoch(config: Config) -> float:
    from sertool.data.corpus import open_corpus
    from sertool.data.selection import select
    from sertool.training.samplers import EpochBatchSampler

    train = select(open_corpus(config.data.corpus).utterances).train
    train_config = config.train
    sampler = EpochBatchSampler.from_records(
        train, max_duration_s=config.data.max_duration_s or None, sampling=train_config.sampling,
        max_per_class=(train_config.max_per_class or None) if train_config.sampling == "undersample" else None,
        max_batch_s=None if train_config.batch_size else train_config.max_batch_s,
        batch_size=train_config.batch_size or None, num_buckets=train_config.num_buckets, seed=config.seed)
    return len(sampler.plan(0)) / train_config.accum_steps


def _predictions(run_dir: Path, corpus: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 3]`` predictions of a run's best.pt on a split, and the labels."""
    from sertool.inference.inputs import corpus_split
    from sertool.inference.predictor import InferenceOptions, open_predictor

    utterances, _ = corpus_split(corpus, split)
    predictions = open_predictor(run_dir, InferenceOptions(device="cpu")).predict(utterances).predictions
    return predictions.values, np.array([utt.labels() for utt in utterances])


def _score(values: np.ndarray, labels: np.ndarray) -> dict:
    from sertool.models.ccc import ccc_scores

    return {"utterances": len(labels), "spread": values.std(axis=0).tolist(), **ccc_scores(values, labels)}


def _scores(run_dir: Path, corpus: str, split: str) -> dict:
    return _score(*_predictions(run_dir, corpus, split))


def _done(results: Path) -> set[tuple]:
    if not results.exists():
        return set()
    return {(r["corpus"], r["variant"], r["seed"]) for r in map(json.loads, results.read_text().splitlines())}


def run(args) -> None:
    import torch

    from sertool.baseline.options import BaselineOptions
    from sertool.baseline.run import run_baseline
    from sertool.training.loop import train

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = _done(results)
    for item in args.corpus:
        name, _, corpus = item.partition("=")
        if (name, "baseline", 0) not in done:
            baseline = run_baseline(BaselineOptions(corpus=corpus, out=out / "baseline" / name, force=True,
                                                    num_workers=0))
            with open(results, "a") as handle:
                handle.write(json.dumps({"corpus": name, "variant": "baseline", "seed": 0, **{
                    split: {"utterances": s.num_utterances, **s.ccc} for split, s in baseline.scores.items()}}) + "\n")
        for variant in args.variant:
            for seed in map(int, args.seeds.split(",")):
                if (name, variant, seed) in done:
                    continue
                run_dir = out / "runs" / name / variant / f"s{seed}"
                started = time.time()
                result = train(_config(corpus, variant, seed), run_dir, force=True)
                record = {"corpus": name, "variant": variant, "seed": seed, "steps": result.steps,
                          "best_step": result.best_step, "stopped": result.stopped,
                          "seconds": round(time.time() - started, 1),
                          "Development": _scores(run_dir, corpus, "Development"),
                          "Test1": _scores(run_dir, corpus, "Test1")}
                with open(results, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
                print(f"{name} {variant} s{seed}: Dev {record['Development']['average']:.3f} "
                      f"Test1 {record['Test1']['average']:.3f} ({record['seconds']:.0f} s, {result.steps} steps)",
                      flush=True)


def ensemble(args) -> None:
    """For each corpus and variant with every seed of ``--seeds`` run: the mean of those runs' predictions
    (what ``sertool ensemble RUN...`` computes), scored on Development and Test1, appended to RESULTS as
    variant ``<variant>+ens``."""
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = out / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    seeds = [int(seed) for seed in args.seeds.split(",")]
    corpora = dict(item.partition("=")[::2] for item in args.corpus)
    for name, corpus in corpora.items():
        for variant in args.variant:
            runs = {row["seed"]: row for row in rows if row["corpus"] == name and row["variant"] == variant}
            if not set(seeds) <= set(runs) or any(row["variant"] == f"{variant}+ens" and row["corpus"] == name
                                                  for row in rows):
                continue
            record = {"corpus": name, "variant": f"{variant}+ens", "seed": args.seeds,
                      "steps": float(np.mean([runs[seed]["steps"] for seed in seeds]))}
            for split in ("Development", "Test1"):
                members = [_predictions(out / "runs" / name / variant / f"s{seed}", corpus, split) for seed in seeds]
                record[split] = _score(np.mean([values for values, _ in members], axis=0), members[0][1])
            with open(results, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(f"{name} {variant}+ens: Dev {record['Development']['average']:.3f} "
                  f"Test1 {record['Test1']['average']:.3f}", flush=True)


def resample(args) -> None:
    """A 16 kHz mono copy of a folder's audio (float WAV, the same relative paths) and its other files.

    ``load_audio`` resamples 44.1 kHz corpora (URDU) on every read; the copy holds exactly the waveforms
    it would return, so runs on it equal runs on the original, only faster.
    """
    import shutil

    import soundfile as sf

    from sertool.data.audio import SAMPLE_RATE, load_audio

    source, target = Path(args.source), Path(args.target)
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        copy = target / path.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in _AUDIO_SUFFIXES:
            sf.write(str(copy), load_audio(path).numpy(), SAMPLE_RATE, subtype="FLOAT")
        else:
            shutil.copyfile(path, copy)


_AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def table(args) -> None:
    """Markdown: per corpus and variant, mean ± sd over seeds, and the margin over the floor on that corpus."""
    rows = [json.loads(line) for line in (Path(args.out) / "results.jsonl").read_text().splitlines()]
    shown = {row["corpus"] for row in rows if not args.variant or row["variant"] in args.variant}
    groups: dict[tuple, list] = {}
    for row in rows:
        if row["corpus"] in shown and (not args.variant or row["variant"] in (*args.variant, "baseline")):
            groups.setdefault((row["corpus"], row["variant"]), []).append(row)
    columns = [*ATTRIBUTES, "average"]
    print(f"| corpus | system | seeds | steps | {args.split} utterances | " + " | ".join(columns)
          + " | Development average | average − floor | below the floor |")
    print("|---|---|---|---|---|" + "---|" * (len(columns) + 3))
    for (corpus, variant), runs in sorted(groups.items()):
        def mean(split, column, runs=runs):
            return float(np.mean([run[split][column] for run in runs]))

        def cell(split, column, runs=runs):
            values = [run[split][column] for run in runs]
            return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")
        floor = groups.get((corpus, "baseline"))
        if variant == "baseline" or floor is None:
            margin, below = "–", "–"
        else:
            margin = f"{mean(args.split, 'average') - mean(args.split, 'average', floor):+.3f}"
            below = ", ".join(column for column in ATTRIBUTES
                              if mean(args.split, column) < mean(args.split, column, floor)) or "none"
        steps = "–" if variant == "baseline" else f"{np.mean([run['steps'] for run in runs]):.0f}"
        seeds = runs[0]["seed"] if variant.endswith("+ens") else len(runs)  # an ensemble row: its members
        print(f"| {corpus} | {variant} | {seeds} | {steps} | {runs[0][args.split]['utterances']} | "
              + " | ".join(cell(args.split, column) for column in columns)
              + f" | {cell('Development', 'average')} | {margin} | {below} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run")
    runner.add_argument("--corpus", action="append", required=True, metavar="NAME=PATH")
    runner.add_argument("--variant", action="append", required=True, choices=sorted(VARIANTS))
    runner.add_argument("--seeds", default="0,1,2")
    runner.add_argument("--threads", type=int, default=1)
    runner.add_argument("--out", required=True)
    tabler = commands.add_parser("table")
    tabler.add_argument("--out", required=True)
    tabler.add_argument("--split", default="Test1")
    tabler.add_argument("--variant", action="append", help="only these (and the floor); default: all")
    ensembler = commands.add_parser("ensemble", help="score the mean of each variant's seeds")
    ensembler.add_argument("--corpus", action="append", required=True, help="NAME=PATH, as for run")
    ensembler.add_argument("--variant", action="append", required=True)
    ensembler.add_argument("--seeds", default="0,1,2")
    ensembler.add_argument("--out", required=True)
    ensembler.add_argument("--threads", type=int, default=1)
    resampler = commands.add_parser("resample")
    resampler.add_argument("source", help="a corpus folder (audio at any rate, metadata beside it)")
    resampler.add_argument("target", help="where the 16 kHz copy goes")
    args = parser.parse_args()
    {"run": run, "ensemble": ensemble, "table": table, "resample": resample}[args.command](args)


if __name__ == "__main__":
    main()
