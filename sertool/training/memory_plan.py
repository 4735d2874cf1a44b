"""The memory a training run will need, known before it runs: ``sertool train --plan`` and every run's first lines.

Once it has taken a step, a run holds (``MemoryPlan`` keeps each part, in bytes):

- weights: every parameter and buffer of the model, in float32 as it trains, frozen encoders included;
- gradients: one float32 gradient per trainable parameter (kept from one step to the next);
- optimiser state: AdamW's two float32 moments per trainable parameter;
- the process's baseline: on the CPU the resident memory of this process without the model (Python, torch,
  transformers, the corpus) and ``CPU_RUNTIME_BYTES``; on a GPU the CUDA context (``CUDA_CONTEXT_BYTES``).

On top of that comes the largest of what its phases add (``Estimate.phase`` names the one that decides the peak):

- a training step on the largest micro-batch of an epoch, measured rather than guessed: the model's forward and
  backward passes run on that batch's shape with fake tensors (shapes and dtypes only: no memory, no
  arithmetic). Every tensor saved for backward is counted (``saved_tensors_hooks``; each storage once, views
  share theirs; a checkpointed layer's inputs are among them): the activations. Every tensor an operation makes
  is followed until it is freed: the most they hold at once beyond the activations is the transient (the
  gradients flowing back, a checkpointed layer recomputed, an operation's input beside its output). Autocast
  acts on fake CPU tensors as on real ones, so the half-precision rows measure what autocast keeps in half
  precision and what in float32;
- a validation: the same for a forward without gradients over the largest validation batch (whole clips,
  ``DEFAULT_EVAL_BATCH_S`` padded seconds);
- on the CPU, writing ``last.pt``: the checkpoint is serialised in memory first (its stored weights and the
  optimiser state);
- on a GPU, the optimiser step: one float32 copy of the trainable parameters (AdamW's foreach update);
- with ``--feature-cache`` serving the run (``frame_cache_refusal``: a frozen encoder), the cache's fill: the
  encoder's forward without gradients over the largest batch it computes, as ``runtime.frames.fill_frame_cache``
  batches the training and validation clips. The training step and the validation then read the cached states
  instead of running the encoder: their passes take fake states of the stored shape and dtype.

The copies a kernel makes inside an operation, which no fake tensor shows, are added while it runs
(``_hidden_copies``: a layer norm's non-contiguous input; on the CPU, a convolution's input and output in oneDNN's
blocked layout). On the CPU the C heap keeps ``CPU_HEAP_RETAINED`` of the step's memory, which the validation and the
checkpoint come on top of.

The model is built without its weights: every pretrained part from its config alone
(``SERModel(pretrained_weights=False)``), every parameter on the meta device as it is registered
(``_parameters_on_meta``), made fake for a pass (``_fake_parameters``); planning a WavLM-Large run takes seconds
and no memory. The constants are calibrated in docs/performance.md, "13. The memory plan".
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sertool.cache.frames import STORED_DTYPE
from sertool.core.config import DEFAULT_EVAL_BATCH_S, Config
from sertool.core.constants import CONFIG_NAME, SAMPLE_RATE
from sertool.core.devices import half_precision, select_device
from sertool.core.errors import SertoolError
from sertool.core.progress import task
from sertool.data.corpus import open_corpus
from sertool.data.records import Utterance
from sertool.models.frame_features import frame_cache_refusal
from sertool.models.ser_model import SERModel
from sertool.runtime.batching import length_sorted_batches
from sertool.runtime.precision import resolve_amp
from sertool.store.checkpoints import stored_state
from sertool.training.samplers import EpochBatchSampler
from sertool.training.setup import checked_new_run, resolve_new_config
from sertool.training.setup_run import select_training_data, training_sampler, training_speakers

# Calibrated on the CPU against the peak resident memory of real training runs, each in a process of its own (tiny
# and mid-sized WavLM, fbank, a frozen Whisper; docs/performance.md, "13. The memory plan"; bench/bench.py --only
# memory_plan). What a CPU training process allocates once it computes, whatever the model's size: the math
# libraries' scratch buffers and thread pools, the autograd engine, the loader.
CPU_RUNTIME_BYTES = 90 * 10**6
# The share of a training step's memory that the C heap keeps once the step has freed it (glibc returns chunks of
# 32 MiB and more to the system, keeps smaller ones): measured 0.49 and 0.55 while a mid-sized WavLM wrote last.pt.
CPU_HEAP_RETAINED = 0.5
# What a process's CUDA context takes on the GPU before torch allocates anything (kernels, cuBLAS and cuDNN
# handles): about half a GiB with CUDA 12's lazy loading. Not calibrated here (no GPU at hand): a stated guess.
CUDA_CONTEXT_BYTES = 512 * 2**20
ADAM_MOMENTS = 2  # exp_avg and exp_avg_sq, each the size of its parameter, in float32
FLOAT32_BYTES = 4
# Smaller --max-batch-s (or --batch-size) a run that does not fit is offered, as fractions of its own.
SMALLER_BATCHES = (0.75, 0.5, 0.25)
# transformers' training-time randomness drawn from the data on the host (SpecAugment's masks) or skipping layers
# (LayerDrop): off in the measured forward, which keeps every layer and masks nothing (a mask is a [B, T] tensor).
_RANDOM_STRUCTURE = ("mask_time_prob", "mask_feature_prob", "layerdrop")
# The cached states' dtype as the loader hands them to the model: as stored.
CACHED_FRAMES_DTYPE = torch.from_numpy(np.empty(0, dtype=STORED_DTYPE)).dtype
_PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class MicroBatch:
    """A batch's shape: its items, its padded length, and which utterances it holds.

    Attributes:
        items: utterances in it.
        longest_s: its padded length (its longest clip; for training, cropped by ``--max-duration-s`` and slowed by
            ``--speed-perturbation`` at worst).
        indices: its utterances (their transcripts feed a LoRA text encoder).
    """

    items: int
    longest_s: float
    indices: tuple[int, ...] = ()

    @property
    def padded_s(self) -> float:
        """Seconds of audio the model processes: items × longest clip."""
        return self.items * self.longest_s

    @property
    def samples(self) -> int:
        """The padded length in 16 kHz samples."""
        return max(1, round(self.longest_s * SAMPLE_RATE))


def largest_micro_batch(sampler: EpochBatchSampler, *, epoch: int = 0, speed_perturbation: float = 0.0) -> MicroBatch:
    """The micro-batch of ``epoch`` (this rank's share) with the most padded seconds, then the most items.

    ``speed_perturbation`` x > 0 may slow a clip to speed 1 − x, which lengthens it by 1 / (1 − x): the
    padded length is taken at that worst case.
    """
    return _largest(sampler.plan(epoch), sampler.durations_s, stretch=1.0 / (1.0 - speed_perturbation))


def largest_validation_batch(valid_set: Sequence[Utterance]) -> MicroBatch | None:
    """The validation batch with the most padded seconds (whole clips, as ``runtime.runner.run_model`` batches
    them); None without validation utterances."""
    if not valid_set:
        return None
    durations_s = np.array([utt.duration_s for utt in valid_set])
    return _largest(length_sorted_batches(durations_s, max_batch_s=DEFAULT_EVAL_BATCH_S), durations_s)


def largest_fill_batch(utterances: Sequence[Utterance], *, padding_invariant: bool) -> MicroBatch | None:
    """The batch of the feature cache's fill with the most padded seconds (whole clips, as
    ``runtime.frames.fill_frame_cache`` batches them: one clip at a time for an encoder that is not
    ``padding_invariant``); None without utterances."""
    if not utterances:
        return None
    durations_s = np.array([utt.duration_s for utt in utterances])
    batch_s = DEFAULT_EVAL_BATCH_S if padding_invariant else 0.0
    return _largest(length_sorted_batches(durations_s, max_batch_s=batch_s), durations_s)


def _largest(batches: Sequence[Sequence[int]], durations_s: np.ndarray, *, stretch: float = 1.0) -> MicroBatch:
    batch = max(batches, key=lambda indices: (len(indices) * float(durations_s[list(indices)].max()), len(indices)))
    return MicroBatch(items=len(batch), longest_s=float(durations_s[list(batch)].max()) * stretch,
                      indices=tuple(int(index) for index in batch))


@dataclass(frozen=True)
class Estimate:
    """The peak of one way to train: a precision, with or without gradient checkpointing, a micro-batch.

    Attributes:
        precision: "fp32", "bf16" or "fp16" (autocast's dtype).
        checkpointing: ``--gradient-checkpointing``.
        batch: the largest micro-batch it was measured on.
        activation_bytes: saved for the backward pass of that batch (measured).
        transient_bytes: the most the step's other tensors hold at once beyond them (measured).
        validation_bytes: the most a validation's forward holds at once (measured; 0 without a validation).
        phase: where the peak falls: "training step", "validation", "writing last.pt", "optimiser step" or
            "feature cache fill".
        peak_bytes: the whole estimate, the baseline included.
    """

    precision: str
    checkpointing: bool
    batch: MicroBatch
    activation_bytes: int
    transient_bytes: int
    validation_bytes: int
    phase: str
    peak_bytes: int

    def flags(self, batch_flag: str = "") -> str:
        """The command-line flags that choose this way (``batch_flag``: a smaller micro-batch's flag, if any)."""
        parts = [f"--amp {self.precision}" if self.precision != "fp32" else "",
                 "--gradient-checkpointing" if self.checkpointing else "", batch_flag]
        return " ".join(part for part in parts if part)


@dataclass(frozen=True)
class Suggestion:
    """Flags that make a run which does not fit fit, with the estimate re-measured with them."""

    flags: str
    estimate: Estimate


@dataclass
class MemoryPlan:
    """What a run will hold at its peak, and whether that is more than the device has.

    Attributes:
        device: where the run trains, in words (a GPU's name).
        limit_bytes: the memory the run may take there (a GPU's total memory; on the CPU what this process holds
            plus what the machine has available), or None where the system does not say.
        baseline_bytes: the process without the model (module docstring).
        parameters: every parameter of the model; ``trainable`` those that train.
        weight_bytes: parameters and buffers as stored.
        gradient_bytes: float32 gradients of the trainable parameters.
        optimizer_bytes: AdamW's moments.
        chosen: the estimate of the run as configured.
        table: every precision with and without checkpointing (``--plan``; otherwise empty).
        suggestions: flags that would fit, where ``chosen`` does not.
    """

    device: str
    limit_bytes: int | None
    baseline_bytes: int
    parameters: int
    trainable: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    chosen: Estimate
    table: tuple[Estimate, ...] = ()
    suggestions: tuple[Suggestion, ...] = field(default=())

    @property
    def fits(self) -> bool | None:
        """Whether the run's estimate fits the device (None: its memory is unknown)."""
        return None if self.limit_bytes is None else self.chosen.peak_bytes <= self.limit_bytes

    def model_line(self) -> str:
        """Parameters, and what the weights, gradients and optimiser state take."""
        return (f"model: {self.parameters:,} parameters, {self.trainable:,} trainable; weights "
                f"{size(self.weight_bytes)}, gradients {size(self.gradient_bytes)}, "
                f"AdamW state {size(self.optimizer_bytes)}")

    def batch_line(self) -> str:
        """The largest micro-batch of an epoch."""
        batch = self.chosen.batch
        return (f"largest micro-batch of an epoch: {batch.items} utterances × {batch.longest_s:.1f} s = "
                f"{batch.padded_s:.1f} padded seconds")

    def device_line(self) -> str:
        """The device, its memory and the process's baseline."""
        limit = "memory unknown" if self.limit_bytes is None else f"{size(self.limit_bytes)} available"
        return f"device: {self.device}, {limit}; process baseline {size(self.baseline_bytes)}"

    def summary(self) -> str:
        """One line: the run's estimated peak, how it trains, and the device's memory."""
        chosen = self.chosen
        how = f"{chosen.precision}, {'with' if chosen.checkpointing else 'no'} gradient checkpointing"
        limit = "" if self.limit_bytes is None else f", of {size(self.limit_bytes)} available"
        return (f"memory plan: about {size(chosen.peak_bytes)} at the peak ({chosen.phase}) on {self.device} ({how}; "
                f"largest micro-batch {chosen.batch.items} × {chosen.batch.longest_s:.1f} s){limit}")

    def warning(self) -> str | None:
        """Where the run does not fit: says so, and names the flags that would (None where it fits)."""
        if self.fits is not False:
            return None
        assert self.limit_bytes is not None
        text = (f"the estimated peak, {size(self.chosen.peak_bytes)}, exceeds the {size(self.limit_bytes)} "
                f"{self.device} has: ")
        if not self.suggestions:
            return text + ("no precision, checkpointing or smaller micro-batch tried fits; train on a device with "
                           "more memory, or crop clips with --max-duration-s")
        options = [f"{suggestion.flags} ({size(suggestion.estimate.peak_bytes)})" for suggestion in self.suggestions]
        return text + "; ".join(options) + (" would fit" if len(options) == 1 else " would each fit")


def size(num_bytes: float) -> str:
    """Bytes in words: "532 MB", "13.2 GB" (powers of ten)."""
    if num_bytes >= 1e9:
        return f"{num_bytes / 1e9:.1f} GB"
    return f"{num_bytes / 1e6:.0f} MB"


def plan_training(config_file: str | None, flags: dict[str, Any], *, resume: str | None,
                  device: str) -> MemoryPlan:
    """``sertool train --plan``: the config and the corpus resolved exactly as ``train`` resolves them, the model
    built without weights, and every precision measured with and without checkpointing. Writes nothing.

    Args:
        config_file: ``--config``.
        flags: train's config flags (``training.setup.resolve_train_config``).
        resume: ``--resume``, refused: a resumed run keeps its own config, which ``--config RUN_DIR/config.yaml``
            plans.
        device: ``--device``.

    Raises:
        SertoolError: a bad config, corpus or device, or ``--resume``.
    """
    if resume is not None:
        raise SertoolError(f"--plan with --resume: plan the run's own config with `sertool train --config "
                           f"{Path(resume) / CONFIG_NAME} --plan`")
    config = checked_new_run(resolve_new_config(config_file, flags))
    torch_device = select_device(device)
    assert config.data.corpus is not None  # checked_new_run refuses a config without one
    with task("reading audio headers") as update:
        corpus = open_corpus(config.data.corpus, progress=update, cache_dir=config.data.cache_dir)
    selection = select_training_data(config, corpus.utterances)
    return plan_memory(config, selection.train, selection.valid, sampler=training_sampler(config, selection.train),
                       device=torch_device, whole_table=True)


def plan_memory(config: Config, train_set: Sequence[Utterance], valid_set: Sequence[Utterance], *,
                sampler: EpochBatchSampler, device: torch.device, whole_table: bool = False,
                resident_model: nn.Module | None = None, backbone_weights: str = "published",
                limit_bytes: int | None = None, epoch: int = 0) -> MemoryPlan:
    """The memory plan of training ``config`` on ``train_set`` in ``sampler``'s micro-batches on ``device``.

    Args:
        config: the run's resolved config.
        train_set: its training utterances, as ``sampler`` indexes them.
        valid_set: its validation utterances.
        sampler: its epoch sampler (``setup_run.training_sampler``).
        device: where it trains (nothing is allocated there).
        whole_table: measure every precision with and without checkpointing (``--plan``); otherwise the run's own
            way, and the others only where it does not fit.
        resident_model: a model this process already holds (a run's own, once set up): on the CPU, its bytes are
            left out of the baseline.
        backbone_weights: where the run's backbone weights come from (``SERModel``): what ``last.pt`` stores.
        limit_bytes: the memory the run may take (default: ``device_memory``'s).
        epoch: the epoch whose micro-batches are looked at.

    Raises:
        SertoolError: the model's config cannot be read.
    """
    name, available = device_memory(device)
    planner = _Planner(config, train_set, valid_set, device=device, backbone_weights=backbone_weights)
    with _untouched_random_state():
        planner.model(config.train.gradient_checkpointing)  # first: it imports what the run's model imports
        held = 0 if resident_model is None or device.type != "cpu" else module_bytes(resident_model)
        planner.baseline_bytes = (CUDA_CONTEXT_BYTES if device.type == "cuda"
                                  else max(0, resident_bytes() - held) + CPU_RUNTIME_BYTES)
        batch = largest_micro_batch(sampler, epoch=epoch, speed_perturbation=config.data.speed_perturbation)
        plan = planner.plan(batch, device_name=name, limit_bytes=available if limit_bytes is None else limit_bytes)
        if whole_table:
            plan.table = tuple(planner.estimate(precision, checkpointing, batch)
                               for precision in (None, planner.half) for checkpointing in (False, True))
        if plan.fits is False:
            plan.suggestions = tuple(planner.suggestions(plan))
    return plan


def device_memory(device: torch.device) -> tuple[str, int | None]:
    """``device`` in words, and the memory a run may take there: a GPU's total memory
    (``torch.cuda.get_device_properties``); on the CPU what this process holds plus what the machine has
    available (``MemAvailable`` of /proc/meminfo, else ``os.sysconf``), None where neither says."""
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return f"{device} ({properties.name})", int(properties.total_memory)
    available = _available_ram()
    return "cpu", None if available is None else available + resident_bytes()


@dataclass(frozen=True)
class _Held:
    """What a run holds once it has taken a step: parameters, and the bytes of each part."""

    parameters: int
    trainable: int
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    checkpoint_bytes: int  # last.pt serialised in memory: the stored weights and the optimiser state


class _Planner:
    """Estimates for one run's config, data and device; the models (one per checkpointing setting) and the
    measurements are made once each."""

    def __init__(self, config: Config, train_set: Sequence[Utterance], valid_set: Sequence[Utterance], *,
                 device: torch.device, backbone_weights: str) -> None:
        self.config = config
        self.train_set = train_set
        self.valid_set = valid_set
        self.device = device
        self.backbone_weights = backbone_weights
        self.amp = resolve_amp(config.train.amp, device)
        # The half precision of the table: the run's own, else the device's (bf16 on the CPU, which lacks fp16).
        self.half: torch.dtype = self.amp or half_precision(device) or torch.bfloat16
        self.baseline_bytes = 0  # the process without the model (module docstring)
        self._models: dict[bool, SERModel] = {}
        self._measured: dict[tuple[Any, ...], Measurement] = {}
        self._held: _Held | None = None
        self._frames_cached: bool | None = None

    def model(self, checkpointing: bool) -> SERModel:
        """The run's model with or without gradient checkpointing, its parameters on the meta device."""
        if checkpointing not in self._models:
            with _parameters_on_meta():
                model = SERModel(self.config.model, num_speakers=len(training_speakers(self.config, self.train_set)),
                                 gradient_checkpointing=checkpointing, backbone_weights=self.backbone_weights,
                                 attributes=self.config.train.attribute_names(), pretrained_weights=False)
            self._models[checkpointing] = _ready_to_measure(model)
        return self._models[checkpointing]

    @property
    def frames_cached(self) -> bool:
        """Whether ``--feature-cache`` serves the run: its steps and validations read the frozen encoder's cached
        states, which a fill computes first (``models.frame_features.frame_cache_refusal``)."""
        if self._frames_cached is None:
            self._frames_cached = (self.config.data.feature_cache is not None and frame_cache_refusal(
                self.config, self.model(self.config.train.gradient_checkpointing)) is None)
        return self._frames_cached

    def held(self) -> _Held:
        """What the run holds once it has taken a step."""
        if self._held is None:
            model = self.model(self.config.train.gradient_checkpointing)
            parameters = list(model.parameters())
            trainable = sum(parameter.numel() for parameter in parameters if parameter.requires_grad)
            gradient_bytes = trainable * FLOAT32_BYTES
            optimizer_bytes = ADAM_MOMENTS * gradient_bytes
            self._held = _Held(
                parameters=sum(parameter.numel() for parameter in parameters), trainable=trainable,
                weight_bytes=module_bytes(model), gradient_bytes=gradient_bytes, optimizer_bytes=optimizer_bytes,
                checkpoint_bytes=sum(_nbytes(tensor) for tensor in stored_state(model).values()) + optimizer_bytes)
        return self._held

    def measured(self, checkpointing: bool, dtype: torch.dtype | None, batch: MicroBatch, *,
                 training: bool = True, cached_frames: bool = False,
                 utterances: Sequence[Utterance] | None = None) -> Measurement:
        """One fake pass of ``batch`` (of ``utterances``: by default the training or the validation set): a
        training step's, or a validation's (``measure_pass``), on cached states or on the audio."""
        key = (checkpointing, dtype, batch, training, cached_frames)
        if key not in self._measured:
            if utterances is None:
                utterances = self.train_set if training else self.valid_set
            texts = [utterances[index].transcript or "" for index in batch.indices]
            self._measured[key] = measure_pass(self.model(checkpointing), batch.items, batch.samples, dtype=dtype,
                                               texts=texts, training=training, cpu_kernels=self.device.type == "cpu",
                                               cached_frames=cached_frames)
        return self._measured[key]

    def estimate(self, dtype: torch.dtype | None, checkpointing: bool, batch: MicroBatch) -> Estimate:
        """The peak of training in ``dtype`` (None: float32), with or without checkpointing, on ``batch``."""
        cached = self.frames_cached
        measured = self.measured(checkpointing, dtype, batch, cached_frames=cached)
        held = self.held()
        transient = max(0, measured.peak_bytes - measured.saved_bytes)
        step = measured.saved_bytes + transient
        on_cpu = self.device.type == "cpu"
        # On the CPU the heap keeps part of what the step freed: the phases after it come on top of that part.
        kept = round(CPU_HEAP_RETAINED * step) if on_cpu else 0
        # last.pt is serialised in host memory: it counts on the CPU only; AdamW's foreach temporaries on a GPU only.
        phases = {"training step": step, "writing last.pt": kept + held.checkpoint_bytes if on_cpu else 0,
                  "optimiser step": 0 if on_cpu else held.gradient_bytes}
        valid_batch = largest_validation_batch(self.valid_set)
        validation = 0
        if valid_batch is not None:
            # Without gradients, the model's checkpointing setting changes nothing.
            validation = self.measured(checkpointing, dtype, valid_batch, training=False,
                                       cached_frames=cached).peak_bytes
            phases["validation"] = kept + validation
        if cached:
            # The fill runs the encoder (without gradients) before the first step, over every training and
            # validation clip; nothing of a step is held yet, which the formula below leaves in (a frozen encoder's
            # run trains little).
            utterances = [*self.train_set, *self.valid_set]
            fill_batch = largest_fill_batch(utterances, padding_invariant=self.model(checkpointing).backbone
                                            .padding_invariant)
            if fill_batch is not None:
                phases["feature cache fill"] = self.measured(checkpointing, dtype, fill_batch, training=False,
                                                             utterances=utterances).peak_bytes
        phase = max(phases, key=lambda name: phases[name])
        peak = self.baseline_bytes + held.weight_bytes + held.gradient_bytes + held.optimizer_bytes + phases[phase]
        return Estimate(precision=_PRECISION_NAMES[dtype], checkpointing=checkpointing, batch=batch,
                        activation_bytes=measured.saved_bytes, transient_bytes=transient, validation_bytes=validation,
                        phase=phase, peak_bytes=peak)

    def plan(self, batch: MicroBatch, *, device_name: str, limit_bytes: int | None) -> MemoryPlan:
        """The plan of the run as configured (its own precision and checkpointing), without suggestions."""
        chosen = self.estimate(self.amp, self.config.train.gradient_checkpointing, batch)
        held = self.held()
        return MemoryPlan(device=device_name, limit_bytes=limit_bytes, baseline_bytes=self.baseline_bytes,
                          parameters=held.parameters, trainable=held.trainable, weight_bytes=held.weight_bytes,
                          gradient_bytes=held.gradient_bytes, optimizer_bytes=held.optimizer_bytes, chosen=chosen)

    def suggestions(self, plan: MemoryPlan) -> Iterator[Suggestion]:
        """Flags that fit where the run does not: gradient checkpointing, half precision, both (where neither alone
        fits), and the largest smaller micro-batch bound that fits with the run's own precision and checkpointing."""
        assert plan.limit_bytes is not None
        limit, chosen = plan.limit_bytes, plan.chosen
        singles = [(self.amp, True)] if not chosen.checkpointing else []
        if self.amp is None:
            singles.append((self.half, chosen.checkpointing))
        estimates = [self.estimate(dtype, checkpointing, chosen.batch) for dtype, checkpointing in singles]
        fitting = [Suggestion(estimate.flags(), estimate) for estimate in estimates if estimate.peak_bytes <= limit]
        if not fitting and len(singles) == 2:
            both = self.estimate(self.half, True, chosen.batch)
            fitting = [Suggestion(both.flags(), both)] if both.peak_bytes <= limit else []
        yield from fitting
        smaller = self._smaller_batch(limit, chosen)
        if smaller is not None:
            yield smaller

    def _smaller_batch(self, limit_bytes: int, chosen: Estimate) -> Suggestion | None:
        """The largest of ``SMALLER_BATCHES`` × the run's micro-batch bound whose largest micro-batch is smaller and
        fits, with the run's own precision and checkpointing; None where none does."""
        train = self.config.train
        name, bound = ("batch_size", train.batch_size) if train.batch_size else ("max_batch_s", train.max_batch_s)
        for fraction in SMALLER_BATCHES:
            value: float = max(1, math.floor(bound * fraction)) if name == "batch_size" else round(bound * fraction, 1)
            config = copy.deepcopy(self.config)
            setattr(config.train, name, value)
            batch = largest_micro_batch(training_sampler(config, self.train_set),
                                        speed_perturbation=config.data.speed_perturbation)
            if batch.items * batch.samples >= chosen.batch.items * chosen.batch.samples:
                continue  # --min-batch-items holds the batch at its size: a smaller bound saves nothing
            estimate = self.estimate(self.amp, chosen.checkpointing, batch)
            if estimate.peak_bytes <= limit_bytes:
                return Suggestion(estimate.flags(f"--{name.replace('_', '-')} {value:g}"), estimate)
        return None


@dataclass(frozen=True)
class Measurement:
    """What one fake pass of a batch through the model showed (bytes).

    Attributes:
        saved_bytes: the tensors autograd saved for backward, each storage once (0 without gradients).
        peak_bytes: the most memory the pass's own tensors held at once, beyond what it left behind (a
            training pass leaves the parameters' gradients): its activations, its temporaries, the gradients
            flowing back, a checkpointed layer recomputed.
    """

    saved_bytes: int
    peak_bytes: int


def measure_pass(model: SERModel, items: int, samples: int, *, dtype: torch.dtype | None,
                 texts: Sequence[str] = (), training: bool = True, cpu_kernels: bool = True,
                 cached_frames: bool = False) -> Measurement:
    """One pass of ``model`` over ``items`` clips of ``samples`` samples, with fake tensors: a training step's
    forward and backward, or (``training=False``) a validation's forward, in eval mode without gradients; with
    ``cpu_kernels``, the copies the CPU's kernels make inside an operation counted too (``_hidden_copies``); with
    ``cached_frames``, on the encoder's states as ``--feature-cache`` stores them (float16, every state the model
    mixes) instead of the audio, which the model then reads only where it needs it beside them.

    The parameters (``_fake_parameters``) and the waveforms are fake CPU tensors (``FakeTensorMode``: shapes and
    dtypes, no storage), the sample mask a real one (every sample real: a batch of clips as long as its
    longest), so what the model computes from the lengths on the host stays real. Under autocast in ``dtype``.
    Every tensor an operation makes is followed until it is freed (``_LiveMemory``), and every tensor saved for
    backward is counted (``saved_tensors_hooks``).
    """
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    backbone = model.backbone
    frame_count = backbone.frame_count(samples) if cached_frames else 0
    with fake_mode:
        waveforms = torch.empty(items, samples if not cached_frames or model.reads_audio_beside_frames else 0)
        text_embeddings = (torch.empty(items, model.text_encoder.output_dim)
                           if model.text_encoder is not None and not model.needs_texts else None)
        frames = (torch.empty(items, frame_count, backbone.num_layer_states * backbone.output_dim,
                              dtype=CACHED_FRAMES_DTYPE) if cached_frames else None)
    sample_mask = torch.ones(waveforms.shape, dtype=torch.bool)
    frame_mask = torch.ones(items, frame_count, dtype=torch.bool) if cached_frames else None
    texts_in = list(texts) if model.needs_texts else None
    saved = _Storages()  # a saved tensor counts until autograd lets it go (a branch that leads nowhere, freed)
    held: set[int] = set()  # the parameters' and the inputs' storages: saved, but not the pass's own memory

    def pack(tensor: Tensor) -> Tensor:
        if _storage_key(tensor) not in held:
            saved.follow(tensor)
        return tensor

    live = _LiveMemory(cpu_kernels=cpu_kernels)
    autocast = torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    model.train(training)
    # A run's validations score the network alone, and blend it with the floor's predictions computed once.
    floor_left_out = (model.floor_blend.left_out() if model.floor_blend is not None and not training
                      else contextlib.nullcontext())
    try:
        with _fake_parameters(model, fake_mode) as parameters, live, torch.set_grad_enabled(training), floor_left_out:
            inputs = [*parameters, waveforms, sample_mask,
                      *(tensor for tensor in (text_embeddings, frames, frame_mask) if tensor is not None)]
            held.update(_storage_key(tensor) for tensor in inputs)
            with torch.autograd.graph.saved_tensors_hooks(pack, _unpack), autocast:
                output = model(waveforms, sample_mask, frames=frames, frame_mask=frame_mask,
                               text_embeddings=text_embeddings, texts=texts_in)
            saved_bytes = saved.now
            if training:
                parts = [value for value in vars(output).values() if isinstance(value, Tensor)]
                sum(part.float().sum() for part in parts).backward()  # type: ignore[union-attr]
            del output
    finally:
        model.train()
    return Measurement(saved_bytes=saved_bytes, peak_bytes=live.peak - live.now)


class _Storages:
    """The bytes of the storages of the tensors it follows, while any of them lives: a tensor counts until its
    last Python reference goes (a tensor autograd saved lives as long as its graph does), and views count their
    storage once."""

    def __init__(self) -> None:
        self.now = 0
        self._counts: dict[int, list[int]] = {}  # storage → [bytes, live tensors on it]

    def follow(self, tensor: Tensor) -> None:
        key = _storage_key(tensor)
        if key not in self._counts:
            self._counts[key] = [tensor.untyped_storage().nbytes(), 0]
            self.now += self._counts[key][0]
        self._counts[key][1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._counts[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self._counts[key]


class _LiveMemory(TorchDispatchMode):
    """The bytes the tensors operations make while it is active hold now (``now``) and held at most (``peak``),
    with the copies kernels make inside an operation, which no fake tensor shows (``_hidden_copies``; oneDNN's
    only with ``cpu_kernels``)."""

    def __init__(self, *, cpu_kernels: bool) -> None:
        super().__init__()
        self.peak = 0
        self.cpu_kernels = cpu_kernels
        self._storages = _Storages()

    @property
    def now(self) -> int:
        return self._storages.now

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        result = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(result):
            if isinstance(leaf, Tensor):
                self._storages.follow(leaf)
        self.peak = max(self.peak, self.now + _hidden_copies(func, args, result, cpu_kernels=self.cpu_kernels))
        return result


def _hidden_copies(func: Any, args: Any, result: Any, *, cpu_kernels: bool) -> int:
    """The bytes a kernel copies inside ``func`` while its inputs and outputs live: a layer norm's non-contiguous
    input made contiguous, and with ``cpu_kernels`` a convolution's input and output in oneDNN's blocked layout
    (forward and backward)."""
    if cpu_kernels and func is torch.ops.aten.convolution.default:
        return _nbytes(args[0]) + _nbytes(result)
    if cpu_kernels and func is torch.ops.aten.convolution_backward.default:
        return _nbytes(args[0]) + _nbytes(args[1])  # the gradient of the output, the input
    if func is torch.ops.aten.native_layer_norm.default and not args[0].is_contiguous():
        return _nbytes(args[0])
    return 0


def _storage_key(tensor: Tensor) -> int:
    """The storage of ``tensor`` (its ``StorageImpl``, which views share), while it lives."""
    return tensor.untyped_storage()._cdata


def module_bytes(module: nn.Module) -> int:
    """The bytes of ``module``'s parameters and buffers, as stored."""
    return sum(_nbytes(tensor) for tensor in [*module.parameters(), *module.buffers()])


def _unpack(tensor: Tensor) -> Tensor:
    return tensor


def _nbytes(tensor: Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _ready_to_measure(model: SERModel) -> SERModel:
    """``model`` in training mode, with what draws its structure from the data at random turned off
    (``_RANDOM_STRUCTURE``) and the utterance statistics' standardiser marked fitted (its moments are data, which
    a plan's model never sees; their shape is what counts)."""
    model.train()
    for module in model.modules():
        settings = getattr(module, "config", None)
        for name in _RANDOM_STRUCTURE:
            if hasattr(settings, name):
                setattr(settings, name, 0.0)
    if model.utterance_stats is not None:
        model.utterance_stats.standardizer.count.fill_(1)
    return model


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Within the block, every parameter a module registers moves to the meta device: a model is built without
    its weights' memory, while its buffers, and whatever its construction computes from real numbers (a filter
    bank, a receptive field), stay real (and small). A parameter is made (``torch.empty``: memory reserved, never
    touched) before it is registered, and initialised after, on the meta device."""
    register: Callable[..., None] = nn.Module.register_parameter

    def register_on_meta(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


@contextlib.contextmanager
def _fake_parameters(model: nn.Module, fake_mode: FakeTensorMode) -> Iterator[list[Tensor]]:
    """Within the block, every parameter of ``model`` is a fake CPU tensor of its shape (``fake_mode``'s), so that
    the model computes (on shapes) where its meta parameters could not; a parameter shared by several modules
    stays shared. The forward and the backward pass both run inside (a checkpointed layer recomputes in the
    backward). Yields the fake parameters."""
    fakes: dict[int, Tensor] = {}
    swapped: list[tuple[dict[str, Any], str, Any]] = []
    for module in model.modules():
        for name, parameter in module._parameters.items():
            if parameter is None:
                continue
            if id(parameter) not in fakes:
                with fake_mode:
                    fakes[id(parameter)] = torch.empty(parameter.shape, dtype=parameter.dtype).requires_grad_(
                        parameter.requires_grad)
            swapped.append((module._parameters, name, parameter))
    for parameters, name, parameter in swapped:
        parameters[name] = fakes[id(parameter)]
    try:
        yield list(fakes.values())
    finally:
        for parameters, name, parameter in swapped:
            parameters[name] = parameter


@contextlib.contextmanager
def _untouched_random_state() -> Iterator[None]:
    """The global generators (torch's on the CPU, numpy's, Python's) as they were before the block: a run that
    plans its memory draws the same numbers afterwards as one that did not (resume = uninterrupted)."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def resident_bytes() -> int:
    """This process's resident memory now (/proc/self/statm), else its peak so far (``getrusage``)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


def _available_ram() -> int | None:
    """The memory the machine can give a process without swapping: ``MemAvailable`` of /proc/meminfo, else free
    physical pages (``os.sysconf``), None where neither exists."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None
