"""The memory plan (sertool.training.memory_plan): `sertool train --plan` and the line every run opens with.

What is checked: the fake pass saves for backward exactly what a real pass saves; the model is built without
weights and counts the real model's parameters; the largest micro-batch is the sampler's; the estimate is within
25 % of the peak a real run reaches (a process of its own); a run that does not fit is told which flags would,
each re-estimated; `--plan` writes nothing; a (mocked) GPU's memory is the limit.
"""
from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sertool.cli.commands import cli
from sertool.core.config import Config
from sertool.data.corpus import open_corpus
from sertool.models.ser_model import SERModel
from sertool.training import memory_plan
from sertool.training.loop import train
from sertool.training.memory_plan import (
    CUDA_CONTEXT_BYTES,
    _parameters_on_meta,
    _ready_to_measure,
    largest_fill_batch,
    largest_micro_batch,
    measure_pass,
    plan_memory,
    plan_training,
)
from sertool.training.reporter import Reporter
from sertool.training.run_folder import write_config_file
from sertool.training.setup_run import select_training_data, training_sampler
from tests.corpus_files import write_long_clips
from tests.tiny_speech import save_tiny_wavlm
from tests.tiny_text import save_tiny_text_encoder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def long_clips(tmp_path_factory) -> Path:
    return write_long_clips(tmp_path_factory.mktemp("long") / "msp")


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory) -> Path:
    return save_tiny_wavlm(tmp_path_factory.mktemp("wavlm") / "tiny-wavlm")


def config_for(corpus: Path, backbone: str, backbone_path: Path | None = None, **train) -> Config:
    """A one-epoch run of ``backbone`` in duration-bounded micro-batches of at least 4 clips."""
    config = Config()
    config.data.corpus = str(corpus)
    config.data.num_workers = 0
    config.model.backbone = backbone
    config.model.backbone_path = None if backbone_path is None else str(backbone_path)
    config.model.aux = ("gender",)
    config.train.sampling = "whole"
    config.train.epochs = 1
    config.train.max_batch_s = 48.0
    config.train.min_batch_items = 4
    config.train.accum_steps = 1
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


@pytest.fixture
def steady_baseline(monkeypatch):
    """This process's resident memory, as the plan reads it, held at 400 MB: plans made one after another then
    differ only in what they measure."""
    monkeypatch.setattr(memory_plan, "resident_bytes", lambda: 400 * 10**6)


def plan_of(config: Config, **options) -> memory_plan.MemoryPlan:
    """``plan_memory`` of ``config`` on the CPU, its data selected as a run selects it."""
    assert config.data.corpus is not None
    selection = select_training_data(config, open_corpus(config.data.corpus).utterances)
    return plan_memory(config, selection.train, selection.valid, sampler=training_sampler(config, selection.train),
                       device=torch.device("cpu"), **options)


