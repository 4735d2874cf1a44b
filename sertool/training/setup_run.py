"""The set-up of a training run: ``RunSetup``, which ``loop._Run`` trains.

Each ``_setup_*`` step of ``RunSetup.__init__`` reads what the steps before it made; none trains. (Not to be
confused with ``training.setup``, which resolves a run's config from the command line and a config file.)
"""
from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from sertool.cache.frames import CachedFrames
from sertool.core.config import Config, TrainConfig, apply_value
from sertool.core.errors import SertoolError
from sertool.core.interrupts import StopRequests, quiet_worker
from sertool.data.corpus import open_corpus
from sertool.data.dataset import UtteranceDataset, collate
from sertool.data.packed import PackedTexts, PackedUtterances
from sertool.data.records import NO_CLASS_CODES, Utterance
from sertool.data.rows import AUDIO_PROBLEMS
from sertool.data.selection import Selection, require_enough_labels, select, training_data_note, unknown_training_data
from sertool.models.asr import fill_transcripts
from sertool.models.frame_features import frame_cache, frame_cache_refusal
from sertool.models.ser_model import SERModel
from sertool.models.text_features import transcript_embeddings
from sertool.models.utterance_stats import StatisticsCache, fit_utterance_statistics
from sertool.runtime import distributed, random_state
from sertool.runtime.distributed import Distributed
from sertool.runtime.frames import fill_frame_cache
from sertool.runtime.precision import resolve_amp
from sertool.store.checkpoints import LAST_NAME, load_checkpoint, load_stored_state
from sertool.store.model_folder import load_model
from sertool.training.checkpointing import check_same_data, model_description, restore_training
from sertool.training.init_from import inherited_training_data, load_initial_weights
from sertool.training.optim import LRSchedule, build_optimizer
from sertool.training.reporter import Reporter
from sertool.training.run_folder import (
    ARGV_NAME,
    CONFIG_NAME,
    add_command_line,
    data_fingerprint,
    reconcile_config_file,
    remove_run_outputs,
    remove_stale_temporaries,
    replace_previous_run,
    truncate_metrics,
    write_config_file,
    write_environment,
)
from sertool.training.samplers import EpochBatchSampler
from sertool.training.state import TrainState
from sertool.training.validation import FloorBlendHook, ValidationHook

Statistics = Callable[[Sequence[Utterance]], np.ndarray]  # utterances → [N, NUM_FEATURES] statistics, cached


@dataclass
class PreviousRun:
    """A previous run in the folder of a new one (``--force``): ``held`` there, and ``replaced`` once the new
    run's set-up has checked every input (``run_folder.replace_previous_run``)."""

    held: bool = False
    replaced: bool = False


