"""`sertool train`: one readable training loop in plain PyTorch.

What happens, top to bottom (``train``):

1. Run folder: locked for the life of the run (a second ``train`` on it is refused); a new ``--out
   RUN_DIR`` (refused if it holds files, unless ``force``) or, with ``resume``, the folder of an
   interrupted run whose ``last.pt`` holds the config and the exact state.
2. Data: the corpus, the paper's data selection (``train_ox``, ``dev_ox_to_train``), cached transcript
   embeddings for MM systems, and an ``EpochBatchSampler`` (class balancing, duration buckets, DDP shard).
3. Model, AdamW with two learning rates, warm-up + cosine/plateau schedule, AMP (bf16, or fp16 with a
   GradScaler), DistributedDataParallel under torchrun.
4. The loop: ``accum_steps`` micro-batches per optimiser step, gradient clipping, a guard that skips
   steps with a non-finite loss or gradient and stops after ``max_nonfinite_steps`` in a row.
5. After each step (``_finish_step``): the end of an epoch, validation on the whole Development split
   when due (CCC per attribute over the split, never per batch), ``best.pt`` by average CCC (and
   ``best_<attribute>.pt`` with ``select_best="per-attribute"``), early stopping after ``patience``
   validations without improvement, ``last.pt`` for resuming, and a stop asked for by SIGINT or SIGTERM.
   A model blended with the floor (``--floor-blend``) is validated before its first step too, and each
   validation chooses its blend.

Only rank 0 writes files; every checkpoint is written atomically. ``last.pt`` is written only at a step
boundary and ``_finish_step`` looks only at the state, so a run killed at any point resumes to the same
weights as a run never interrupted.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from sertool.cache.frames import CachedFrames
from sertool.core.config import DEFAULT_BACKBONE_IDS, DEFAULT_DEVICE, Config, apply_value
from sertool.core.errors import SertoolError
from sertool.core.interrupts import Interrupted, StopRequests, quiet_worker
from sertool.core.progress import set_display
from sertool.data.corpus import open_corpus
from sertool.data.dataset import Batch, UtteranceDataset, collate
from sertool.data.records import ATTRIBUTES, NO_CLASS_CODES, Utterance
from sertool.data.rows import AUDIO_PROBLEMS
from sertool.data.selection import require_enough_labels, select
from sertool.guards.outputs import OutputPlan, append_text, atomic_write
from sertool.models.asr import fill_transcripts
from sertool.models.backbones.whisper import FRAME_RATE
from sertool.models.ccc import ccc_scores, collapsed_attributes
from sertool.models.frame_features import frame_cache, frame_cache_refusal
from sertool.models.losses import SERLoss
from sertool.models.ser_model import SERModel
from sertool.models.text_features import transcript_embeddings
from sertool.models.utterance_stats import StatisticsCache, choose_blend, fit_utterance_statistics
from sertool.runtime import distributed, random_state
from sertool.runtime.distributed import Distributed
from sertool.runtime.frames import fill_frame_cache
from sertool.runtime.precision import ieee_float32, resolve_amp
from sertool.runtime.runner import ModelPredictions, run_model
from sertool.store.checkpoints import (
    BEST_NAME,
    LAST_NAME,
    load_checkpoint,
    load_stored_state,
    provenance,
    save_checkpoint,
    stored_state,
)
from sertool.store.model_folder import load_model
from sertool.training.curves import CURVES_NAME, METRICS_NAME, plot_curves, read_curves
from sertool.training.init_from import load_initial_weights
from sertool.training.optim import LRSchedule, build_optimizer
from sertool.training.reporter import Reporter
from sertool.training.run_folder import (
    ARGV_NAME,
    CONFIG_NAME,
    SUMMARY_NAME,
    add_command_line,
    data_fingerprint,
    interrupted_message,
    locked_run_folder,
    prepare_run_folder,
    reconcile_config_file,
    remove_run_outputs,
    remove_stale_temporaries,
    replace_previous_run,
    truncate_metrics,
    write_config_file,
    write_environment,
)
from sertool.training.samplers import EpochBatchSampler, class_counts


class Stop(str, Enum):
    """Why a run ended (a str, so that summary.json and checkpoints hold its plain value)."""

    FINISHED = "finished"  # --epochs or --max-steps reached
    EARLY_STOPPING = "early stopping"  # --patience validations without improvement

    def __str__(self) -> str:
        return self.value


@dataclass
class TrainResult:
    """How a run ended."""

    run_dir: Path
    best: dict[str, float]  # CCC per attribute and "average" of best.pt, on the validation split
    best_step: int
    steps: int
    stopped: Stop
    skipped_steps: int = 0  # non-finite losses or gradients
    skipped_audio: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # every validation
    collapsed: list[str] = field(default_factory=list)  # attributes near-constant at best.pt's validation


def train(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    relocated: dict[str, Any] | None = None,
    force: bool = False,
    argv: Sequence[str] = (),
    device: str = DEFAULT_DEVICE,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train one system and write its run folder (see the module docstring for the steps).

    SIGINT (Ctrl-C) and SIGTERM stop the run at the next optimiser-step boundary with ``last.pt`` written
    (at once while data is read or a validation runs, where the last checkpoint already covers the state),
    raising ``Interrupted`` with a message that says how to resume.

    Args:
        config: the resolved config (ignored when resuming: the run's own config is used).
        run_dir: the run folder to create, or to continue with ``resume``.
        resume: continue the interrupted run in ``run_dir`` exactly where its ``last.pt`` stopped (from step
            0 with its ``config.yaml`` when it stopped before its first checkpoint).
        relocated: with ``resume``, new values of ``resumable`` options (``{"data.corpus": path}``): the data
            moved. The data must be the same (``data_fingerprint``).
        force: start over in an existing non-empty ``run_dir``, removing the files of the run it holds.
        argv: the command line, recorded in the run folder.
        device: "auto", "cpu" or "cuda".
        reporter: progress output (default: none).

    Raises:
        SertoolError: bad config, data or run folder, a folder another ``train`` is using, a run stopped by
            non-finite losses or gradients, a run that never produced a finite validation score, or under DDP a
            rank that waited longer than ``--ddp-timeout-s`` for the others (or lost one).
        Interrupted: a stop signal.
    """
    if not resume:
        config = config.with_absolute_paths()
        config.check()
        if config.data.corpus is None:
            raise SertoolError("no corpus given: pass --corpus ROOT")
        if not (config.train.epochs or config.train.max_steps):
            raise SertoolError("--epochs 0 and --max-steps 0: no end of training; give --epochs N or --max-steps N")
    run_dir = Path(run_dir).expanduser()  # as every path a user names, read or written (guards.outputs)
    if not resume:  # before anything else: a folder that cannot be made costs nothing
        OutputPlan(force=force).folder(run_dir, flag="--out")
    context = distributed.setup(device)
    reporter = reporter if reporter is not None and context.is_main else Reporter()
    if not context.is_main:
        set_display(None)  # under torchrun the ranks share a terminal: only rank 0 draws
    run = None
    try:
        holding = (locked_run_folder(run_dir, create=not resume, warn=reporter.message) if context.is_main
                   else contextlib.nullcontext())
        # Under DDP only the first signal counts: torchrun forwards to every rank what a scheduler may already
        # have sent them, and a second signal stopping a rank at once would cut rank 0's last.pt short.
        with StopRequests(repeats_stop_at_once=not context.enabled) as stops, holding as record_holder, \
                ieee_float32(context.device):
            previous = _PreviousRun()
            try:
                if not resume and context.is_main:
                    previous.held = prepare_run_folder(run_dir, force=force, init_from=config.train.init_from)
                if record_holder is not None:
                    record_holder()
                run = _Run(config, run_dir, resume=resume, previous=previous, argv=argv, context=context,
                           reporter=reporter, relocated=relocated, stops=stops)
                result = run.run()
            except Interrupted as stop:
                raise Interrupted(stop.signal_number, interrupted_message(
                    run_dir, stop.signal_number, saved_step=run.saved_step if run is not None else None,
                    previous_run_kept=previous.held and not previous.replaced)) from None
        distributed.barrier(context)
        return result
    except RuntimeError as error:  # e.g. a collective that another rank left waiting
        raise distributed.explained(error) from None
    finally:
        reporter.close()
        distributed.teardown()