def real_saved_bytes(model: SERModel, items: int, samples: int, dtype: torch.dtype | None, *,
                     frames: torch.Tensor | None = None) -> int:
    """What a real training forward saves for backward and still holds when it ends (a branch of the graph that
    leads nowhere is freed on the way), each storage once, the parameters and inputs left out; on ``frames`` (the
    cached states of ``items`` clips) where given, the waveforms then empty."""
    waveforms = 0.1 * torch.randn(items, samples if frames is None else 0)
    sample_mask = torch.ones(waveforms.shape, dtype=torch.bool)
    frame_mask = None if frames is None else torch.ones(frames.shape[:2], dtype=torch.bool)
    inputs = [*model.parameters(), waveforms, sample_mask, *([] if frames is None else [frames, frame_mask])]
    held = {tensor.untyped_storage().data_ptr() for tensor in inputs}
    packed: list[weakref.ref] = []

    def pack(tensor):
        packed.append(weakref.ref(tensor))
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        output = model(waveforms, sample_mask, frames=frames,  # noqa: F841 (the graph, and what it saved, lives)
                       frame_mask=frame_mask)
    alive = [tensor.untyped_storage() for tensor in (ref() for ref in packed) if tensor is not None]
    return sum({storage.data_ptr(): storage.nbytes() for storage in alive if storage.data_ptr() not in held}.values())


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["whole", "checkpointed"])
@pytest.mark.parametrize("backbone", ["fbank", "wavlm"])
def test_the_fake_pass_saves_what_a_real_pass_saves(backbone, checkpointing, dtype, tiny_wavlm):
    model_config = Config().model
    model_config.backbone, model_config.aux = backbone, ("gender",)
    model_config.backbone_path = str(tiny_wavlm) if backbone == "wavlm" else None
    with _parameters_on_meta():
        planned = _ready_to_measure(SERModel(model_config, gradient_checkpointing=checkpointing,
                                             pretrained_weights=False))
    real = _ready_to_measure(SERModel(model_config, gradient_checkpointing=checkpointing))
    assert all(parameter.is_meta for parameter in planned.parameters())
    items, samples = 3, 24_000
    # Exactly, but for a layer norm's saved mean and 1/std ([B, T, 1] each): float32 from the CPU kernel under bf16,
    # in the input's dtype from its meta kernel.
    assert measure_pass(planned, items, samples, dtype=dtype).saved_bytes == pytest.approx(
        real_saved_bytes(real, items, samples, dtype), rel=0 if dtype is None else 0.01)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_the_fake_pass_on_cached_states_saves_what_a_real_pass_on_them_saves(dtype, tiny_wavlm):
    """A frozen WavLM whose every layer's states are cached (--feature-cache, --layer-weighting weighted): the fake
    pass takes float16 states of the stored shape, as the loader hands them over, and the encoder does not run."""
    model_config = Config().model
    model_config.backbone, model_config.backbone_path, model_config.aux = "wavlm", str(tiny_wavlm), ("gender",)
    model_config.freeze_backbone, model_config.layer_weighting = True, "weighted"
    with _parameters_on_meta():
        planned = _ready_to_measure(SERModel(model_config, pretrained_weights=False))
    real = _ready_to_measure(SERModel(model_config))
    items, samples = 3, 24_000
    backbone = real.backbone
    frames = torch.randn(items, backbone.frame_count(samples), backbone.num_layer_states * backbone.output_dim
                         ).to(memory_plan.CACHED_FRAMES_DTYPE)
    on_frames = measure_pass(planned, items, samples, dtype=dtype, cached_frames=True)
    assert on_frames.saved_bytes == pytest.approx(real_saved_bytes(real, items, samples, dtype, frames=frames),
                                                  rel=0 if dtype is None else 0.01)
    # Reading the states rather than the audio: less held at once than running the (frozen) encoder.
    assert on_frames.peak_bytes < measure_pass(planned, items, samples, dtype=dtype).peak_bytes


def test_a_run_on_the_feature_cache_is_planned_on_the_cached_states_and_its_fill(long_clips, tmp_path,
                                                                                 steady_baseline):
    """A frozen Whisper with --feature-cache: its step and validation read cached states (less than running the
    encoder), and the fill, one clip at a time through the encoder, is a phase of its own. A fine-tuned WavLM, which
    the cache cannot serve, is planned as without it."""
    from tests.tiny_speech import save_tiny_whisper

    whisper = save_tiny_whisper(tmp_path / "whisper")
    recomputed = plan_of(config_for(long_clips, "whisper", whisper)).chosen
    cached_config = config_for(long_clips, "whisper", whisper)
    cached_config.data.feature_cache = str(tmp_path / "cache")
    cached = plan_of(cached_config).chosen
    assert cached.activation_bytes + cached.transient_bytes < recomputed.activation_bytes + recomputed.transient_bytes
    assert cached.validation_bytes < recomputed.validation_bytes
    # The fill batches every clip as validations do (Whisper's states do not depend on their batch): up to 120
    # padded seconds, so 15 of the 8-s clips at once, more than a training micro-batch of 8.
    utterances = open_corpus(long_clips).utterances
    fill = largest_fill_batch(utterances, padding_invariant=True)
    assert (fill.items, fill.longest_s) == (15, 8.0)
    assert largest_fill_batch(utterances, padding_invariant=False).items == 1
    assert cached.phase == "feature cache fill"
    with _parameters_on_meta():
        model = _ready_to_measure(SERModel(cached_config.model, pretrained_weights=False))
    fill_bytes = measure_pass(model, fill.items, fill.samples, dtype=None, training=False).peak_bytes
    step_bytes = recomputed.activation_bytes + recomputed.transient_bytes
    assert cached.peak_bytes - recomputed.peak_bytes == fill_bytes - step_bytes
    fine_tuned = config_for(long_clips, "wavlm", save_tiny_wavlm(tmp_path / "wavlm"))
    refused = copy.deepcopy(fine_tuned)
    refused.data.feature_cache = str(tmp_path / "cache")
    assert plan_of(refused).chosen == plan_of(fine_tuned).chosen


@pytest.mark.parametrize("attributes", [("arousal", "valence", "dominance"), ("valence",)])
def test_the_plans_model_counts_the_real_models_parameters(attributes, long_clips, tiny_wavlm):
    config = config_for(long_clips, "wavlm", tiny_wavlm)
    config.train.attributes = attributes
    plan = plan_of(config)
    real = SERModel(config.model, attributes=attributes)
    assert plan.parameters == sum(parameter.numel() for parameter in real.parameters())
    assert plan.trainable == sum(parameter.numel() for parameter in real.parameters() if parameter.requires_grad)
    assert plan.trainable < plan.parameters  # the CNN front end is frozen
    assert plan.gradient_bytes == 4 * plan.trainable and plan.optimizer_bytes == 2 * plan.gradient_bytes


