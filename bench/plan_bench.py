"""Benchmark 12 (`memory_plan`): the memory plan's estimate against the peak a real run reaches, and the plans of
the paper's systems at real size (docs/performance.md, "13. The memory plan"; docs/training.md, "The memory plan").

``make bench`` runs ``memory_plan_accuracy``, each run by ``bench/plan_child.py`` in a process of its own, which
reports the peak resident memory the run added and the plan's estimate of it:

- one-epoch runs of a micro-batch shape or two (fbank, the tiny WavLM in fp32, in bf16 and with gradient
  checkpointing, a frozen tiny Whisper, a mid-sized WavLM: WavLM-Large's 512-channel CNN and two of its 1024-wide
  layers, without and with checkpointing): the set the plan's constants were fitted on, target within 25 %;
- runs of the paper's WavLM + gender settings (many micro-batch shapes, 2 steps and a validation) of the tiny
  models: informational (docs/performance.md says why they miss more).

By hand (not part of ``make bench``)::

    python bench/plan_bench.py paper --out DIR       # `sertool train --plan` of the paper's systems at real size,
                                                     # built from configs (no download), on the CPU and as an
                                                     # 80 GB GPU would see them: DIR/<system>-<device>.txt

The paper's systems trained at real size against their plans: ``bench/real_size.py`` (``make realsize``), which
builds on this file's model shapes and corpus.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(1, str(ROOT))  # after bench/ itself: tests.tiny_speech and tests.corpus_files build the models

import torch  # noqa: E402

from measure import Figure, Target, make_utterances, msp_like_durations, write_manifest  # noqa: E402
from sertool.core.config import Config  # noqa: E402

PAPER_CONFIGS = ROOT / "sertool" / "configs" / "paper"
TOLERANCE = 0.25  # the bound on |estimate ÷ measured − 1|
# The real models' shapes (their config.json), written as configs: the plan builds a model from one without weights.
WAVLM_LARGE: dict[str, Any] = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, conv_dim=(512,) * 7,
    conv_bias=False, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, num_buckets=320,
    max_bucket_distance=800, feat_extract_norm="layer", do_stable_layer_norm=True, layerdrop=0.1,
    mask_time_prob=0.075)
MID_WAVLM: dict[str, Any] = {**WAVLM_LARGE, "num_hidden_layers": 2}  # the real CNN and width, two layers
WHISPER_LARGE_V3: dict[str, Any] = dict(
    d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120, decoder_layers=32,
    decoder_attention_heads=20, decoder_ffn_dim=5120, num_mel_bins=128, vocab_size=51866, max_source_positions=1500,
    max_target_positions=448)
ROBERTA_LARGE: dict[str, Any] = dict(
    vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
    eos_token_id=2)
GPU = SimpleNamespace(name="80 GB GPU, compute capability 9.0", total_memory=80 * 10**9, capability=(9, 0))
PAPER_TRAIN, PAPER_VALID = 400, 100  # MSP-like utterances (2.75–11 s): the largest micro-batch is 8 × ~11 s


# ---------------------------------------------------------------------------------------------------------------
# make bench: estimate ÷ measured on tiny systems


def long_clips(folder: Path) -> Path:
    """The memory plan tests' corpus (``tests.corpus_files.write_long_clips``) in ``folder``."""
    from tests.corpus_files import write_long_clips

    return write_long_clips(folder)


def calibration_systems(folder: Path) -> dict[str, Config]:
    """One-epoch runs on ``long_clips`` (a micro-batch shape or two each): the set the plan's constants were fitted
    on, and its ±25 % target."""
    from tests.tiny_speech import save_tiny_wavlm, save_tiny_whisper

    corpus = long_clips(folder / "corpus")
    tiny_wavlm, mid_wavlm = save_tiny_wavlm(folder / "tiny-wavlm"), save_tiny_wavlm(folder / "mid-wavlm", **MID_WAVLM)
    tiny_whisper = save_tiny_whisper(folder / "tiny-whisper")

    def system(backbone: str, path: Path | None, *, min_batch_items: int = 16, **train: Any) -> Config:
        config = Config()
        config.data.corpus, config.data.num_workers = str(corpus), 0
        config.model.backbone, config.model.aux = backbone, ("gender",)
        config.model.backbone_path = None if path is None else str(path)
        config.train.sampling, config.train.epochs, config.train.accum_steps = "whole", 1, 1
        config.train.max_batch_s, config.train.min_batch_items = 48.0, min_batch_items
        for key, value in train.items():
            setattr(config.train, key, value)
        return config

    return {"fbank": system("fbank", None), "fbank, 3 clips": system("fbank", None, min_batch_items=2, max_batch_s=16.0),
            "tiny WavLM": system("wavlm", tiny_wavlm), "tiny WavLM, bf16": system("wavlm", tiny_wavlm, amp="bf16"),
            "tiny WavLM, checkpointing": system("wavlm", tiny_wavlm, gradient_checkpointing=True),
            "frozen tiny Whisper": system("whisper", tiny_whisper),
            "mid-sized WavLM": system("wavlm", mid_wavlm, min_batch_items=8),
            "mid-sized WavLM, checkpointing": system("wavlm", mid_wavlm, min_batch_items=8,
                                                     gradient_checkpointing=True)}