@dataclass
class _Verdict:
    """What a validation decides: judged on rank 0 (``_Run._judge``), taken by every rank."""

    scores: dict[str, float]  # CCC per attribute and "average"; NaN with non-finite predictions
    collapsed: list[str]  # attributes whose predictions were near-constant
    blend: np.ndarray | None  # with a floor: the network's weight against it per attribute, chosen here
    nonfinite: list[str]  # ids of the utterances whose predictions were not finite
    improved: bool  # a better average than every earlier validation: best.pt, patience, plateau schedule


@dataclass
class _PreviousRun:
    """A previous run in the folder of a new one (``--force``): ``held`` there, and ``replaced`` once the new
    run's set-up has checked every input (``run_folder.replace_previous_run``)."""

    held: bool = False
    replaced: bool = False


class _Run:
    """The state of one training run; ``run`` is the loop.

    Set-up, in the order ``__init__`` takes the steps (the reporter is live from the first: each long step
    reports its progress through ``Reporter.progress``):

    1. ``_setup_folder``: a resumed run's config and ``last.pt``, or a new run folder with its config.yaml
       and argv.txt (first of all, so that a run stopped while loading can resume).
    2. ``_setup_data``: the corpus, the data selection, the bad-audio policy, the data fingerprint,
       missing transcripts from ASR (MM), the speaker list, the Whisper window check.
    3. ``_setup_model``: ``SERModel`` from ``last.pt``, ``--init-from`` or the pretrained weights; cached
       transcript embeddings; the objective; AMP.
    4. ``_setup_frames``: with ``--feature-cache``, the frozen Whisper encoder's frames of every training and
       validation utterance, computed where the cache lacks them (or one line saying why this run recomputes).
    5. ``_setup_floor``: with ``--floor-blend``, the floor's predictions of the validation split.
    6. ``_setup_batches``: the epoch sampler, the dataset and the loader.
    7. ``_setup_optimisation``: AdamW, the schedule, the GradScaler, DDP.
    8. ``_setup_state``: the progress counters, restored from ``last.pt`` or recorded in environment.json.
    """

    def __init__(self, config: Config, run_dir: Path, *, resume: bool, argv: Sequence[str], context: Distributed,
                 reporter: Reporter, previous: _PreviousRun | None = None, relocated: dict[str, Any] | None = None,
                 stops: StopRequests | None = None) -> None:
        self.context = context
        self.reporter = reporter
        self.run_dir = run_dir
        self.stops = stops = stops or StopRequests()
        previous = previous or _PreviousRun()
        with stops.at_once():  # reading data and building the model save nothing: stop at once
            checkpoint, recorded = self._setup_folder(config, resume=resume, replaces=previous.held, argv=argv,
                                                      relocated=relocated or {})
            distributed.join(context, timeout_s=self.config.train.ddp_timeout_s)  # the run's own, when resuming
            random_state.seed_process(self.config.seed, rank=context.rank)
            if context.device.type == "cpu":
                torch.use_deterministic_algorithms(True, warn_only=True)
            self._setup_data(checkpoint)
            # One statistics cache for the set-up: what the floor's fit reads stays in memory for the floor's
            # validation predictions, and is let go with it once the run is set up.
            statistics = functools.partial(StatisticsCache(self.config.data.cache_dir).get,
                                           num_workers=self.config.data.num_workers,
                                           progress=self._progress("utterance statistics"))
            self._setup_model(checkpoint, statistics)
            self._setup_frames()
            self._setup_floor(statistics)
            self._setup_batches()
            self._setup_optimisation()
            if previous.held:  # every input has been read and checked: the old run may go now
                replace_previous_run(run_dir, self.config, argv)
                previous.replaced = True
            self._setup_state(checkpoint)
            if context.is_main and checkpoint is not None and recorded is not None:  # a resume that checks out
                warning = reconcile_config_file(run_dir, recorded=recorded, config=self.config)
                if warning:
                    reporter.message(f"warning: {warning}")
                add_command_line(run_dir, argv)

    def _setup_folder(self, config: Config, *, resume: bool, replaces: bool, argv: Sequence[str],
                      relocated: dict[str, Any]) -> tuple[dict[str, Any] | None, Config | None]:
        """The run's config (``self.config``); returns ``last.pt`` and the config it recorded when resuming."""
        checkpoint = recorded = None
        if resume:
            config, checkpoint, recorded = self._resumed_config(relocated)
        self.config = config
        if self.context.is_main and checkpoint is None and not replaces:
            write_config_file(self.run_dir, config)  # first of all: a run stopped while loading can resume
            add_command_line(self.run_dir, argv)
        return checkpoint, recorded

    def _resumed_config(self, relocated: dict[str, Any]) -> tuple[Config, dict[str, Any] | None, Config]:
        """The config ``--resume`` continues with, ``last.pt`` (None: the run stopped before it), and the
        config the run recorded (before ``relocated`` pointed its data elsewhere)."""
        last = self.run_dir / LAST_NAME
        if last.is_file():
            try:
                checkpoint = load_checkpoint(last)
                recorded = Config.from_dict(checkpoint["config"], source=f"{last} (its config)")
            except (SertoolError, KeyError, TypeError) as error:
                raise SertoolError(f"cannot resume from {last}: {error}. Start the run again with `sertool train "
                                   f"--config {self.run_dir / CONFIG_NAME} --out {self.run_dir} --force`") from None
            if not isinstance(checkpoint.get("training"), dict):
                raise SertoolError(f"{last}: holds no training state (is it a copy of best.pt?); cannot resume")
        else:
            config_file = self.run_dir / CONFIG_NAME
            if not config_file.is_file():
                raise SertoolError(f"--resume {self.run_dir}: neither {LAST_NAME} nor {CONFIG_NAME} is there; is it "
                                   "a run folder of `sertool train`?")
            checkpoint, recorded = None, Config.from_yaml(config_file)
            self.reporter.message(f"{self.run_dir} has no {LAST_NAME} (the run stopped before its first "
                                  f"checkpoint): starting it again from step 0 with its {CONFIG_NAME}")
            if self.context.is_main:
                remove_run_outputs(self.run_dir, keep=(CONFIG_NAME, ARGV_NAME))
        if relocated.get("data.feature_cache") is not None and recorded.data.feature_cache is None:
            raise SertoolError(f"--feature-cache with --resume moves a run's feature cache; {self.run_dir} trained "
                               "without one (its frames are recomputed, and cached ones would round them to float16): "
                               "resume without --feature-cache, or start a new run with it")
        config = Config.from_dict(recorded.to_dict())
        for key, value in relocated.items():
            section, _, name = key.rpartition(".")
            apply_value(config, section or None, name, value, source="--resume")
        config = config.with_absolute_paths()
        if config.data.corpus is not None and not Path(config.data.corpus).exists():
            raise SertoolError(f"--resume {self.run_dir}: the run's corpus {config.data.corpus} is not there; pass "
                               "--corpus ROOT as well to point at the same data where it is now")
        return config, checkpoint, recorded

    def _setup_data(self, checkpoint: dict[str, Any] | None) -> None:
        """Corpus, selection, transcripts: ``train_set``, ``valid_set``, ``speakers`` and what they are."""
        config = self.config
        assert config.data.corpus is not None, "train() refuses a config without a corpus before any set-up"
        corpus = open_corpus(config.data.corpus, progress=self._progress("reading audio headers"),
                             cache_dir=config.data.cache_dir)
        self.load_report = corpus.report
        selection = select(corpus.utterances, train_split=config.data.train_split, valid_split=config.data.valid_split,
                           train_ox=config.data.train_ox, dev_ox_to_train=config.data.dev_ox_to_train,
                           seed=config.seed)
        require_enough_labels(selection, train_split=config.data.train_split, valid_split=config.data.valid_split)
        self.train_set, self.valid_set = selection.train, selection.valid
        self.training_ids = sorted(utt.id for utt in self.train_set)
        self.selection_summary = selection.describe()
        bad_audio = [problem for problem in corpus.report.dropped if problem.reason in AUDIO_PROBLEMS]
        if config.data.on_bad_audio == "fail" and bad_audio:
            raise SertoolError(f"--on-bad-audio fail: {len(bad_audio)} rows have missing, unreadable or empty audio; "
                               f"first: {bad_audio[0]}")
        self.data_fingerprint = data_fingerprint(self.train_set, self.valid_set)
        if checkpoint is not None:
            self._check_same_data(checkpoint["training"])
        if config.model.text:
            self.train_set, self.valid_set = self._with_transcripts(self.train_set, self.valid_set)
        self.speakers = sorted({utt.speaker for utt in self.train_set if utt.speaker is not None}) \
            if "speaker" in config.model.aux else []
        _check_window(config, self.train_set, self.valid_set)

    def _setup_model(self, checkpoint: dict[str, Any] | None,
                     statistics: Callable[[Sequence[Utterance]], np.ndarray]) -> None:
        """The model (from a resumed run's weights, or --init-from's), text embeddings, objective, AMP."""
        config, train_config = self.config, self.config.train
        initial = load_model(train_config.init_from) if checkpoint is None and train_config.init_from else None
        # Where the backbone's weights come from passes on from the model the run started from.
        self.backbone_weights = (checkpoint or initial or {}).get("backbone_weights", "published")
        self.model = SERModel(config.model, num_speakers=len(self.speakers),
                              gradient_checkpointing=train_config.gradient_checkpointing,
                              backbone_weights=self.backbone_weights)
        if checkpoint is not None:
            load_stored_state(self.model, checkpoint["model_state"], source=str(self.run_dir / LAST_NAME))
        elif initial is not None and train_config.init_from:
            for note in load_initial_weights(self.model, initial, source=train_config.init_from):
                self.reporter.message(note)
        if self.model.utterance_stats is not None and not self.model.utterance_stats.standardizer.fitted:
            # A fresh run (a resumed one, or --init-from a wide model, keeps the moments and the floor it was
            # trained with). The floor's alpha is chosen on the validation split, as `sertool baseline` does.
            distributed.fill_in_shares(statistics, [*self.train_set, *self.valid_set], self.context)
            fit_utterance_statistics(self.model, self.train_set, self.valid_set, statistics=statistics)
        self.model.to(self.context.device)
        embeddings = functools.partial(transcript_embeddings, self.model, cache_dir=config.data.cache_dir)
        distributed.fill_in_shares(embeddings, [*self.train_set, *self.valid_set], self.context)
        self.text_embeddings = embeddings([*self.train_set, *self.valid_set])
        self.loss_fn = SERLoss(config.model)
        self.amp_dtype = resolve_amp(train_config.amp, self.context.device)

    def _setup_frames(self) -> None:
        """``cached_frames``: with ``--feature-cache``, every training and validation utterance's frames from the
        cache (filled first where it lacks them), read instead of running the encoder; else None."""
        self.cached_frames: CachedFrames | None = None
        folder = self.config.data.feature_cache
        if folder is None:
            return
        refusal = frame_cache_refusal(self.config)
        if refusal is not None:
            self.reporter.message(refusal)
            return
        cache = frame_cache(self.model, folder, amp_dtype=self.amp_dtype, scan_cache_dir=self.config.data.cache_dir)
        utterances = [*self.train_set, *self.valid_set]
        self.cached_frames = fill_frame_cache(
            self.model.backbone, utterances, cache, frame_rate=FRAME_RATE, device=self.context.device,
            amp_dtype=self.amp_dtype, num_workers=self.config.data.num_workers,
            read_waveforms=self.model.reads_audio_beside_frames, context=self.context,
            progress=self._progress("feature cache"))
        self.reporter.message(f"feature cache {cache.folder}: {len(utterances) - cache.misses:,} of "
                              f"{len(utterances):,} utterances' frames were cached, the others computed")

    def _setup_floor(self, statistics: Callable[[Sequence[Utterance]], np.ndarray]) -> None:
        """``valid_floor_unit``: with ``--floor-blend``, the floor's ``[N, 3]`` unit-scale predictions of the
        validation split, which every validation blends the network's with; else None.

        They never change, so they are computed once, from each clip's statistics (``statistics``: cached by
        audio content, and in memory where ``fit_utterance_statistics`` has just read them) rather than by
        running the model: the model's own floor (``FloorBlend.floor``), in float64.
        """
        floor, wide = self.model.floor_blend, self.model.utterance_stats
        self.valid_floor_unit: np.ndarray | None = None
        if floor is None or wide is None:
            return
        rows = statistics(self.valid_set)
        with torch.no_grad():
            unit = floor.floor(wide.standardizer(torch.from_numpy(rows).to(self.context.device)))
        self.valid_floor_unit = unit.cpu().numpy()

    def _setup_batches(self) -> None:
        """The sampler decides which utterances each epoch uses and how they are grouped; the loader reads them."""
        config, train_config, context = self.config, self.config.train, self.context
        crop_s = config.data.max_duration_s or None
        self.sampler = EpochBatchSampler.from_records(
            self.train_set, max_duration_s=crop_s, sampling=train_config.sampling,
            # The cap is an undersampling option; a config (e.g. a grid's shared overrides) may hold it for all.
            max_per_class=(train_config.max_per_class or None) if train_config.sampling == "undersample" else None,
            whole_classes=NO_CLASS_CODES if train_config.ox_outside_balance else frozenset(),
            max_batch_s=None if train_config.batch_size else train_config.max_batch_s,
            # Like the cap: a bound of duration batching, which a --batch-size run does not use.
            min_batch_items=1 if train_config.batch_size else (train_config.min_batch_items or 1),
            batch_size=train_config.batch_size or None, num_buckets=train_config.num_buckets, seed=config.seed,
            rank=context.rank, world_size=context.world_size)
        self.dataset = UtteranceDataset(
            self.train_set, to_unit=self.model.label_scaling.to_unit,
            speakers={speaker: index for index, speaker in enumerate(self.speakers)},
            text_embeddings=self.text_embeddings, max_duration_s=crop_s,
            speed_perturbation=config.data.speed_perturbation, seed=config.seed, frames=self.cached_frames)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=collate, num_workers=config.data.num_workers,
            pin_memory=context.device.type == "cuda", worker_init_fn=quiet_worker,
            # A generator of its own: creating the loader's iterator must not draw from the global RNG,
            # or a resumed run would get different dropout masks than the uninterrupted one.
            generator=torch.Generator().manual_seed(config.seed))

    def _setup_optimisation(self) -> None:
        """AdamW with two learning rates, the schedule over the planned steps, the fp16 GradScaler, DDP."""
        train_config = self.config.train
        self.optimizer = build_optimizer(self.model.parameter_groups(), train_config)
        self.schedule = LRSchedule(train_config, total_steps=self._planned_steps())
        self.scaler = torch.amp.GradScaler(self.context.device.type, enabled=self.amp_dtype == torch.float16)
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.ddp_model = self._wrap_ddp()

    def _setup_state(self, checkpoint: dict[str, Any] | None) -> None:
        """The progress of the run: restored from ``last.pt``, or a new run's, recorded in environment.json."""
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0  # batches of the current epoch trained on (the sampler's workers run ahead)
        self.stopped: Stop | None = None  # set once the run is over
        self.best: dict[str, float] = {}
        self.best_step = -1
        self.best_per_attribute: dict[str, float] = {}
        self.validations_without_improvement = 0
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.skipped_audio: list[str] = []
        self.history: list[dict[str, Any]] = []
        self.saved_step: int | None = None  # the step last.pt holds
        self._saved_state: tuple | None = None  # what last.pt holds, to write each state only once
        if checkpoint is not None:
            self._restore(checkpoint["training"])
        elif self.context.is_main:
            config = self.config
            write_environment(self.run_dir, config, data_summary={
                "corpus": str(config.data.corpus), "load_report": self.load_report.summary(),
                "selection": self.selection_summary, "train_utterances": len(self.train_set),
                "valid_utterances": len(self.valid_set), "fingerprint": self.data_fingerprint},
                load_report=self.load_report)

    def _progress(self, task: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback that reports the progress of ``task`` to the reporter."""
        return lambda done, total: self.reporter.progress(task, done, total)

    # ----------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """The loop: epochs of accumulated steps, each followed by ``_finish_step``."""
        config = self.config.train
        self.reporter.start({
            "run_dir": str(self.run_dir), "train": len(self.train_set), "valid": len(self.valid_set),
            "device": str(self.context.device), "world_size": self.context.world_size,
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "parameters": sum(p.numel() for p in self.trainable), "epochs": config.epochs,
            "max_steps": config.max_steps,
            "batches_per_epoch": len(self.sampler), "accum_steps": config.accum_steps, "resumed_at_step": self.step,
            "data": self.load_report, "classes": class_counts([utt.emo_class for utt in self.train_set])})
        if self.stopped is not None:
            self.reporter.message(f"{self.run_dir}: the run had already ended ({self.stopped} after {self.step} "
                                  "steps); nothing to train")
        elif self.step > 0:
            self._finish_step()  # what the step that last.pt holds may still owe (a validation, the epoch's end)
        elif self.model.floor_blend is not None and not self.history:
            # The untrained network blended with the floor (the floor, unless noise helps it): validated, it
            # can become best.pt, so that best.pt is never worse than the floor on the validation split.
            self._validate()
        while self.stopped is None:
            self._run_epoch()
        if not self.best:
            raise SertoolError(self._no_finite_validation())
        # The validation that made best.pt (the last improving one): were any of its heads near-constant?
        collapsed: list[str] = next((record.get("collapsed", []) for record in reversed(self.history)
                                     if record["improved"]), [])
        result = TrainResult(self.run_dir, best=self.best, best_step=self.best_step, steps=self.step,
                             stopped=self.stopped, skipped_steps=self.skipped_steps, skipped_audio=self.skipped_audio,
                             history=self.history, collapsed=collapsed)
        if self.context.is_main:
            with atomic_write(self.run_dir / SUMMARY_NAME, replace=True) as handle:
                json.dump({"best": self.best, "best_step": self.best_step, "steps": self.step,
                           "stopped": _plain(self.stopped), "collapsed": collapsed, "skipped_steps": self.skipped_steps,
                           "skipped_audio": self.skipped_audio}, handle, indent=2)
            self._plot_curves()
        self.reporter.finish(result)
        return result

    def _run_epoch(self) -> None:
        """Train the rest of the current epoch (all of it, or what a resume left), one step at a time."""
        config = self.config.train
        epoch = self.epoch
        self.sampler.set_epoch(epoch)  # keeps the position a resume restored
        self.dataset.set_epoch(epoch)
        total = len(self.sampler)
        self.reporter.epoch(epoch, total, self.batches_in_epoch)
        batches = iter(self.loader)
        while self.epoch == epoch and self.stopped is None:
            position = self.batches_in_epoch
            group = list(itertools.islice(batches, min(config.accum_steps, total - position)))
            started = time.perf_counter()
            stats = self._optimizer_step(group)
            self.step += 1
            self.batches_in_epoch = position + len(group)
            # metrics.jsonl counts epochs from 1 in every record: the epoch this step trained in.
            stats.update(step=self.step, epoch=epoch + 1, batch=self.batches_in_epoch, batches=total,
                         seconds=time.perf_counter() - started)
            if self.step % config.log_every_steps == 0 or self.batches_in_epoch == total or self._budget_spent():
                self._log({"type": "train", **stats})
            self._finish_step()
            self.reporter.step(stats)

    def _finish_step(self) -> None:
        """What follows an optimiser step, in order: the end of its epoch, a validation when one is due,
        ``last.pt`` when due, and a stop asked for by a signal.

        It looks only at the state, never at what ran before it, so a resumed run calls it once for the
        step its ``last.pt`` holds: a run killed after that checkpoint but before the step's validation
        (or the epoch's end) validates first, exactly as the uninterrupted run did.
        """
        config = self.config.train
        epoch_ended = self.batches_in_epoch == len(self.sampler.plan(self.epoch))
        if epoch_ended:
            self.epoch, self.batches_in_epoch = self.epoch + 1, 0
        validated = self._validation_due()
        if validated:
            self._validate()
        if self.stopped is None and self._end_reached():
            self.stopped = Stop.FINISHED
        every = config.checkpoint_every_steps
        if epoch_ended or validated or self.stopped is not None or (every and self.step % every == 0):
            self._save_last()
        # Every rank must stop at the same step, or the others would wait forever in the next all-reduce.
        if distributed.any_rank(self.stops.requested, self.context):
            self._save_last_before_stopping()
            raise Interrupted(self.stops.signal_number or signal.SIGTERM)

    def _validation_due(self) -> bool:
        """Whether the step just taken ends with a validation that has not happened yet."""
        config = self.config.train
        if self.step == 0 or (self.history and self.history[-1]["step"] == self.step):
            return False
        if config.eval_every_steps:
            return self.step % config.eval_every_steps == 0 or self._end_reached()  # and after the last step
        # The step ended an epoch, or a step budget ended the run inside one.
        return self.batches_in_epoch == 0 or self._budget_spent()

    def _budget_spent(self) -> bool:
        """Whether ``--max-steps`` optimiser steps are done."""
        return bool(self.config.train.max_steps) and self.step >= self.config.train.max_steps

    def _end_reached(self) -> bool:
        """Whether the run is over: ``--epochs`` epochs done, or ``--max-steps`` steps (whichever first)."""
        epochs = self.config.train.epochs
        return bool(epochs) and self.epoch >= epochs or self._budget_spent()

    def _planned_steps(self) -> int:
        """Optimiser steps of the whole run, for the LR schedule: ``--max-steps``, or the steps of ``--epochs``
        epochs if those end first. Epochs differ in length (undersampling draws new subsets, buckets fill
        differently), so each planned epoch is counted."""
        config = self.config.train
        budget = config.max_steps or math.inf
        total = 0
        for epoch in itertools.count():
            if total >= budget or (config.epochs and epoch >= config.epochs):
                break
            total += math.ceil(len(self.sampler.plan(epoch)) / config.accum_steps)
        return int(min(total, budget))

    def _optimizer_step(self, group: list[Batch]) -> dict[str, Any]:
        """Accumulate gradients over ``group`` and take one optimiser step, unless some rank has no readable
        micro-batch, or a loss or the gradient is not finite: every rank then skips it alike."""
        config = self.config.train
        lr_factor = self.schedule.apply(self.optimizer, self.step)
        autocast = (torch.autocast(self.context.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        self.optimizer.zero_grad(set_to_none=True)
        usable = self._usable_batches(group)
        if usable is None:
            return {"skipped": "unreadable audio", "lr": lr_factor * self.config.train.lr_heads, "utterances": 0}
        parts_sum: dict[str, torch.Tensor] = {}  # on the device: read once, after the last micro-batch
        utterances = 0
        for index, batch in enumerate(usable):
            batch = batch.to(self.context.device)
            last = index == len(usable) - 1
            # Under DDP, gradients are averaged across ranks only on the last micro-batch of a step.
            sync = (self.ddp_model.no_sync() if isinstance(self.ddp_model, DistributedDataParallel) and not last
                    else contextlib.nullcontext())
            with sync:
                with autocast:
                    output = self.ddp_model(batch.waveforms, batch.sample_mask, frames=batch.frames,
                                            frame_mask=batch.frame_mask, text_embeddings=batch.text_embeddings,
                                            texts=batch.texts if self.model.needs_texts else None)
                loss, parts = self.loss_fn(output, batch.targets, gender_ids=batch.gender_ids,
                                           speaker_ids=batch.speaker_ids)
                # Dividing by the group size makes k micro-batches of b the same step as one batch of k·b
                # for a loss that is a mean over items (CCC itself is a batch statistic; see docs).
                self.scaler.scale(loss / len(usable)).backward()
            for name, value in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + value / len(usable)
            utterances += len(batch)
        # One host sync for the whole step (each read waits for the GPU): the mean total is finite only if
        # every micro-batch's was.
        means = dict(zip(parts_sum, torch.stack(list(parts_sum.values())).tolist(), strict=True))
        skipped = {"lr": lr_factor * self.config.train.lr_heads, "utterances": utterances}
        # Every rank must take the same decision, or the ranks' weights drift apart.
        if distributed.any_rank(not math.isfinite(means.get("total", 0.0)), self.context):
            return self._skip_nonfinite_step("loss", skipped)
        self.scaler.unscale_(self.optimizer)
        max_norm = config.grad_clip_norm if config.grad_clip_norm > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, max_norm))  # the step's second host read
        # fp16's GradScaler skips a step whose gradients overflowed (and lowers its scale). Without one (bf16,
        # fp32) nothing else keeps a NaN gradient of a finite loss out of the weights, and then out of last.pt.
        if not self.scaler.is_enabled() and distributed.any_rank(not math.isfinite(grad_norm), self.context):
            return self._skip_nonfinite_step("gradient", skipped)
        self.nonfinite_in_a_row = 0
        self.scaler.step(self.optimizer)  # skips the update by itself when fp16 gradients overflowed
        self.scaler.update()
        return {**{f"loss_{k}" if not k.startswith("ccc") else k: v for k, v in means.items()},
                "grad_norm": grad_norm, "lr": lr_factor * self.config.train.lr_heads, "utterances": utterances}

    def _skip_nonfinite_step(self, what: str, stats: dict[str, Any]) -> dict[str, Any]:
        """Drop the step's gradients and count the step (its non-finite ``what``: "loss" or "gradient");
        ``max_nonfinite_steps`` in a row stop the run, with ``last.pt`` written first. Returns ``stats``
        marked as skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.nonfinite_in_a_row += 1
        if self.nonfinite_in_a_row >= self.config.train.max_nonfinite_steps:
            self._save_last_before_stopping()
            raise SertoolError(  # the step counted from 1, as metrics.jsonl counts it
                f"stopped: {self.nonfinite_in_a_row} optimiser steps in a row had a non-finite loss or gradient "
                f"(step {self.step + 1}: its {what}). Lower --lr-heads/--lr-backbone, try --amp bf16 or off, or "
                f"check the labels; {self.run_dir / LAST_NAME} holds the state before the failure")
        return {"skipped": f"non-finite {what}", **stats}

    def _usable_batches(self, group: list[Batch]) -> list[Batch] | None:
        """The micro-batches of ``group`` that hold audio to train on, or None when some rank has none.

        Under DDP the ranks agree first (one all-reduce): a rank without a micro-batch has no backward pass,
        so it could not join the others' gradient all-reduce, and they would wait for it forever; every rank
        skips the step instead. Audio that failed to load on any rank is made known to every rank, so that
        all of them count it, or all stop on it (``--on-bad-audio fail``).
        """
        usable = [batch for batch in group if len(batch)]
        failed = [item for batch in group for item in batch.skipped]
        none_usable, any_failed = distributed.any_rank_each([not usable, bool(failed)], self.context)
        if any_failed:
            self._note_skipped([item for share in distributed.all_gather_objects(failed, self.context)
                                for item in share])
        return None if none_usable else usable

    def _note_skipped(self, items: list[str]) -> None:
        """Audio that failed to load (``"<id>: <reason>"``): stop (``--on-bad-audio fail``), or report and count it."""
        if self.config.data.on_bad_audio == "fail":
            raise SertoolError(f"--on-bad-audio fail: cannot read {items[0]}")
        self.skipped_audio.extend(items)
        for item in items:
            self.reporter.message(f"skipped unreadable audio {item}")

    # ----------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        """Validate on the whole split and keep the best checkpoints; early stopping may end the run.

        A validation score that is not finite (NaN predictions) never counts as an improvement.
        """
        try:
            # With a floor, the network alone: its blend with the floor is chosen below.
            predictions = self._predict_valid()
        except Interrupted:
            # Validation has changed nothing yet: this is the state the step left. Under DDP the other ranks stop
            # wherever the signal finds them, and a save gathers from every rank: last.pt stays as it is.
            if not self.context.enabled:
                self._save_last()
            raise
        # Rank 0 judges and every rank takes its verdict: ranks that judged apart could blend with other
        # weights, or one could stop early and leave the others waiting for it in the next step's all-reduce.
        verdict = distributed.from_main(functools.partial(self._judge, predictions), self.context)
        scores, collapsed, blend, nonfinite = verdict.scores, verdict.collapsed, verdict.blend, verdict.nonfinite
        finite, improved = not nonfinite, verdict.improved
        if blend is not None and self.model.floor_blend is not None:
            # The model predicts with this blend from now on (best.pt keeps that of its validation).
            self.model.floor_blend.blend.copy_(torch.from_numpy(blend))
        self.schedule.on_validation(improved)
        # The epoch (from 1) the validated step trained in: when that step ended an epoch, ``self.epoch``
        # already counts it.
        epoch = self.epoch if self.batches_in_epoch == 0 else self.epoch + 1
        record = {"type": "valid", "step": self.step, "epoch": epoch, "split": self.config.data.valid_split,
                  "utterances": len(self.valid_set), **{f"ccc_{k}": v for k, v in scores.items()},
                  "improved": improved, "collapsed": collapsed}
        if blend is not None:
            record["floor_blend"] = dict(zip(ATTRIBUTES, blend.tolist(), strict=True))
        if nonfinite:
            record.update(nonfinite_predictions=len(nonfinite), first_nonfinite=nonfinite[0])
            self.reporter.message(f"warning: validation after step {self.step}: {len(nonfinite)} of "
                                  f"{len(self.valid_set)} predictions are not finite (first: {nonfinite[0]}); this "
                                  "validation cannot count as an improvement")
        self.history.append(record)
        self._log(record)
        self.reporter.validation(record)
        self._keep_best(scores, improved=improved, finite=finite)

    def _keep_best(self, scores: dict[str, float], *, improved: bool, finite: bool) -> None:
        """After a validation: ``best.pt`` on an improvement (``best_<attribute>.pt`` per attribute with
        ``select_best="per-attribute"``), the count of validations without one, and early stopping."""
        if improved:
            self.best, self.best_step = scores, self.step
            self.validations_without_improvement = 0
            self._save(BEST_NAME, scores)
        else:
            self.validations_without_improvement += 1
        if self.config.train.select_best == "per-attribute" and finite:
            for name in ATTRIBUTES:
                if scores[name] > self.best_per_attribute.get(name, -math.inf):
                    self.best_per_attribute[name] = scores[name]
                    self._save(f"best_{name}.pt", scores)
        patience = self.config.train.patience
        if patience > 0 and self.validations_without_improvement >= patience:
            self.stopped = Stop.EARLY_STOPPING

    def _judge(self, predictions: ModelPredictions) -> _Verdict:
        """What the validation of ``predictions`` decides (see ``_Verdict``)."""
        nonfinite = [utt_id for utt_id, row in zip(predictions.ids, predictions.emotion_unit, strict=True)
                     if not np.isfinite(row).all()]
        # No score of NaN or infinite predictions (ccc_scores refuses them): NaN here, null in metrics.jsonl.
        scores, collapsed, blend = (self._score(predictions) if not nonfinite
                                    else (dict.fromkeys((*ATTRIBUTES, "average"), math.nan), [], None))
        # The CCC of finite predictions and labels is always finite (sertool.models.ccc).
        improved = not nonfinite and scores["average"] > self.best.get("average", -math.inf)
        return _Verdict(scores=scores, collapsed=collapsed, blend=blend, nonfinite=nonfinite, improved=improved)

    def _score(self, predictions: ModelPredictions) -> tuple[dict[str, float], list[str], np.ndarray | None]:
        """The CCC of the validation's finite ``predictions``, their collapsed attributes, and with a floor the
        blend it chose (the network's weight per attribute)."""
        labels = np.array([utt.labels() for utt in self.valid_set])
        scaling = self.model.label_scaling
        unit = predictions.emotion_unit.astype(np.float64)
        blend = None
        if self.model.floor_blend is not None and self.valid_floor_unit is not None:
            blend = choose_blend(unit, self.valid_floor_unit, labels, scaling)
            unit = blend * unit + (1 - blend) * self.valid_floor_unit
        # Scored as inference will output them (clipped ratings), so best.pt is chosen on what it predicts.
        values = scaling.ratings(unit)
        return ccc_scores(values, labels), collapsed_attributes(values, labels), blend

    def _predict_valid(self) -> ModelPredictions:
        """The network's predictions of the validation split (with a floor: without it).

        Validation draws no training random numbers (the loader's seed would), so that a run validated more
        or less often, or resumed from the checkpoint of the step before a validation, trains alike.
        """
        floor = self.model.floor_blend
        with (self.stops.at_once(), torch.random.fork_rng(devices=[]),
              floor.left_out() if floor is not None else contextlib.nullcontext()):
            return run_model(self.model, self.valid_set, device=self.context.device,
                             description=f"validating on {self.config.data.valid_split}",
                             text_embeddings=self.text_embeddings, frames=self.cached_frames,
                             num_workers=self.config.data.num_workers, amp_dtype=self.amp_dtype,
                             context=self.context, finite_only=False)

    def _no_finite_validation(self) -> str:
        """The error of a run whose every validation score was NaN or infinite, with its likely cause."""
        split = self.config.data.valid_split
        last = self.history[-1] if self.history else {}
        # The CCC of finite predictions is finite: only NaN or infinite predictions leave a run without best.pt.
        if not last:
            cause = "the run validated nothing"
        elif last.get("nonfinite_predictions") == len(self.valid_set):
            cause = ("every prediction was NaN or infinite, so the weights are: lower --lr-heads/--lr-backbone, "
                     "try --amp off, or check the training labels and audio")
        else:
            cause = (f"{last.get('nonfinite_predictions')} of {len(self.valid_set)} {split} predictions were NaN or "
                     f"infinite (first: {last.get('first_nonfinite')}): check that audio (e.g. samples far outside "
                     "[-1, 1]) or leave it out of the split")
        return (f"no validation of this run gave a finite CCC ({len(self.history)} on {len(self.valid_set)} {split} "
                f"utterances), so there is no best.pt: {cause}. {self.run_dir / LAST_NAME} holds the last state")

    # ----------------------------------------------------------------------------------------------
    def _payload(self, metrics: dict[str, float]) -> dict[str, Any]:
        """What every checkpoint holds: enough to rebuild the model and know where it came from."""
        model_config = self.config.model
        return {
            "config": self.config.to_dict(),
            "label_scaling": self.model.label_scaling.to_dict(),
            "attributes": list(ATTRIBUTES),
            "pretrained": {"backbone": model_config.backbone_path or DEFAULT_BACKBONE_IDS[model_config.backbone],
                           "text_model": model_config.text_model if model_config.text else None,
                           "speaker_embedding": model_config.speaker_embedding},
            "speakers": self.speakers,
            # What the model saw: `evaluate` and `reproduce` score it only on other utterances.
            "training_ids": self.training_ids,
            "backbone_weights": self.backbone_weights,
            # What the model learnt from and what its metrics were measured on (model cards quote it).
            "data": {"corpus": str(self.config.data.corpus), "train_split": self.config.data.train_split,
                     "train_utterances": len(self.train_set), "valid_split": self.config.data.valid_split,
                     "valid_utterances": len(self.valid_set), "selection": self.selection_summary},
            "model_state": stored_state(self.model),
            "epoch": self.epoch, "step": self.step, "metrics": metrics,
            "provenance": provenance(),
        }

    def _save(self, name: str, metrics: dict[str, float]) -> None:
        if self.context.is_main:
            save_checkpoint(self._payload(metrics), self.run_dir / name)

    def _progress_state(self) -> tuple:
        """What distinguishes one saved state from the next (writing the same state twice is wasted time)."""
        return self.step, self.epoch, self.batches_in_epoch, len(self.history), self.stopped

    def _save_last(self) -> None:
        """``last.pt``: a checkpoint plus the whole training state, at an optimiser-step boundary."""
        if self._progress_state() == self._saved_state:
            return
        # Every rank's own random states (a collective: every rank saves at the same steps).
        rng = distributed.all_gather_objects(random_state.process_state(self.context.device), self.context)
        if self.context.is_main:
            payload = self._payload(self.history[-1] if self.history else {})
            payload["training"] = {
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "schedule": self.schedule.state_dict(),
                # After the last step of an epoch the next epoch has not started: its position is 0.
                "sampler": (self.sampler.state_dict(batches_consumed=self.batches_in_epoch)
                            if self.sampler.epoch == self.epoch else None),
                "rng": {"world_size": self.context.world_size, "ranks": rng},
                "progress": {"step": self.step, "epoch": self.epoch, "stopped": _plain(self.stopped), "best": self.best,
                             "best_step": self.best_step, "best_per_attribute": self.best_per_attribute,
                             "validations_without_improvement": self.validations_without_improvement,
                             "nonfinite_in_a_row": self.nonfinite_in_a_row, "skipped_steps": self.skipped_steps,
                             "skipped_audio": self.skipped_audio, "history": self.history,
                             "data_fingerprint": self.data_fingerprint},
            }
            save_checkpoint(payload, self.run_dir / LAST_NAME)
        self._saved_state, self.saved_step = self._progress_state(), self.step

    def _save_last_before_stopping(self) -> None:
        """``last.pt``, then every rank waits until rank 0 has written it: under torchrun, a rank that exits
        sooner has torchrun stop the others, and kill rank 0 30 s later, maybe in the middle of the write."""
        self._save_last()
        distributed.barrier(self.context)

    def _restore(self, state: dict[str, Any]) -> None:
        last = self.run_dir / LAST_NAME
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.schedule.load_state_dict(state["schedule"])
            progress = state["progress"]
            for name in ("step", "epoch", "best", "best_step", "best_per_attribute", "validations_without_improvement",
                         "nonfinite_in_a_row", "skipped_steps", "skipped_audio", "history"):
                setattr(self, name, progress[name])
            self.stopped = Stop(progress["stopped"]) if progress.get("stopped") else None
            sampler_state = state["sampler"]
            if sampler_state is not None and sampler_state["epoch"] == self.epoch:
                self.sampler.load_state_dict(sampler_state)
                self.batches_in_epoch = self.sampler.batches_done
            reseeded = random_state.restore_process_state(
                state["rng"], rank=self.context.rank, world_size=self.context.world_size, device=self.context.device,
                seed=self.config.seed)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise SertoolError(f"{last}: its training state is incomplete or damaged ({type(error).__name__}: "
                               f"{str(error)[:120]}); start the run again with `sertool train --config "
                               f"{self.run_dir / CONFIG_NAME} --out {self.run_dir} --force`") from None
        if reseeded:
            self.reporter.message(f"warning: {reseeded}")
        if self.context.is_main:
            remove_stale_temporaries(self.run_dir)
            truncate_metrics(self.run_dir, step=int(self.step), validations=len(self.history))
        self._saved_state, self.saved_step = self._progress_state(), self.step

    def _check_same_data(self, state: dict[str, Any]) -> None:
        """Refuse to continue a run on other data than it trained on (a moved or changed corpus)."""
        progress = state.get("progress")
        recorded = progress.get("data_fingerprint") if isinstance(progress, dict) else None
        if recorded is not None and recorded != self.data_fingerprint:
            raise SertoolError(
                f"--corpus {self.config.data.corpus}: not the data this run trained on ({len(self.train_set)} "
                f"training and {len(self.valid_set)} validation utterances here, but their ids, durations or labels "
                f"differ from those recorded in {self.run_dir / LAST_NAME}); resume with the run's own corpus")

    def _wrap_ddp(self) -> SERModel | DistributedDataParallel:
        if not self.context.enabled:
            return self.model
        # The ranks leave the set-up apart (a share of a cache another rank could not write is computed again),
        # and DDP's first broadcast waits only --ddp-timeout-s.
        distributed.wait_for_every_rank(self.context)
        device_ids = [self.context.local_rank] if self.context.device.type == "cuda" else None
        # A parameter without a gradient in a step (a layer LayerDrop skipped, an auxiliary head a batch
        # without its labels skipped) must be found, or DDP waits for it and fails at the next step. Each rank
        # draws its own skips: the all-reduce averages such a gradient with zeros from the ranks that skipped,
        # as for any parameter a rank's loss does not depend on (tests/test_ddp.py checks the average).
        return DistributedDataParallel(self.model, device_ids=device_ids,
                                       find_unused_parameters=self.model.may_leave_parameters_unused)

    def _with_transcripts(self, *splits: list[Utterance]) -> tuple[list[Utterance], ...]:
        """MM systems need every transcript: missing ones come from ASR (``--asr``), cached on disk, in one
        pass over all ``splits`` (one ASR model, one progress bar); each split's count goes to the report."""
        for utterances in splits:
            missing = sum(utt.transcript is None for utt in utterances)
            if missing:
                self.load_report.warn(str(self.config.data.corpus), "transcripts from ASR",
                                      f"{missing} utterances had no transcript; transcribed with "
                                      f"{self.config.data.asr}")
        transcribe = functools.partial(fill_transcripts, asr=self.config.data.asr, cache_dir=self.config.data.cache_dir,
                                       device=self.context.device, progress=self._progress("transcripts from ASR"))
        everything = [utt for utterances in splits for utt in utterances]
        distributed.fill_in_shares(transcribe, everything, self.context)
        filled = iter(transcribe(everything))
        return tuple([next(filled) for _ in utterances] for utterances in splits)

    def _plot_curves(self) -> None:
        """``curves.png`` beside metrics.jsonl; without matplotlib, a message instead (the run has succeeded)."""
        try:
            curves = [read_curves(self.run_dir)]
            with atomic_write(self.run_dir / CURVES_NAME, "wb", replace=True) as handle:
                plot_curves(curves, handle, title=str(self.run_dir))
        except SertoolError as error:
            self.reporter.message(f"no {CURVES_NAME}: {error}")

    def _log(self, record: dict[str, Any]) -> None:
        if self.context.is_main:
            # Strict JSON (null, not NaN), so that any JSON reader takes the file.
            plain = {key: None if isinstance(value, float) and not math.isfinite(value) else value
                     for key, value in record.items()}
            append_text(self.run_dir / METRICS_NAME, json.dumps(plain) + "\n")



def _plain(stopped: Stop | None) -> str | None:
    """What a checkpoint holds of ``stopped``: its plain string (``weights_only`` loads no Enum)."""
    return stopped.value if stopped is not None else None


def _check_window(config: Config, train_set: Sequence[Utterance], valid_set: Sequence[Utterance]) -> None:
    """A Whisper model with a fixed window cannot take longer clips: say so before training, not mid-epoch.

    Raises:
        SertoolError: naming the split, its longest utterance and what to do.
    """
    window_s = config.model.whisper_window_s
    if not window_s:
        return
    crop_s = config.data.max_duration_s
    splits = (("training", train_set, 0 < crop_s <= window_s), ("validation", valid_set, False))
    for split, utterances, cropped in splits:
        longest = max(utterances, key=lambda utt: utt.duration_s, default=None)
        if longest is not None and not cropped and longest.duration_s > window_s:
            raise SertoolError(
                f"--whisper-window-s {window_s:g}: the {split} split holds utterances up to {longest.duration_s:.1f} s "
                f"({longest.id}); the model takes at most {window_s:g} s"
                + (f": crop training clips with --max-duration-s {window_s:g}" if split == "training" else
                   ": leave the longer utterances out of the validation split")
            )