def test_a_lora_text_encoder_is_measured_on_the_batchs_transcripts(long_clips, tmp_path):
    text_model = save_tiny_text_encoder(tmp_path / "text", family="roberta")
    frozen = config_for(long_clips, "fbank")
    frozen.model.text, frozen.model.text_model = True, str(text_model)
    adapted = config_for(long_clips, "fbank")
    adapted.model.text, adapted.model.text_model, adapted.model.lora_rank = True, str(text_model), 2
    frozen_plan, adapted_plan = plan_of(frozen), plan_of(adapted)
    assert adapted_plan.trainable > frozen_plan.trainable  # the adapters
    # The text encoder runs in the step (its activations saved) instead of reading cached embeddings.
    assert adapted_plan.chosen.activation_bytes > frozen_plan.chosen.activation_bytes


def test_the_largest_micro_batch_is_the_samplers_with_crop_and_slowed_speed(long_clips):
    config = config_for(long_clips, "fbank", max_batch_s=20.0, min_batch_items=2)
    config.data.max_duration_s = 6.0
    train_set = select_training_data(config, open_corpus(config.data.corpus).utterances).train
    sampler = training_sampler(config, train_set)
    durations = {index: min(train_set[index].duration_s, 6.0) for index in range(len(train_set))}
    padded = [len(batch) * max(durations[index] for index in batch) for batch in sampler.plan(0)]
    batch = largest_micro_batch(sampler, speed_perturbation=0.1)
    assert batch.items * batch.longest_s * 0.9 == pytest.approx(max(padded))
    assert batch.longest_s == pytest.approx(6.0 / 0.9)  # the crop, then played at speed 0.9


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["fbank", "wavlm"])
def test_the_estimate_is_within_25_percent_of_a_real_runs_peak(backbone, long_clips, tiny_wavlm, tmp_path):
    """A one-epoch run in micro-batches of 8 clips of 4 to 8 s, in a process of its own: the peak resident memory
    it adds against the plan's estimate (docs/performance.md, "13. The memory plan", for runs of many shapes)."""
    config = config_for(long_clips, backbone, tiny_wavlm if backbone == "wavlm" else None, min_batch_items=8)
    write_config_file(tmp_path, config)
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "plan_child.py"), str(tmp_path / "config.yaml"),
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=900, cwd=ROOT / "bench",
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert 0.75 <= report["estimated_bytes"] / report["measured_bytes"] <= 1.25, report


def test_a_run_that_does_not_fit_is_told_the_flags_that_would(long_clips, tiny_wavlm, steady_baseline):
    config = config_for(long_clips, "wavlm", tiny_wavlm, min_batch_items=8)
    table = {(row.precision, row.checkpointing): row.peak_bytes for row in plan_of(config, whole_table=True).table}
    chosen, checkpointed, half = table["fp32", False], table["fp32", True], table["bf16", False]
    assert checkpointed < chosen and half < chosen and table["bf16", True] < min(checkpointed, half)
    limit = max(checkpointed, half)  # both alone fit, the run as configured does not
    plan = plan_of(config, limit_bytes=limit)
    assert plan.fits is False
    named = {suggestion.flags: suggestion.estimate for suggestion in plan.suggestions}
    assert {"--gradient-checkpointing", "--amp bf16"} <= set(named)
    assert named["--gradient-checkpointing"].peak_bytes == checkpointed and named["--amp bf16"].peak_bytes == half
    assert "--amp bf16 --gradient-checkpointing" not in named  # either alone is enough
    assert all(estimate.peak_bytes <= limit for estimate in named.values())
    warning = plan.warning()
    assert warning is not None and "--gradient-checkpointing" in warning and "--amp bf16" in warning


def test_where_neither_alone_fits_both_together_and_a_smaller_batch_are_offered(long_clips, tiny_wavlm,
                                                                                steady_baseline):
    config = config_for(long_clips, "wavlm", tiny_wavlm, min_batch_items=2)
    table = {(row.precision, row.checkpointing): row.peak_bytes for row in plan_of(config, whole_table=True).table}
    limit = table["bf16", True]
    assert limit < min(table["fp32", True], table["bf16", False])
    plan = plan_of(config, limit_bytes=limit)
    flags = [suggestion.flags for suggestion in plan.suggestions]
    assert flags[0] == "--amp bf16 --gradient-checkpointing"
    smaller = [suggestion for suggestion in plan.suggestions if "--max-batch-s" in suggestion.flags]
    assert len(smaller) == 1 and smaller[0].estimate.peak_bytes <= limit
    value = float(smaller[0].flags.split()[-1])
    assert value < config.train.max_batch_s
    config.train.max_batch_s = value  # the suggested bound, planned from scratch: the same estimate
    assert plan_of(config).chosen == smaller[0].estimate