def paper_like_systems(folder: Path) -> dict[str, Config]:
    """Runs of the paper's WavLM + gender settings (``wavlm-gender.yaml``: undersampling, 4 micro-batches of at least 8
    clips a step, many shapes) for 2 steps and a validation, on MSP-like clips (tiny models: the mid-sized ones take
    too long for ``make bench``; their figures are in docs/performance.md)."""
    from sertool.training.setup import resolve_new_config
    from tests.tiny_speech import save_tiny_wavlm, save_tiny_whisper

    corpus = msp_like_corpus(folder / "corpus")
    tiny_wavlm = save_tiny_wavlm(folder / "tiny-wavlm")
    tiny_whisper = save_tiny_whisper(folder / "tiny-whisper")

    def system(backbone: str, path: Path | None, **train: Any) -> Config:
        flags = {"data__corpus": str(corpus), "data__num_workers": 0, "model__backbone": backbone,
                 "model__backbone_path": None if path is None else str(path), "train__max_steps": 2,
                 "train__eval_every_steps": 2, **{f"train__{key}": value for key, value in train.items()}}
        return resolve_new_config(str(PAPER_CONFIGS / "wavlm-gender.yaml"), flags)

    return {"fbank": system("fbank", None), "tiny WavLM": system("wavlm", tiny_wavlm),
            "tiny WavLM, bf16": system("wavlm", tiny_wavlm, amp="bf16"),
            "tiny WavLM, checkpointing": system("wavlm", tiny_wavlm, gradient_checkpointing=True),
            "frozen tiny Whisper": system("whisper", tiny_whisper)}


