"""The evidence behind the small-corpus fbank recipe (docs/training.md, "Small corpora on the CPU").

Trains variants of the fbank system on small real corpora over several seeds, scores each run's best.pt
(chosen on Development, as `sertool train` does) on Development and Test1, runs `sertool baseline` on each
corpus, and appends one JSON line per run to RESULTS. Finished runs are skipped, so an interrupted sweep
continues where it stopped. Test1 is reported, never used to choose anything.

Usage::

    python bench/small_corpus.py run --corpus urdu=urdu.csv --corpus demo=demo/corpus \\
        --variant defaults --variant recipe --seeds 0,1,2 --out bench/small
    python bench/small_corpus.py table --out bench/small            # markdown, mean ± sd over seeds

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

from sertool.config import Config, apply_recipe, apply_value  # noqa: E402
from sertool.data.records import ATTRIBUTES  # noqa: E402

# name → {"section.key": value} on top of `--backbone fbank --aux gender`; the recipe fills what a variant
# leaves unset (as `sertool train` does). "budget_steps" sets --epochs to about that many optimiser steps.
_DEMO_CONFIG = {"data.max_duration_s": 4.0, "model.head_hidden_dim": 256, "model.head_dropout": 0.2,
                "train.epochs": 8, "train.sampling": "whole", "train.max_batch_s": 48.0, "train.accum_steps": 1,
                "train.lr_heads": 2e-3, "train.patience": 0}  # sertool/configs/demo/fbank-gender.yaml
_RECIPE_AT_300 = {**_DEMO_CONFIG, "train.lr_heads": 1e-3, "budget_steps": 300}
VARIANTS: dict[str, dict] = {
    "defaults": {"recipe": "paper"},  # what `sertool train --backbone fbank --aux gender` gave before recipes
    "recipe": {},                     # what it gives now: the fbank backbone's recipe (small-cpu)
    "recipe-b300": {"budget_steps": 300},
    "demo-config": _DEMO_CONFIG,
    "whole-e20": {**_DEMO_CONFIG, "train.epochs": 20},
    "whole-e20-lr1e-3": {**_DEMO_CONFIG, "train.epochs": 20, "train.lr_heads": 1e-3},  # = the recipe on URDU
    "weighted-e20": {**_DEMO_CONFIG, "train.epochs": 20, "train.sampling": "weighted"},
    "b300-crop1.5": {**_RECIPE_AT_300, "data.max_duration_s": 1.5},
    "b300-specaug": {**_RECIPE_AT_300, "model.spec_augment": True},
    # "recipe-b300-level" (the per-utterance normalisation's mean and std fed back to the encoder as two
    # input channels) ran on a prototype encoder option that was not kept: see docs/training.md.
}


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


def _scores(run_dir: Path, corpus: str, split: str) -> dict:
    from sertool.inference.inputs import corpus_split
    from sertool.inference.predictor import InferenceOptions, open_predictor
    from sertool.models.ccc import ccc_scores

    utterances, _ = corpus_split(corpus, split)
    predictions = open_predictor(run_dir, InferenceOptions(device="cpu")).predict(utterances).predictions
    labels = np.array([utt.labels() for utt in utterances])
    return {"utterances": len(utterances), "spread": predictions.values.std(axis=0).tolist(),
            **ccc_scores(predictions.values, labels)}


def _done(results: Path) -> set[tuple]:
    if not results.exists():
        return set()
    return {(r["corpus"], r["variant"], r["seed"]) for r in map(json.loads, results.read_text().splitlines())}


def run(args) -> None:
    import torch

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
            baseline = run_baseline(corpus, out / "baseline" / name, force=True)
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


def table(args) -> None:
    rows = [json.loads(line) for line in (Path(args.out) / "results.jsonl").read_text().splitlines()]
    groups: dict[tuple, list] = {}
    for row in rows:
        groups.setdefault((row["corpus"], row["variant"]), []).append(row)
    columns = [*ATTRIBUTES, "average"]
    print(f"| corpus | system | seeds | steps | {args.split} utterances | " + " | ".join(columns)
          + " | Development average |")
    print("|---|---|---|---|---|" + "---|" * (len(columns) + 1))
    for (corpus, variant), runs in sorted(groups.items()):
        def cell(split, column):
            values = [run[split][column] for run in runs]
            return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")
        steps = "–" if variant == "baseline" else f"{np.mean([run['steps'] for run in runs]):.0f}"
        print(f"| {corpus} | {variant} | {len(runs)} | {steps} | {runs[0][args.split]['utterances']} | "
              + " | ".join(cell(args.split, column) for column in columns) + f" | {cell('Development', 'average')} |")


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
    args = parser.parse_args()
    {"run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