def test_a_run_that_fits_nowhere_says_so(long_clips):
    plan = plan_of(config_for(long_clips, "fbank"), limit_bytes=1)
    warning = plan.warning()
    assert plan.suggestions == () and warning is not None and "no precision, checkpointing" in warning
    assert plan_of(config_for(long_clips, "fbank"), limit_bytes=10**15).warning() is None


class Messages(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def test_a_run_opens_with_the_plan_and_warns_where_it_does_not_fit(long_clips, tmp_path, monkeypatch):
    config = config_for(long_clips, "fbank", max_steps=1)
    monkeypatch.setattr(memory_plan, "device_memory", lambda device: ("cpu", 2))
    reporter = Messages()
    train(config, tmp_path / "run", device="cpu", reporter=reporter)
    plan_lines = [line for line in reporter.lines if line.startswith("memory plan: about")]
    assert len(plan_lines) == 1 and "on cpu (fp32, no gradient checkpointing" in plan_lines[0]
    warnings = [line for line in reporter.lines if line.startswith("warning: the estimated peak")]
    assert len(warnings) == 1 and "exceeds the 0 MB cpu has" in warnings[0]


def test_the_plan_changes_nothing_a_run_draws(long_clips, tmp_path, monkeypatch):
    config = config_for(long_clips, "fbank", max_steps=2)
    config.model.utterance_stats = True  # its dropout draws from the global generator in the plan's forward too
    planned = train(config, tmp_path / "planned", device="cpu")

    def no_plan(*args, **kwargs):
        raise RuntimeError("no plan")

    monkeypatch.setattr("sertool.training.loop.plan_memory", no_plan)
    reporter = Messages()
    unplanned = train(config, tmp_path / "unplanned", device="cpu", reporter=reporter)
    assert "memory plan: not estimated (no plan)" in reporter.lines
    assert planned.history == unplanned.history
    first = torch.load(tmp_path / "planned" / "last.pt", weights_only=True)["model_state"]
    second = torch.load(tmp_path / "unplanned" / "last.pt", weights_only=True)["model_state"]
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def test_planning_leaves_the_global_generators_as_they_were(long_clips):
    config = config_for(long_clips, "fbank")
    config.model.utterance_stats = True
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    plan_of(config, whole_table=True)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_plan_on_the_command_line_writes_nothing_and_exits_0(long_clips, tmp_path):
    before = sorted(path.relative_to(long_clips) for path in long_clips.rglob("*"))
    result = CliRunner().invoke(cli, ["train", "--corpus", str(long_clips), "--backbone", "fbank", "--aux", "gender",
                                      "--sampling", "whole", "--epochs", "1", "--num-workers", "0",
                                      "--out", str(tmp_path / "run"), "--plan"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "estimated peak memory" in result.output and "this run" in result.output
    assert "largest micro-batch of an epoch" in result.output and "AdamW state" in result.output
    assert not (tmp_path / "run").exists() and list(tmp_path.iterdir()) == []
    assert sorted(path.relative_to(long_clips) for path in long_clips.rglob("*")) == before


def test_plan_refuses_resume_and_names_the_command_that_plans_the_run(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path), "--plan"])
    assert result.exit_code == 2 and f"--config {tmp_path / 'config.yaml'} --plan" in result.output


@pytest.mark.parametrize(("capability", "half"), [((9, 0), "bf16"), ((7, 5), "fp16")])
def test_a_plan_for_a_gpu_takes_the_gpus_memory(capability, half, long_clips, monkeypatch):
    total = 80 * 10**9
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device=None: SimpleNamespace(name="Test GPU", total_memory=total))
    flags = {"data__corpus": str(long_clips), "data__num_workers": 0, "model__backbone": "fbank",
             "train__sampling": "whole", "train__epochs": 1}
    plan = plan_training(None, flags, resume=None, device="cuda")
    assert plan.device == "cuda:0 (Test GPU)" and plan.limit_bytes == total
    assert plan.baseline_bytes == CUDA_CONTEXT_BYTES
    assert [(row.precision, row.checkpointing) for row in plan.table] == [
        ("fp32", False), ("fp32", True), (half, False), (half, True)]
    assert plan.chosen.precision == half  # --amp auto on that GPU
    assert plan.fits is True and plan.warning() is None