class RunSetup:
    """A training run once set up: its config, data, model, batches, optimiser and ``TrainState``.

    Set-up, in the order ``__init__`` takes the steps (the reporter is live from the first: each long step
    reports its progress through ``Reporter.progress``):

    1. ``_setup_folder``: a resumed run's config and ``last.pt``, or a new run folder with its config.yaml
       and argv.txt (first of all, so that a run stopped while loading can resume).
    2. ``_setup_data``: the corpus, the data selection, the bad-audio policy, the data fingerprint,
       missing transcripts from ASR (MM), the speaker list, the Whisper window check.
    3. ``_setup_model``: ``SERModel`` from ``last.pt``, ``--init-from`` or the pretrained weights; cached
       transcript embeddings; AMP; what every checkpoint says of the model.
    4. ``_setup_frames``: with ``--feature-cache``, the frozen encoder's hidden states of every training and
       validation utterance, computed where the cache lacks them (or one line saying why this run recomputes).
    5. ``_setup_validation_hook``: with ``--floor-blend``, the floor's predictions of the validation split.
    6. ``_setup_batches``: the epoch sampler, the dataset and the loader.
    7. ``_setup_optimisation``: AdamW, the schedule, the GradScaler, DDP.
    8. ``_setup_state``: the ``TrainState``, restored from ``last.pt`` or recorded in environment.json.
    """

    def __init__(self, config: Config, run_dir: Path, *, resume: bool, argv: Sequence[str], context: Distributed,
                 reporter: Reporter, previous: PreviousRun | None = None, relocated: dict[str, Any] | None = None,
                 stops: StopRequests | None = None, read_corpus: Callable[..., Any] = open_corpus,
                 dataset_type: type[UtteranceDataset] = UtteranceDataset) -> None:
        """Set the run up (the steps above); ``read_corpus`` and ``dataset_type`` read the corpus and the
        training clips (``open_corpus`` and ``UtteranceDataset``: ``loop._Run`` says why it passes them)."""
        self.context = context
        self.reporter = reporter
        self.run_dir = run_dir
        self.stops = stops = stops or StopRequests()
        previous = previous or PreviousRun()
        with stops.at_once():  # reading data and building the model save nothing: stop at once
            checkpoint, recorded = self._setup_folder(config, resume=resume, replaces=previous.held, argv=argv,
                                                      relocated=relocated or {})
            distributed.join(context, timeout_s=self.config.train.ddp_timeout_s)  # the run's own, when resuming
            random_state.seed_process(self.config.seed, rank=context.rank)
            if context.device.type == "cpu":
                torch.use_deterministic_algorithms(True, warn_only=True)
            self._setup_data(checkpoint, read_corpus)
            # One statistics cache for the set-up: what the floor's fit reads stays in memory for the floor's
            # validation predictions, and is let go with it once the run is set up.
            statistics = functools.partial(StatisticsCache(self.config.data.cache_dir).get,
                                           num_workers=self.config.data.num_workers,
                                           progress=self._progress("utterance statistics"))
            self._setup_model(checkpoint, statistics)
            self._setup_frames()
            self._setup_validation_hook(statistics)
            self._setup_batches(dataset_type)
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
            config, checkpoint, recorded = _resumed_config(self.run_dir, relocated, reporter=self.reporter,
                                                           is_main=self.context.is_main)
        self.config = config
        if self.context.is_main and checkpoint is None and not replaces:
            write_config_file(self.run_dir, config)  # first of all: a run stopped while loading can resume
            add_command_line(self.run_dir, argv)
        return checkpoint, recorded

    def _setup_data(self, checkpoint: dict[str, Any] | None, read_corpus: Callable[..., Any]) -> None:
        """Corpus, selection, transcripts: ``train_set``, ``valid_set``, ``speakers`` and what they are."""
        config = self.config
        assert config.data.corpus is not None, "train() refuses a config without a corpus before any set-up"
        corpus = read_corpus(config.data.corpus, progress=self._progress("reading audio headers"),
                             cache_dir=config.data.cache_dir)
        self.load_report = corpus.report
        selection = select_training_data(config, corpus.utterances)
        self.train_set: Sequence[Utterance] = selection.train
        self.valid_set: Sequence[Utterance] = selection.valid
        self.training_ids: Sequence[str] = sorted(utt.id for utt in self.train_set)
        self.selection_summary = selection.describe()
        bad_audio = [problem for problem in corpus.report.dropped if problem.reason in AUDIO_PROBLEMS]
        if config.data.on_bad_audio == "fail" and bad_audio:
            raise SertoolError(f"--on-bad-audio fail: {len(bad_audio)} rows have missing, unreadable or empty audio; "
                               f"first: {bad_audio[0]}")
        self.data_fingerprint = data_fingerprint(self.train_set, self.valid_set)
        if checkpoint is not None:
            check_same_data(checkpoint["training"], self.data_fingerprint, config=config,
                            train_utterances=len(self.train_set), valid_utterances=len(self.valid_set),
                            run_dir=self.run_dir)
        if config.model.text:
            self.train_set, self.valid_set = self._with_transcripts(self.train_set, self.valid_set)
        self.speakers = training_speakers(config, self.train_set)
        check_window(config, self.train_set, self.valid_set)

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

    def _setup_model(self, checkpoint: dict[str, Any] | None, statistics: Statistics) -> None:
        """The model (from a resumed run's weights, or --init-from's), text embeddings, AMP, and what every
        checkpoint says of the model."""
        config, train_config = self.config, self.config.train
        initial = load_model(train_config.init_from) if checkpoint is None and train_config.init_from else None
        # Where the backbone's weights come from passes on from the model the run started from.
        self.backbone_weights = (checkpoint or initial or {}).get("backbone_weights", "published")
        self.model = SERModel(config.model, num_speakers=len(self.speakers),
                              gradient_checkpointing=train_config.gradient_checkpointing,
                              backbone_weights=self.backbone_weights, attributes=train_config.attribute_names())
        if checkpoint is not None:
            load_stored_state(self.model, checkpoint["model_state"], source=str(self.run_dir / LAST_NAME))
        elif initial is not None and train_config.init_from:
            for note in load_initial_weights(self.model, initial, source=train_config.init_from):
                self.reporter.message(note)
        # What the initial model trained on counts as the run's (a resumed run's last.pt records it already).
        inherited: frozenset[str] = frozenset()
        unknown: tuple[str, ...] = ()
        if checkpoint is not None:
            inherited, unknown = frozenset(checkpoint.get("training_ids") or ()), unknown_training_data(checkpoint)
        elif initial is not None and train_config.init_from:
            inherited, unknown = inherited_training_data(initial, source=train_config.init_from)
            unknown_note = training_data_note(str(self.run_dir), unknown)
            if unknown_note is not None:
                self.reporter.message(unknown_note)
        # Packed: a run holds them to its end, and its loader workers are forks of it (sertool.data.packed).
        self.training_ids = PackedTexts(sorted(inherited.union(self.training_ids)))
        if self.model.utterance_stats is not None and not self.model.utterance_stats.standardizer.fitted:
            # A fresh run (a resumed one, or --init-from a wide model, keeps the moments and the floor it was
            # trained with). The floor's alpha is chosen on the validation split, as `sertool baseline` does.
            distributed.fill_in_shares(statistics, [*self.train_set, *self.valid_set], self.context)
            fit_utterance_statistics(self.model, self.train_set, self.valid_set, statistics=statistics)
        self.model.to(self.context.device)
        embeddings = functools.partial(transcript_embeddings, self.model, cache_dir=config.data.cache_dir)
        distributed.fill_in_shares(embeddings, [*self.train_set, *self.valid_set], self.context)
        self.text_embeddings = embeddings([*self.train_set, *self.valid_set])
        self.amp_dtype = resolve_amp(train_config.amp, self.context.device)
        self.description = model_description(
            config, self.model, speakers=self.speakers, training_ids=self.training_ids,
            backbone_weights=self.backbone_weights, train_set=self.train_set, valid_set=self.valid_set,
            selection_summary=self.selection_summary, unknown_training_data=unknown)

    def _setup_frames(self) -> None:
        """``cached_frames``: with ``--feature-cache``, every training and validation utterance's frames from the
        cache (filled first where it lacks them), read instead of running the encoder; else None."""
        self.cached_frames: CachedFrames | None = None
        folder = self.config.data.feature_cache
        if folder is None:
            return
        refusal = frame_cache_refusal(self.config, self.model)
        if refusal is not None:
            self.reporter.message(refusal)
            return
        cache = frame_cache(self.model, folder, amp_dtype=self.amp_dtype, scan_cache_dir=self.config.data.cache_dir)
        utterances = [*self.train_set, *self.valid_set]
        self.cached_frames = fill_frame_cache(
            self.model.backbone, utterances, cache, device=self.context.device, amp_dtype=self.amp_dtype,
            num_workers=self.config.data.num_workers, read_waveforms=self.model.reads_audio_beside_frames,
            crop_s=self.config.data.max_duration_s or None, context=self.context,
            progress=self._progress("feature cache"))
        states = self.model.backbone.num_layer_states
        self.reporter.message(f"feature cache {cache.folder}: {len(utterances) - cache.misses:,} of "
                              f"{len(utterances):,} utterances' frames were cached, the others computed ("
                              f"{states} hidden state{'s' if states > 1 else ''} a frame, "
                              f"{cache.disk_bytes() / 1e9:.2f} GB on disk)")

    def _setup_validation_hook(self, statistics: Statistics) -> None:
        """``validation_hook``: with ``--floor-blend``, a ``FloorBlendHook`` with the floor's ``[N, k]`` unit-scale
        predictions of the validation split (of the model's attributes), which every validation blends the
        network's with; else the hook that adds nothing.

        They never change, so they are computed once, from each clip's statistics (``statistics``: cached by
        audio content, and in memory where ``fit_utterance_statistics`` has just read them) rather than by
        running the model: the model's own floor (``FloorBlend.floor``), in float64.
        """
        floor, wide = self.model.floor_blend, self.model.utterance_stats
        self.validation_hook = ValidationHook()
        if floor is None or wide is None:
            return
        rows = statistics(self.valid_set)
        with torch.no_grad():
            unit = floor.floor(wide.standardizer(torch.from_numpy(rows).to(self.context.device)))
        self.validation_hook = FloorBlendHook(floor, unit.cpu().numpy(),
                                              speakers=[utt.speaker for utt in self.valid_set],
                                              confidence=self.config.model.floor_blend_confidence)

    def _setup_batches(self, dataset_type: type[UtteranceDataset]) -> None:
        """The sampler decides which utterances each epoch uses and how they are grouped; the loader reads them."""
        config, context = self.config, self.context
        crop_s = config.data.max_duration_s or None
        self.sampler = training_sampler(config, self.train_set, rank=context.rank, world_size=context.world_size)
        # The run holds its records packed from here on, not as Python objects: the loader's workers are forks of
        # this process, and would copy the pages of every object they read (sertool.data.packed).
        self.train_set, self.valid_set = PackedUtterances(self.train_set), PackedUtterances(self.valid_set)
        self.dataset = dataset_type(
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
        self.schedule = LRSchedule(train_config, total_steps=planned_steps(self.sampler, train_config))
        self.scaler = torch.amp.GradScaler(self.context.device.type, enabled=self.amp_dtype == torch.float16)
        self.trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.ddp_model = self._wrap_ddp()

    def _wrap_ddp(self) -> SERModel | DistributedDataParallel:
        """Under DDP, the model in ``DistributedDataParallel``, once every rank is set up; else the model."""
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

    def _setup_state(self, checkpoint: dict[str, Any] | None) -> None:
        """The ``TrainState``: restored from ``last.pt``, or a new run's, recorded in environment.json."""
        self.state = state = TrainState()
        self.saved_step: int | None = None  # the step last.pt holds, once this run has read or written it
        self.saved_key: tuple[Any, ...] | None = None  # TrainState.checkpoint_key of last.pt: each state once
        if checkpoint is not None:
            reseeded = restore_training(checkpoint["training"], state, optimizer=self.optimizer, scaler=self.scaler,
                                        schedule=self.schedule, sampler=self.sampler, context=self.context,
                                        seed=self.config.seed, run_dir=self.run_dir)
            if reseeded:
                self.reporter.message(f"warning: {reseeded}")
            if self.context.is_main:
                remove_stale_temporaries(self.run_dir)
                truncate_metrics(self.run_dir, step=int(state.step), validations=len(state.history))
            self.saved_key, self.saved_step = state.checkpoint_key(), state.step
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


def _resumed_config(run_dir: Path, relocated: dict[str, Any], *, reporter: Reporter,
                    is_main: bool) -> tuple[Config, dict[str, Any] | None, Config]:
    """The config ``--resume`` continues with, ``last.pt`` (None: the run stopped before it), and the config the
    run recorded (before ``relocated`` pointed its data elsewhere)."""
    last = run_dir / LAST_NAME
    if last.is_file():
        try:
            checkpoint = load_checkpoint(last)
            recorded = Config.from_dict(checkpoint["config"], source=f"{last} (its config)")
        except (SertoolError, KeyError, TypeError) as error:
            raise SertoolError(f"cannot resume from {last}: {error}. Start the run again with `sertool train "
                               f"--config {run_dir / CONFIG_NAME} --out {run_dir} --force`") from None
        if not isinstance(checkpoint.get("training"), dict):
            raise SertoolError(f"{last}: holds no training state (is it a copy of best.pt?); cannot resume")
    else:
        config_file = run_dir / CONFIG_NAME
        if not config_file.is_file():
            raise SertoolError(f"--resume {run_dir}: neither {LAST_NAME} nor {CONFIG_NAME} is there; is it a run "
                               "folder of `sertool train`?")
        checkpoint, recorded = None, Config.from_yaml(config_file)
        reporter.message(f"{run_dir} has no {LAST_NAME} (the run stopped before its first checkpoint): starting it "
                         f"again from step 0 with its {CONFIG_NAME}")
        if is_main:
            remove_run_outputs(run_dir, keep=(CONFIG_NAME, ARGV_NAME))
    if relocated.get("data.feature_cache") is not None and recorded.data.feature_cache is None:
        raise SertoolError(f"--feature-cache with --resume moves a run's feature cache; {run_dir} trained without one "
                           "(its frames are recomputed, and cached ones would round them to float16): resume without "
                           "--feature-cache, or start a new run with it")
    config = Config.from_dict(recorded.to_dict())
    for key, value in relocated.items():
        section, _, name = key.rpartition(".")
        apply_value(config, section or None, name, value, source="--resume")
    config = config.with_absolute_paths()
    if config.data.corpus is not None and not Path(config.data.corpus).exists():
        raise SertoolError(f"--resume {run_dir}: the run's corpus {config.data.corpus} is not there; pass --corpus "
                           "ROOT as well to point at the same data where it is now")
    return config, checkpoint, recorded


def select_training_data(config: Config, utterances: Sequence[Utterance]) -> Selection:
    """The training and validation utterances of ``config``'s data options, checked to be enough to train on.

    Raises:
        SertoolError: a split without enough labelled utterances, or a bad selection option.
    """
    data = config.data
    selection = select(utterances, train_split=data.train_split, valid_split=data.valid_split, train_ox=data.train_ox,
                       dev_ox_to_train=data.dev_ox_to_train, seed=config.seed)
    require_enough_labels(selection, train_split=data.train_split, valid_split=data.valid_split)
    return selection


def training_speakers(config: Config, train_set: Sequence[Utterance]) -> list[str]:
    """The speaker classes of ``--aux speaker`` (the known speakers of ``train_set``, sorted); none without it."""
    if "speaker" not in config.model.aux:
        return []
    return sorted({utt.speaker for utt in train_set if utt.speaker is not None})


def training_sampler(config: Config, train_set: Sequence[Utterance], *, rank: int = 0,
                     world_size: int = 1) -> EpochBatchSampler:
    """The epoch sampler of ``config`` over ``train_set``: which utterances each epoch uses, in which micro-batches
    (durations cropped to ``--max-duration-s``), this rank's share."""
    train_config = config.train
    ox_balance = train_config.ox_balance_mode()  # whole / one-class with another sampling: the sampler refuses
    return EpochBatchSampler.from_records(
        train_set, max_duration_s=config.data.max_duration_s or None, sampling=train_config.sampling,
        # The cap is an undersampling option; a config (e.g. a grid's shared overrides) may hold it for all.
        max_per_class=(train_config.max_per_class or None) if train_config.sampling == "undersample" else None,
        whole_classes=NO_CLASS_CODES if ox_balance == "whole" else frozenset(),
        one_class=NO_CLASS_CODES if ox_balance == "one-class" else frozenset(),
        max_batch_s=None if train_config.batch_size else train_config.max_batch_s,
        # Like the cap: a bound of duration batching, which a --batch-size run does not use.
        min_batch_items=1 if train_config.batch_size else (train_config.min_batch_items or 1),
        batch_size=train_config.batch_size or None, num_buckets=train_config.num_buckets, seed=config.seed,
        rank=rank, world_size=world_size)


def check_window(config: Config, train_set: Sequence[Utterance], valid_set: Sequence[Utterance]) -> None:
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


def planned_steps(sampler: EpochBatchSampler, config: TrainConfig) -> int:
    """Optimiser steps of the whole run, for the LR schedule: ``--max-steps``, or the steps of ``--epochs``
    epochs if those end first. Epochs differ in length (undersampling draws new subsets, buckets fill
    differently), so each planned epoch is counted."""
    budget = config.max_steps or math.inf
    total = 0
    for epoch in itertools.count():
        if total >= budget or (config.epochs and epoch >= config.epochs):
            break
        total += math.ceil(len(sampler.plan(epoch)) / config.accum_steps)
    return int(min(total, budget))
