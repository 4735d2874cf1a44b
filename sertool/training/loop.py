"""`sertool train`: one readable training loop in plain PyTorch.

Where each part is:

- ``train``: the run folder's lock, the stop signals, DDP's process group; it sets up a ``_Run`` and calls
  its ``run``.
- ``training.setup_run.RunSetup``, which ``_Run`` extends: the set-up, in named ``_setup_*`` steps: the run
  folder and its config (or the interrupted run's ``last.pt``), the data, the model, the feature cache, the
  validation hook, the batches, the optimiser and schedule, the ``TrainState``.
- ``_Run.run``: the loop, top to bottom, one call from ``train``. Each optimiser step (``_optimizer_step``)
  runs ``accum_steps`` micro-batches forward and backward, each loss divided by their number so that the
  gradients add up to those of one large batch; a step with a non-finite loss or gradient on any rank is
  skipped on every rank, and ``max_nonfinite_steps`` of them in a row stop the run; then the gradients are
  clipped and AdamW updates the weights. What each step is due follows it, in order: its line in
  metrics.jsonl, the end of its epoch, a validation of the whole validation split when due, the end of the
  run (``--epochs`` or ``--max-steps``), ``last.pt`` when due, and a stop asked for by SIGINT or SIGTERM.
- ``training.state``: ``TrainState``, every counter the loop changes (``last.pt`` keeps it).
- ``training.validation``: what a validation decides (judged on rank 0, taken by every rank), ``best.pt``
  (and ``best_<attribute>.pt`` with ``select_best="per-attribute"``), early stopping after ``patience``
  validations without improvement, and the ``ValidationHook`` through which the floor blend
  (``--floor-blend``) takes part: validated before the first step too, it chooses its blend at every
  validation.
- ``training.checkpointing``: what the checkpoints hold, and how ``last.pt`` restores a run.

Only rank 0 writes files; every checkpoint is written atomically. ``last.pt`` is written only at a step
boundary, and what a step is due is decided from the ``TrainState`` alone, so a run killed at any point
resumes to the same weights as a run never interrupted.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from sertool.core.config import DEFAULT_DEVICE, Config
from sertool.core.devices import set_threads
from sertool.core.errors import SertoolError
from sertool.core.interrupts import Interrupted, StopRequests
from sertool.core.progress import set_display
from sertool.data.corpus import open_corpus
from sertool.data.dataset import Batch, UtteranceDataset
from sertool.guards.outputs import OutputPlan, append_text, atomic_write
from sertool.models.losses import SERLoss
from sertool.runtime import distributed, random_state
from sertool.runtime.distributed import Distributed
from sertool.runtime.precision import ieee_float32
from sertool.runtime.runner import ModelPredictions, run_model
from sertool.store.checkpoints import LAST_NAME, save_checkpoint
from sertool.training.checkpointing import checkpoint_payload, training_state
from sertool.training.curves import CURVES_NAME, METRICS_NAME, plot_curves, read_curves
from sertool.training.memory_plan import plan_memory
from sertool.training.reporter import Reporter
from sertool.training.run_folder import SUMMARY_NAME, interrupted_message, locked_run_folder, prepare_run_folder
from sertool.training.samplers import class_counts
from sertool.training.setup import checked_new_run
from sertool.training.setup_run import PreviousRun, RunSetup
from sertool.training.setup_run import check_window as _check_window  # noqa: F401  (tests import it from here)
from sertool.training.state import Stop, TrainResult
from sertool.training.validation import judge, keep_best, no_finite_validation, validation_record


def train(
    config: Config,
    run_dir: str | Path,
    *,
    resume: bool = False,
    relocated: dict[str, Any] | None = None,
    force: bool = False,
    argv: Sequence[str] = (),
    device: str = DEFAULT_DEVICE,
    threads: int = 0,
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
        threads: torch's CPU threads in this process (``--threads``; 0: torch's default, one per core).
        reporter: progress output (default: none).

    Raises:
        SertoolError: bad config, data or run folder, a folder another ``train`` is using, a run stopped by
            non-finite losses or gradients, a run that never produced a finite validation score, or under DDP a
            rank that waited longer than ``--ddp-timeout-s`` for the others (or lost one).
        Interrupted: a stop signal.
    """
    set_threads(threads)
    if not resume:
        config = checked_new_run(config)
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
            previous = PreviousRun()
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