def run_child(config: Config, folder: Path) -> dict[str, Any]:
    """``bench/plan_child.py`` on ``config`` in a process of its own: its JSON report."""
    from sertool.training.run_folder import write_config_file

    folder.mkdir(parents=True, exist_ok=True)
    write_config_file(folder, config)
    done = subprocess.run([sys.executable, str(BENCH_DIR / "plan_child.py"), str(folder / "config.yaml"),
                           str(folder / "run")], capture_output=True, text=True, cwd=BENCH_DIR,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        raise RuntimeError(f"plan_child.py failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_plan_accuracy(folder: Path) -> list[Figure]:
    """Per system, the plan's estimate ÷ the measured peak (informational); the worst deviation of the one-epoch runs
    (target ≤ 0.25) and of the paper-like ones (informational)."""
    figures = []
    for group, systems in (("one epoch", calibration_systems(folder / "one-epoch")),
                           ("paper-like", paper_like_systems(folder / "paper-like"))):
        deviations = {}
        for name, config in systems.items():
            report = run_child(config, folder / group.replace(" ", "-") / name.replace(" ", "-").replace(",", ""))
            ratio = report["estimated_bytes"] / report["measured_bytes"]
            deviations[name] = ratio - 1
            figures.append(Figure(
                key=f"memory_plan_{group.replace(' ', '_').replace('-', '_')}_{name.replace(' ', '_').replace(',', '')}",
                benchmark=f"13. memory plan, {group}: {name}", value=round(ratio, 3), unit="×", target=None,
                compared=(f"the plan's estimate ({report['estimated_bytes'] / 1e6:,.0f} MB) ÷ the peak resident memory "
                          f"the run added ({report['measured_bytes'] / 1e6:,.0f} MB), largest micro-batch "
                          f"{report['items']} × {report['longest_s']:.1f} s, peak at its {report['phase']}"),
                details=report))
        worst = max(deviations, key=lambda name: abs(deviations[name]))
        figures.append(Figure(
            key=f"memory_plan_worst_{group.replace(' ', '_').replace('-', '_')}",
            benchmark=f"13. memory plan, {group}: worst deviation of estimate ÷ measured from 1",
            value=round(abs(deviations[worst]), 3), unit="",
            target=Target("<=", TOLERANCE) if group == "one epoch" else None,
            compared=f"over the {len(deviations)} {group} runs above; the worst: {worst} ({deviations[worst]:+.1%})",
            details={"deviations": deviations}))
    return figures


# ---------------------------------------------------------------------------------------------------------------
# By hand: the paper's systems at real size


def real_size_models(folder: Path) -> dict[str, Path]:
    """WavLM-Large, Whisper-Large-v3 and RoBERTa-Large as folders holding their config.json alone."""
    from transformers import RobertaConfig, WavLMConfig, WhisperConfig

    models = {"wavlm-large": (WavLMConfig, WAVLM_LARGE), "whisper-large-v3": (WhisperConfig, WHISPER_LARGE_V3),
              "roberta-large": (RobertaConfig, ROBERTA_LARGE)}
    for name, (config_class, fields) in models.items():
        config_class(**fields).save_pretrained(folder / name)
    return {name: folder / name for name in models}


def msp_like_corpus(folder: Path, *, train: int = PAPER_TRAIN, valid: int = PAPER_VALID) -> Path:
    """A manifest of ``train`` and ``valid`` MSP-like clips (2.75–11 s, with transcripts): Train and Development."""
    utterances = [*make_utterances(folder / "audio", msp_like_durations(train, seed=0), seed=0),
                  *make_utterances(folder / "audio", msp_like_durations(valid, seed=1), seed=1,
                                   split="Development", prefix="dev")]
    return write_manifest(folder / "manifest.csv", utterances)


def reference_corpus(folder: Path) -> Path:
    """The micro-batches of the runs the issue measured: clips of 11 s, 8 to a micro-batch (16 Train clips), and
    validation batches of 10 such clips (120 padded seconds)."""
    utterances = [*make_utterances(folder / "audio", [11.0] * 16, seed=0),
                  *make_utterances(folder / "audio", [11.0] * 10, seed=1, split="Development", prefix="dev")]
    return write_manifest(folder / "manifest.csv", utterances)


@contextlib.contextmanager
def as_if_gpu(gpu: SimpleNamespace) -> Iterator[None]:
    """torch.cuda answers as a machine with ``gpu`` would (the plan reads its memory and compute capability, and
    allocates nothing on it)."""
    saved = {name: getattr(torch.cuda, name) for name in ("is_available", "device_count", "get_device_properties",
                                                          "get_device_capability")}
    torch.cuda.is_available, torch.cuda.device_count = (lambda: True), (lambda: 1)  # type: ignore[assignment]
    torch.cuda.get_device_properties = lambda device=None: gpu  # type: ignore[assignment]
    torch.cuda.get_device_capability = lambda device=None: gpu.capability  # type: ignore[assignment]
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.cuda, name, function)


def paper_plans(folder: Path) -> dict[str, str]:
    """``sertool train --plan`` of WavLM + gender (WavLM-Large fine-tuned) and MMWhisper (Whisper-Large-v3's encoder
    and RoBERTa-Large, frozen), on this CPU and on an 80 GB GPU: what each prints."""
    from sertool.cli.commands import cli

    models, corpus = real_size_models(folder / "models"), msp_like_corpus(folder / "corpus")
    wavlm = ["--backbone-path", models["wavlm-large"]]
    runs = {f"{system}-{device}": (system, corpus, paths, device)
            for system, paths in (("wavlm-gender", wavlm), ("mmwhisper", ["--backbone-path", models["whisper-large-v3"],
                                                                          "--text-model", models["roberta-large"]]))
            for device in ("cpu", "gpu")}
    # The runs: WavLM + gender on the CPU, micro-batches of 8 clips of 11 s.
    runs["wavlm-gender-8x11s-cpu"] = ("wavlm-gender", reference_corpus(folder / "reference-corpus"), wavlm, "cpu")
    outputs = {}
    for name, (system, corpus_path, paths, device) in runs.items():
        arguments = ["train", "--config", PAPER_CONFIGS / f"{system}.yaml", "--corpus", corpus_path, *paths,
                     "--num-workers", "0", "--device", "cuda" if device == "gpu" else "cpu", "--plan"]
        printed = io.StringIO()
        with as_if_gpu(GPU) if device == "gpu" else contextlib.nullcontext(), contextlib.redirect_stdout(printed), \
                contextlib.redirect_stderr(printed), contextlib.suppress(SystemExit):
            cli.main([str(argument) for argument in arguments], prog_name="sertool", standalone_mode=False)
        outputs[name] = printed.getvalue()
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("accuracy", "paper"))
    parser.add_argument("--out", type=Path, required=True, help="Folder for the models, corpora and outputs.")
    args = parser.parse_args(argv)
    os.environ.setdefault("SERTOOL_CACHE", str(args.out / "cache"))
    if args.what == "accuracy":
        for figure in memory_plan_accuracy(args.out):
            print(f"{figure.benchmark}: {figure.value} ({figure.compared})")
    else:
        for name, text in paper_plans(args.out).items():
            (args.out / f"{name}.txt").write_text(text, encoding="utf-8")
            print(f"== {name}\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