class _Run(RunSetup):
    """A run, set up (``setup_run.RunSetup``: config, data, model, batches, optimiser, ``TrainState``) and
    trained: ``run`` is the loop."""

    def __init__(self, config: Config, run_dir: Path, *, resume: bool, argv: Sequence[str], context: Distributed,
                 reporter: Reporter, previous: PreviousRun | None = None, relocated: dict[str, Any] | None = None,
                 stops: StopRequests | None = None) -> None:
        # The corpus reader and the training dataset's type are taken from this module when the run starts:
        # the fault tests replace them here (tests/fault_driver.py, tests/test_ddp.py), as they replace
        # ``run_model`` and ``save_checkpoint``, which the loop calls.
        super().__init__(config, run_dir, resume=resume, argv=argv, context=context, reporter=reporter,
                         previous=previous, relocated=relocated, stops=stops, read_corpus=open_corpus,
                         dataset_type=UtteranceDataset)
        # The objective: the emotion loss of the model's attributes, and the auxiliary tasks'.
        self.loss_fn = SERLoss(self.config.model, attributes=self.model.attributes)

    @property
    def step(self) -> int:
        """Optimiser steps taken (``state.step``)."""
        return self.state.step

    # ----------------------------------------------------------------------------------------------
    # One function on purpose, past ruff's 10 branches: the whole sequence of a step, read top to bottom.
    def run(self) -> TrainResult:  # noqa: C901
        """The loop: epochs of optimiser steps, each followed by what it is due (see the module docstring)."""
        config, state = self.config.train, self.state
        self.reporter.start({
            "run_dir": str(self.run_dir), "train": len(self.train_set), "valid": len(self.valid_set),
            "device": str(self.context.device), "world_size": self.context.world_size,
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "parameters": sum(p.numel() for p in self.trainable), "epochs": config.epochs,
            "max_steps": config.max_steps, "total_steps": self.schedule.total_steps,
            "batches_per_epoch": len(self.sampler), "accum_steps": config.accum_steps, "resumed_at_step": state.step,
            "data": self.load_report, "classes": class_counts(self.sampler.class_codes), "config": self.config})
        self._report_memory_plan()
        if state.stopped is not None:
            self.reporter.message(f"{self.run_dir}: the run had already ended ({state.stopped} after {state.step} "
                                  "steps); nothing to train")
        elif state.step == 0 and not state.history and self.validation_hook.validates_before_training:
            self._validate()
        batches: Iterator[Batch] | None = None  # the current epoch's micro-batches, once the epoch has started
        batches_per_epoch = 0  # in this rank's share of the current epoch
        stats: dict[str, Any] | None = None  # of the step just taken, reported once what it is due is done
        while True:
            logged = False  # whether metrics.jsonl recorded the step just taken (the reporters are told)
            # 1. What the last step is due, in order. A resumed run starts here with the step its last.pt holds: a
            #    run killed after that checkpoint but before the step's validation (or its epoch's end) validates
            #    first, exactly as the uninterrupted run did. So every decision here reads the state alone.
            if state.step > 0 and state.stopped is None:
                epoch_ended = state.batches_in_epoch == len(self.sampler.plan(state.epoch))
                budget_spent = bool(config.max_steps) and state.step >= config.max_steps
                if stats is not None and (state.step % config.log_every_steps == 0 or epoch_ended or budget_spent):
                    self._log({"type": "train", **stats})
                    logged = True
                if epoch_ended:
                    state.epoch, state.batches_in_epoch = state.epoch + 1, 0
                    batches = None  # the finished epoch's loader, and its workers, go
                finished = bool(config.epochs) and state.epoch >= config.epochs or budget_spent
                # Every eval_every_steps steps and after the last; without it, where an epoch ends (or a step
                # budget ends the run inside one). Never twice for one step (a resumed run's may have been done).
                due = ((state.step % config.eval_every_steps == 0 or finished) if config.eval_every_steps
                       else (state.batches_in_epoch == 0 or budget_spent))
                validated = due and not (state.history and state.history[-1]["step"] == state.step)
                if validated:
                    self._validate()
                if state.stopped is None and finished:
                    state.stopped = Stop.FINISHED
                every = config.checkpoint_every_steps
                if epoch_ended or validated or state.stopped is not None or (every and state.step % every == 0):
                    self._save_last()
                # Every rank must stop at the same step, or the others would wait forever in the next all-reduce.
                if distributed.any_rank(self.stops.requested, self.context):
                    self._save_last_before_stopping()
                    raise Interrupted(self.stops.signal_number or signal.SIGTERM)
            if stats is not None:
                self.reporter.step({**stats, "logged": logged})
            if state.stopped is not None:
                break
            # 2. The next optimiser step: up to accum_steps micro-batches of the epoch, started where needed (a
            #    resumed run's sampler keeps the position last.pt restored).
            if batches is None:
                self.sampler.set_epoch(state.epoch)
                self.dataset.set_epoch(state.epoch)
                batches_per_epoch = len(self.sampler)
                self.reporter.epoch(state.epoch, batches_per_epoch, state.batches_in_epoch)
                batches = iter(self.loader)
            position = state.batches_in_epoch
            group = list(itertools.islice(batches, min(config.accum_steps, batches_per_epoch - position)))
            started_s = time.perf_counter()
            stats = self._optimizer_step(group)
            state.step += 1
            state.batches_in_epoch = position + len(group)
            # metrics.jsonl counts epochs from 1 in every record: the epoch this step trained in.
            stats.update(step=state.step, epoch=state.epoch + 1, batch=state.batches_in_epoch,
                         batches=batches_per_epoch, seconds=time.perf_counter() - started_s)
        return self._finish()

    def _report_memory_plan(self) -> None:
        """Rank 0: the memory plan's line (``training.memory_plan``), and where the run will not fit the device,
        a warning naming the flags that would. The plan only advises: where it cannot estimate, it says so and the
        run goes on."""
        if not self.context.is_main:
            return
        try:
            plan = plan_memory(self.config, self.train_set, self.valid_set, sampler=self.sampler,
                               device=self.context.device, resident_model=self.model,
                               backbone_weights=self.backbone_weights, epoch=self.sampler.epoch)
        except (SertoolError, RuntimeError, NotImplementedError, ValueError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            self.reporter.message(f"memory plan: not estimated ({reason})")
            return
        self.reporter.message(plan.summary())
        warning = plan.warning()
        if warning is not None:
            self.reporter.message(f"warning: {warning}")

    def _optimizer_step(self, group: list[Batch]) -> dict[str, Any]:
        """One optimiser step over the micro-batches of ``group``: forward and backward on each, gradients
        accumulating; the non-finite guard; clipping; the update. Every rank skips the step alike where some
        rank has no readable micro-batch, or a loss or the gradient is not finite. Returns the step's stats."""
        config, state = self.config.train, self.state
        lr = self.schedule.apply(self.optimizer, state.step) * config.lr_heads
        autocast = (torch.autocast(self.context.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                    else contextlib.nullcontext())
        self.optimizer.zero_grad(set_to_none=True)
        usable = self._usable_batches(group)
        if usable is None:
            return {"skipped": "unreadable audio", "lr": lr, "utterances": 0}
        parts_sum: dict[str, torch.Tensor] = {}  # on the device: read once, after the last micro-batch
        utterances = 0
        for index, batch in enumerate(usable):
            batch = batch.to(self.context.device)
            # Under DDP, gradients are averaged across ranks only on the last micro-batch of a step.
            sync = (self.ddp_model.no_sync() if isinstance(self.ddp_model, DistributedDataParallel)
                    and index < len(usable) - 1 else contextlib.nullcontext())
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
        # The non-finite guard. Every rank must take the same decision, or the ranks' weights drift apart.
        nonfinite = "loss" if distributed.any_rank(not math.isfinite(means.get("total", 0.0)), self.context) else None
        if nonfinite is None:
            self.scaler.unscale_(self.optimizer)
            max_norm = config.grad_clip_norm if config.grad_clip_norm > 0 else math.inf
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, max_norm))  # the step's second host read
            # fp16's GradScaler skips a step whose gradients overflowed (and lowers its scale). Without one (bf16,
            # fp32) nothing else keeps a NaN gradient of a finite loss out of the weights, and then out of last.pt.
            if not self.scaler.is_enabled() and distributed.any_rank(not math.isfinite(grad_norm), self.context):
                nonfinite = "gradient"
        if nonfinite is not None:
            self.optimizer.zero_grad(set_to_none=True)
            state.skipped_steps += 1
            state.nonfinite_in_a_row += 1
            if state.nonfinite_in_a_row >= config.max_nonfinite_steps:
                self._save_last_before_stopping()  # the state before this step
                raise SertoolError(  # the step counted from 1, as metrics.jsonl counts it
                    f"stopped: {state.nonfinite_in_a_row} optimiser steps in a row had a non-finite loss or gradient "
                    f"(step {state.step + 1}: its {nonfinite}). Lower --lr-heads/--lr-backbone, try --amp bf16 or "
                    f"off, or check the labels; {self.run_dir / LAST_NAME} holds the state before the failure")
            return {"skipped": f"non-finite {nonfinite}", "lr": lr, "utterances": utterances}
        state.nonfinite_in_a_row = 0
        self.scaler.step(self.optimizer)  # skips the update by itself when fp16 gradients overflowed
        self.scaler.update()
        return {**{f"loss_{k}" if not k.startswith("ccc") else k: v for k, v in means.items()},
                "grad_norm": grad_norm, "lr": lr, "utterances": utterances}

    def _usable_batches(self, group: list[Batch]) -> list[Batch] | None:
        """The micro-batches of ``group`` that hold audio to train on, or None when some rank has none.

        Under DDP the ranks agree first (one all-reduce): a rank without a micro-batch has no backward pass,
        so it could not join the others' gradient all-reduce, and they would wait for it forever; every rank
        skips the step instead. Audio that failed to load on any rank is made known to every rank, so that
        all of them count it (``skipped_audio``), or all stop on it (``--on-bad-audio fail``).
        """
        usable = [batch for batch in group if len(batch)]
        failed = [item for batch in group for item in batch.skipped]
        none_usable, any_failed = distributed.any_rank_each([not usable, bool(failed)], self.context)
        if any_failed:
            items = [item for share in distributed.all_gather_objects(failed, self.context) for item in share]
            if self.config.data.on_bad_audio == "fail":
                raise SertoolError(f"--on-bad-audio fail: cannot read {items[0]}")
            self.state.skipped_audio.extend(items)
            for item in items:
                self.reporter.message(f"skipped unreadable audio {item}")
        return None if none_usable else usable

    def _validate(self) -> None:
        """Validate on the whole split (``training.validation``): rank 0 judges, every rank takes its verdict;
        the best checkpoints, and early stopping, which may end the run."""
        state = self.state
        try:
            predictions = self._predict_valid()
        except Interrupted:
            # Validation has changed nothing yet: this is the state the step left. Under DDP the other ranks stop
            # wherever the signal finds them, and a save gathers from every rank: last.pt stays as it is.
            if not self.context.enabled:
                self._save_last()
            raise
        verdict = distributed.from_main(functools.partial(
            judge, predictions, self.valid_set, self.model.label_scaling, self.validation_hook,
            best_average=state.best.get("average", -math.inf), attributes=self.model.attributes), self.context)
        self.validation_hook.take(verdict.choice)
        self.schedule.on_validation(verdict.improved)
        record = validation_record(verdict, state, split=self.config.data.valid_split, utterances=len(self.valid_set),
                                   hook=self.validation_hook)
        if verdict.nonfinite:
            self.reporter.message(f"warning: validation after step {state.step}: {len(verdict.nonfinite)} of "
                                  f"{len(self.valid_set)} predictions are not finite (first: {verdict.nonfinite[0]}); "
                                  "this validation cannot count as an improvement")
        state.history.append(record)
        self._log(record)
        self.reporter.validation(record)
        train_config = self.config.train
        for name in keep_best(state, verdict, per_attribute=train_config.select_best == "per-attribute",
                              patience=train_config.patience):
            self._save(name, verdict.scores)

    def _predict_valid(self) -> ModelPredictions:
        """The network's predictions of the validation split (the hook may leave a part out: the floor).

        Validation draws no training random numbers (the loader's seed would), so that a run validated more
        or less often, or resumed from the checkpoint of the step before a validation, trains alike.
        """
        with self.stops.at_once(), torch.random.fork_rng(devices=[]), self.validation_hook.predicting():
            return run_model(self.model, self.valid_set, device=self.context.device,
                             description=f"validating on {self.config.data.valid_split}",
                             text_embeddings=self.text_embeddings, frames=self.cached_frames,
                             num_workers=self.config.data.num_workers, amp_dtype=self.amp_dtype,
                             context=self.context, finite_only=False)

    def _finish(self) -> TrainResult:
        """The result of a run that has ended, with summary.json and curves.png.

        Raises:
            SertoolError: no validation gave a finite score, so there is no best.pt.
        """
        state = self.state
        if not state.best:
            raise SertoolError(no_finite_validation(state, self.valid_set, split=self.config.data.valid_split,
                                                    last_path=str(self.run_dir / LAST_NAME)))
        assert state.stopped is not None, "the loop ends only once the run has stopped"
        # The validation that made best.pt (the last improving one): were any of its heads near-constant?
        best_record: dict[str, Any] = next((record for record in reversed(state.history) if record["improved"]), {})
        collapsed: list[str] = best_record.get("collapsed", [])
        # --floor-blend: how much of each attribute best.pt's network carries against the floor, and why.
        blend = {key: best_record[key] for key in ("floor_blend", "floor_blend_why") if key in best_record}
        result = TrainResult(self.run_dir, best=state.best, best_step=state.best_step, steps=state.step,
                             stopped=state.stopped, skipped_steps=state.skipped_steps,
                             skipped_audio=state.skipped_audio, history=state.history, collapsed=collapsed)
        if self.context.is_main:
            with atomic_write(self.run_dir / SUMMARY_NAME, replace=True) as handle:
                json.dump({"best": state.best, "best_step": state.best_step, "steps": state.step,
                           "stopped": state.stopped.value, "collapsed": collapsed,
                           "skipped_steps": state.skipped_steps, "skipped_audio": state.skipped_audio, **blend},
                          handle, indent=2)
            try:  # curves.png beside metrics.jsonl; without matplotlib, a message instead (the run has succeeded)
                with atomic_write(self.run_dir / CURVES_NAME, "wb", replace=True) as handle:
                    plot_curves([read_curves(self.run_dir)], handle, title=str(self.run_dir))
            except SertoolError as error:
                self.reporter.message(f"no {CURVES_NAME}: {error}")
        self.reporter.finish(result)
        return result

    # ----------------------------------------------------------------------------------------------
    def _save(self, name: str, metrics: dict[str, float]) -> None:
        """Checkpoint ``name`` of the weights now, kept for ``metrics`` (rank 0 writes it)."""
        if self.context.is_main:
            save_checkpoint(checkpoint_payload(self.description, self.model, self.state, metrics), self.run_dir / name)

    def _save_last(self) -> None:
        """``last.pt``: a checkpoint plus the whole training state, at an optimiser-step boundary (once per state)."""
        state = self.state
        if state.checkpoint_key() == self.saved_key:
            return
        # Every rank's own random states (a collective: every rank saves at the same steps).
        rng = distributed.all_gather_objects(random_state.process_state(self.context.device), self.context)
        if self.context.is_main:
            payload = checkpoint_payload(self.description, self.model, state,
                                         state.history[-1] if state.history else {})
            payload["training"] = training_state(
                state, optimizer=self.optimizer, scaler=self.scaler, schedule=self.schedule, sampler=self.sampler,
                rng=rng, world_size=self.context.world_size, data_fingerprint=self.data_fingerprint)
            save_checkpoint(payload, self.run_dir / LAST_NAME)
        self.saved_key, self.saved_step = state.checkpoint_key(), state.step

    def _save_last_before_stopping(self) -> None:
        """``last.pt``, then every rank waits until rank 0 has written it: under torchrun, a rank that exits
        sooner has torchrun stop the others, and kill rank 0 30 s later, maybe in the middle of the write."""
        self._save_last()
        distributed.barrier(self.context)

    def _log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to metrics.jsonl (rank 0)."""
        if self.context.is_main:
            # Strict JSON (null, not NaN), so that any JSON reader takes the file.
            plain = {key: None if isinstance(value, float) and not math.isfinite(value) else value
                     for key, value in record.items()}
            append_text(self.run_dir / METRICS_NAME, json.dumps(plain) + "\n")
