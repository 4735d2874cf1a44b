"""The typed configuration every command shares.

One ``Config`` holds everything that defines a system. Every field is a command-line flag of
`sertool train` (``model.lr_heads`` → ``--lr-heads``) and a key of a ``--config`` YAML file; flags
override the file, the file overrides the defaults. The resolved config is written into each run folder
and into every checkpoint, so that a checkpoint alone says how it was made.

For numbers that can be switched off, 0 means off (``--patience 0``: never stop early), so that every
value can be given on the command line. Every number declares the values it may take (``Bounds``) next to
its default: the flags, a YAML file and a config built in code are all checked against that one
declaration, and NaN or infinity is never a valid value.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sertool.core.constants import ATTRIBUTES, attribute_subset
from sertool.core.errors import SertoolError
from sertool.core.splits import DEVELOPMENT, TRAIN

# Default model id of each named backbone: a transformers hub id or a local folder may replace it
# through `backbone_path`. `fbank` is sertool's own small encoder, trained from scratch.
DEFAULT_BACKBONE_IDS: dict[str, str | None] = {
    "wavlm": "microsoft/wavlm-large",
    "whisper": "openai/whisper-large-v3",
    "hubert": "facebook/hubert-large-ll60k",
    "wav2vec2": "facebook/wav2vec2-large-robust",
    "fbank": None,
}
# Recipes: defaults for the fields a user leaves unset (neither in --config nor a flag). The field defaults
# below are the paper's (WavLM on MSP-Podcast), the "paper" recipe; "small-cpu" is the fbank encoder's,
# trained from scratch on a few hundred to a few thousand clips on a CPU, chosen from the evidence in
# docs/training.md ("Small corpora on the CPU"). Keys are "section.field" (or a top-level field).
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "small-cpu": {
        "model.head_hidden_dim": 256,     # heads sized for a few hundred clips, not 84k utterances
        "model.head_dropout": 0.2,
        "train.sampling": "whole",        # undersampling to the smallest class leaves a handful of clips an epoch
        "train.max_batch_s": 48.0,
        "train.accum_steps": 1,           # every micro-batch a step: a few hundred clips give ~15 steps an epoch
        "train.lr_heads": 1e-3,           # everything trains from scratch
        "train.patience": 0,              # best.pt is still chosen on validation; see the evidence for why not stop
        "model.floor_blend": True,        # never below the floor on validation; above it on every corpus screened
        # Screened and left off (they lowered Development on some corpus): model.utterance_stats (with or
        # without its dropout), data.speed_perturbation, model.spec_augment, model.fbank_dim 128, and two
        # prototypes that started the network at the floor (a correction of it) instead of blending.
    },
}
# The recipe a backbone gets when --recipe is not given; every backbone not listed gets "paper".
BACKBONE_RECIPES: dict[str, str] = {"fbank": "small-cpu"}
DEFAULT_TEXT_MODEL_ID = "FacebookAI/roberta-large"
DEFAULT_ASR_MODEL_ID = "openai/whisper-large-v3"  # transcribes utterances without a transcript (MM systems)
DEFAULT_QUANTIZE = "off"
QUANTIZE_INT8 = "int8"  # dynamic int8 quantisation of the speech backbone (sertool.acceleration.cpu)
QUANTIZE_CHOICES = (DEFAULT_QUANTIZE, QUANTIZE_INT8)  # inference's --quantize
# The shortest audio a model is given: WavLM's CNN front end makes one frame per 20 ms, so 0.25 s gives about
# 12 frames, the fewest over which a pooled mean and standard deviation still describe the speech.
MIN_DURATION_S = 0.25
# `predict`'s windows (the CLI's --window-s / --hop-s and the API's defaults): about the length of the
# training utterances, half overlapping.
DEFAULT_WINDOW_S = 10.0
DEFAULT_HOP_S = 5.0
# Choice lists that more than one place offers (a Config field and an inference flag, or a check elsewhere).
DEFAULT_EVAL_BATCH_S = 120.0  # padded seconds per inference batch; no gradients, so larger than training's
DEFAULT_DEVICE = "auto"  # this process's GPU when CUDA is available, else the CPU
DEVICE_CHOICES = (DEFAULT_DEVICE, "cpu", "cuda")
DEFAULT_AMP = "auto"  # bf16, or fp16 on older GPUs; off on the CPU
AMP_CHOICES = (DEFAULT_AMP, "bf16", "fp16", "off")  # sertool.runtime.precision.resolve_amp gives their dtypes
SCHEDULES = ("cosine", "plateau", "constant")  # sertool.training.optim.LRSchedule implements them
# Where a speech encoder's LoRA adapters go (`lora_placement`; sertool.models.lora.SpeechLoRA places them).
LORA_PLACEMENTS = ("qv", "ffn", "release")
OX_BALANCES = ("classes", "whole", "one-class")  # sertool.training.setup_run maps them onto the undersampler
BAD_AUDIO_POLICIES = ("skip", "fail")
# The floor's features (`sertool baseline --features`): sertool's log-mel statistics, or openSMILE's eGeMAPSv02
# (88) or ComParE_2016 (6,373) functionals, the field's usual linear baselines (sertool.models.floor_features).
DEFAULT_FLOOR_FEATURES = "logmel"
FLOOR_FEATURES = (DEFAULT_FLOOR_FEATURES, "egemaps", "compare")
# Values of `train_ox` (--train-ox): what happens to the training split's utterances, O/X or not
# (sertool.data.selection.select applies them).
TRAIN_OX_CHOICES = ("keep", "drop", "only", "drop-as-many-non-ox")


@dataclass(frozen=True)
class Bounds:
    """The values a number may take. It must be finite, and within every limit that is not None.

    ``zero`` also allows exactly 0 where 0 means "off" (``--max-duration-s 0``: whole clips), below a
    lower limit that the number must otherwise respect.
    """

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    zero: bool = False

    def problem(self, value: float) -> str | None:
        """Why ``value`` is not allowed (``"must be in [0, 1)"``), or None when it is."""
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.zero and value == 0:
            return None
        if ((self.at_least is not None and value < self.at_least) or (self.above is not None and value <= self.above)
                or (self.at_most is not None and value > self.at_most)
                or (self.below is not None and value >= self.below)):
            return f"must be {self.describe()}"
        return None

    def describe(self) -> str:
        """The allowed values in words a user can act on: ``≥ 1``, ``> 0``, ``in [0, 1)``, ``0 or ≥ 0.25``."""
        closed_low, closed_high = self.at_least is not None, self.at_most is not None
        low = self.at_least if closed_low else self.above
        high = self.at_most if closed_high else self.below
        if low is not None and high is not None:
            text = f"in {'[' if closed_low else '('}{_number(low)}, {_number(high)}{']' if closed_high else ')'}"
        elif low is not None:
            text = f"{'≥' if closed_low else '>'} {_number(low)}"
        elif high is not None:
            text = f"{'≤' if closed_high else '<'} {_number(high)}"
        else:
            text = "finite"
        return f"0 or {text}" if self.zero else text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# The usual bounds, by what the number is.
POSITIVE = Bounds(above=0)
NON_NEGATIVE = Bounds(at_least=0)  # counts and sizes where 0 means "off"
AT_LEAST_ONE = Bounds(at_least=1)
PROBABILITY = Bounds(at_least=0, below=1)  # dropout and shares: 1 would drop or spend everything
SEED = Bounds(at_least=0, at_most=2**63 - 1)  # numpy needs a non-negative seed; torch takes 64 bits
# Upper limits where a value past them is never meant and would do harm before any check could: a process per
# loader worker (a fork bomb), a thread per CPU thread, a layer width whose weights fill the memory.
WORKERS = Bounds(at_least=0, at_most=256)
THREADS = Bounds(at_least=0, at_most=1024)
THREADS_HELP = "CPU threads for torch (0: one per core). Fewer suit a machine shared with other work."  # --threads
WIDTH = Bounds(at_least=1, at_most=16_384)  # one 16,384 × 16,384 float32 layer is 1 GiB already


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, flag: str | None = None,
           bounds: Bounds | None = None, path: str | None = None, resumable: bool = False,
           metavar: str | None = None, required: bool = False, many: bool = False,
           argument: str | None = None) -> Any:
    """A field of the config or of a command's options, with its command-line flag: every command's flags are
    made from these declarations (``sertool.cli.flags``).

    Args:
        default: the value when neither a file nor a flag sets it.
        help: one or two sentences for ``--help`` and the docs.
        choices: the allowed strings.
        flag: a flag name other than the field's.
        bounds: the allowed values of a number (every int and float field has them).
        path: ``"path"`` for a file or folder, ``"path or hub id"`` for a model that is a local folder or a
            hub id: a relative path is stored absolute, so that a run resumes from any working directory.
        resumable: ``train --resume`` may set it again (where the data is, how it is read, how the job waits;
            never what is trained).
        metavar: how ``--help`` names the value (e.g. ``CSV``); command options only.
        required: the flag must be given (command options only; a config field always has a default).
        many: a comma-separated list of numbers (``--weights 0.6,0.4``); command options only.
        argument: the value may be given as this positional argument instead of the flag (``sertool data info
            ROOT`` or ``--corpus ROOT``); one of the two is needed. Command options only.
    """
    metadata = {"help": help, "choices": choices, "flag": flag, "bounds": bounds, "path": path,
                "resumable": resumable, "metavar": metavar, "required": required, "many": many,
                "argument": argument}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DataConfig:
    """Which corpus, which utterances, and how they are read."""

    corpus: str | None = option(None, "MSP-Podcast root, manifest CSV, or folder holding manifest.csv.",
                                path="path", resumable=True)
    train_split: str = option(TRAIN, "Split to train on.")
    valid_split: str = option(DEVELOPMENT, "Split to validate on (model selection).")
    max_duration_s: float = option(0.0, "Random crop of training clips to this many seconds (0: whole clips). "
                                   "Evaluation always uses whole utterances.",
                                   bounds=Bounds(at_least=MIN_DURATION_S, zero=True))
    speed_perturbation: float = option(0.0, "Training only: each clip, each epoch, plays at speed 1 - x, 1 or "
                                       "1 + x (pitch and tempo together; 3-way speed perturbation). 0: off.",
                                       bounds=Bounds(at_least=0, below=0.5))
    train_ox: str = option("keep", "O/X (other, no agreement) samples of the training split: keep, drop, only (drop "
                           "every non-O/X sample), or drop-as-many-non-ox (drop a random set of non-O/X samples as "
                           "large as the O/X set).", choices=TRAIN_OX_CHOICES)
    dev_ox_to_train: bool = option(False, "Add the O/X samples of the validation split to training; they then "
                                   "leave validation.")
    on_bad_audio: str = option("skip", "Unreadable training audio: skip it (and count it) or fail before training.",
                               choices=BAD_AUDIO_POLICIES)
    num_workers: int = option(2, "Data-loader processes.", bounds=WORKERS, resumable=True)
    asr: str = option(DEFAULT_ASR_MODEL_ID, "Whisper model (hub id or folder) that transcribes utterances without a "
                      "transcript, for MM (--text) systems.", path="path or hub id")
    cache_dir: str | None = option(None, "Cache of corpus scans (durations, transcripts), text embeddings and ASR "
                                   "transcripts (default: $SERTOOL_CACHE or ~/.cache/sertool).", path="path",
                                   resumable=True)
    feature_cache: str | None = option(None, "Folder of cached hidden states of a frozen pretrained encoder (Whisper, "
                                       "or --backbone wavlm, hubert, wav2vec2 with --freeze-backbone; no LoRA in "
                                       "it): every layer with --layer-weighting weighted, the last with last, "
                                       "computed once per audio file before the first epoch, then read instead of "
                                       "running the encoder: a step runs the layer weights, pooling and heads. "
                                       "float16 on disk: 3.6 GB per hour of audio for WavLM-Base+'s 13 layers, "
                                       "0.46 GB for Whisper large-v3's last layer. Other systems say so and "
                                       "recompute. Default: off.", path="path", resumable=True)


@dataclass
class ModelConfig:
    """The system: speech backbone, optional text branch, pooling, heads and auxiliary tasks."""

    backbone: str = option("wavlm", "Speech backbone.", choices=tuple(DEFAULT_BACKBONE_IDS))
    backbone_path: str | None = option(None, "Hub id or local folder of the backbone (default: the backbone's "
                                       "usual id, e.g. microsoft/wavlm-large).", path="path or hub id")
    layer_weighting: str = option("weighted", "Learnable softmax-weighted sum of all hidden layers, or the last "
                                  "layer only.", choices=("weighted", "last"))
    freeze_backbone: bool | None = option(None, "Freeze the speech backbone (default: the paper's choice: WavLM "
                                          "fine-tuned, Whisper frozen).")
    freeze_feature_encoder: bool = option(True, "Keep the CNN front end of wav2vec2-family models frozen.")
    lora_rank: int = option(0, "LoRA adapters of this rank on the frozen speech encoder (0: none); with --text "
                            "also on the text encoder unless --text-lora-rank is given. Refused where it would "
                            "adapt nothing.", bounds=Bounds(at_least=0, at_most=WIDTH.at_most))
    text_lora_rank: int | None = option(None, "LoRA adapters of this rank on the text encoder's attention query/value "
                                        "(--text; 0: none, the encoder frozen and its embeddings cached). Default: "
                                        "--lora-rank.", bounds=Bounds(at_least=0, at_most=WIDTH.at_most))
    lora_placement: str | None = option(None, "Where the speech encoder's LoRA adapters go: qv (attention query and "
                                        "value of every layer), ffn (both feed-forward layers of every layer) or "
                                        "release (the feed-forward layers of the layers above half, alpha 1: the "
                                        "authors' released models). Default: qv for Whisper, ffn for WavLM, HuBERT "
                                        "and wav2vec2.", choices=LORA_PLACEMENTS)
    lora_alpha: float | None = option(None, "LoRA scale numerator: the update is scaled by alpha / rank (default: 1 "
                                      "for --lora-placement release's adapters, else 16).", bounds=POSITIVE)
    whisper_window_s: float = option(0.0, "Whisper only: pad every clip to this many seconds and let its frames attend "
                                     "to the padding, as the authors' released Whisper model (15); 0: each clip at its "
                                     "real length, padding masked.", bounds=NON_NEGATIVE)
    text: bool = option(False, "MM system: concatenate an embedding of the transcript.")
    text_model: str = option(DEFAULT_TEXT_MODEL_ID, "Hub id or local folder of the (frozen) text encoder.",
                             path="path or hub id")
    pooling: str = option("attentive", "Attentive statistics (weighted mean ⊕ std) or mean pooling.",
                          choices=("attentive", "mean"))
    projection_dim: int = option(0, "Pointwise projection of the frames before pooling: three 1x1 convolutions to "
                                 "this width with ReLU between, as the authors' released models (256); 0: none.",
                                 bounds=Bounds(at_least=0, at_most=WIDTH.at_most))
    head_hidden_dim: int = option(1024, "Hidden width of every head.", bounds=WIDTH)
    head_dropout: float = option(0.5, "Dropout in every head.", bounds=PROBABILITY)
    head_norm: bool = option(True, "LayerNorm after each head's hidden layer (the challenge baseline's heads); "
                             "--no-head-norm: Linear, ReLU, Linear, as the authors' released models.")
    head_output: str = option("sigmoid", "Emotion head output: sigmoid keeps predictions inside the 1..7 scale (as "
                              "the authors' released models); linear is the challenge baseline's.",
                              choices=("sigmoid", "linear"))
    aux: tuple[str, ...] = option((), "Auxiliary task(s): gender, speaker (repeat the flag for both).",
                                  choices=("gender", "speaker"))
    aux_weight: float = option(0.1, "β: total loss = α · CCC loss + β · auxiliary losses.", bounds=NON_NEGATIVE)
    emotion_weight: float = option(1.0, "α of the total loss.", bounds=POSITIVE)
    aam_margin: float = option(0.2, "Additive angular margin of the speaker-ID head (radians).",
                               bounds=Bounds(at_least=0, at_most=1))
    aam_scale: float = option(30.0, "Scale of the speaker-ID head's AAM-softmax.", bounds=POSITIVE)
    speaker_embedding: str | None = option(None, "Hub id or folder of a speaker model (e.g. a WavLMForXVector) "
                                           "whose embedding is concatenated (+S Emb); log-mel-stats: a "
                                           "parameter-free stand-in (demo scale).", path="path or hub id")
    utterance_stats: bool = option(False, "Concatenate the utterance's raw log-mel statistics (the baseline's "
                                   "features: level, spectral balance, their spread; standardised over the training "
                                   "clips) to the pooled representation: a wide path beside the encoder.")
    utterance_stats_dropout: float = option(0.0, "With utterance_stats: the probability that a training clip's "
                                            "statistics are replaced by the training mean (the heads must also "
                                            "learn from the encoder).", bounds=PROBABILITY)
    floor_blend: bool = option(False, "Blend the network with the floor: fit `sertool baseline`'s ridge before the "
                               "first step (alpha chosen on the validation split) and predict, per attribute, "
                               "w · network + (1 − w) · ridge, w chosen on the validation split at every validation "
                               "(stored in the checkpoint); the heads train alone.")
    floor_blend_confidence: float = option(0.8, "With floor_blend: the network's weight is the one whose CCC gain over "
                                           "the floor is largest in this share of resamples of the validation "
                                           "split's speakers (0.5: the median gain); the floor alone when no "
                                           "weight gains there.", bounds=Bounds(at_least=0.5, below=1))
    fbank_dim: int = option(256, "Width of the built-in fbank encoder.", bounds=WIDTH)
    spec_augment: bool = option(False, "fbank only: while training, SpecAugment masks on the log-mel input (2 bands "
                                "of up to 8 mel bins and 2 spans of up to 10 % of the frames, per clip).")

    def text_adapter_rank(self) -> int:
        """The rank of the text encoder's LoRA adapters: 0 without ``text``; ``text_lora_rank``, or ``lora_rank``
        where that is None (what ``lora_rank`` alone has always meant, so older configs keep their model)."""
        if not self.text:
            return 0
        return self.lora_rank if self.text_lora_rank is None else self.text_lora_rank


@dataclass
class TrainConfig:
    """The optimisation: sampling, batching, optimiser, schedule, precision, validation."""

    init_from: str | None = option(None, "Start from the weights of this model: a run folder, checkpoint, model folder "
                                   "or hub id (e.g. an authors' released model). Its model section replaces the "
                                   "defaults; --config and model flags still apply on top.", path="path or hub id")
    epochs: int = option(20, "Epochs (with undersampling, each is a fresh class-balanced subset); 0: no epoch "
                         "limit (then --max-steps sets the length).",
                         bounds=Bounds(at_least=1, at_most=10_000, zero=True))
    max_steps: int = option(0, "Budget in optimiser steps: stop after this many, whichever of --epochs and this "
                            "comes first; the LR schedule spans the budget (0: epochs only).", bounds=NON_NEGATIVE)
    sampling: str = option("undersample", "undersample: a fresh class-balanced subset every epoch (the paper); "
                           "whole: every utterance; weighted: inverse class frequency.",
                           choices=("undersample", "whole", "weighted"))
    max_per_class: int = option(0, "Undersampling: cap each class at this many (0: the smallest class' size); "
                                "ignored by the other samplings.", bounds=NON_NEGATIVE)
    ox_balance: str = option("classes", "Undersampling, O (other) and X (no agreement): classes: two more classes, "
                             "each cut to the smallest class like the emotions; whole: every O/X utterance in every "
                             "epoch, outside the balance; one-class: O and X together as ONE class, their union cut "
                             "to the same count as each emotion.", choices=OX_BALANCES)
    ox_outside_balance: bool = option(False, "Deprecated alias of --ox-balance whole (older configs); refused "
                                      "together with --ox-balance one-class.")
    max_batch_s: float = option(64.0, "Micro-batch bound: utterances × longest clip ≤ this many seconds.",
                                bounds=NON_NEGATIVE)
    min_batch_items: int = option(8, "Fewest utterances per --max-batch-s micro-batch, even where that exceeds "
                                  "--max-batch-s (the CCC loss needs enough items; 0: no lower bound).",
                                  bounds=NON_NEGATIVE)
    batch_size: int = option(0, "Fixed-size random micro-batches instead of --max-batch-s (0: off).",
                             bounds=NON_NEGATIVE)
    num_buckets: int = option(20, "Equal-mass duration buckets of --max-batch-s batching.",
                              bounds=Bounds(at_least=1, at_most=10_000))
    accum_steps: int = option(4, "Micro-batches per optimiser step (gradient accumulation).",
                              bounds=Bounds(at_least=1, at_most=4096))
    lr_backbone: float = option(1e-5, "AdamW learning rate of pretrained encoders (the challenge baseline's).",
                                bounds=NON_NEGATIVE)
    lr_heads: float = option(2e-4, "AdamW learning rate of what trains from scratch (heads, pooling, layer "
                             "weights, the fbank encoder).", bounds=NON_NEGATIVE)
    lr_lora: float | None = option(None, "AdamW learning rate of the LoRA adapters (--lora-rank, --text-lora-rank; "
                                   "default: --lr-backbone).", bounds=NON_NEGATIVE)
    weight_decay: float = option(1e-4, "AdamW weight decay.", bounds=NON_NEGATIVE)
    schedule: str = option("cosine", "After warm-up: cosine decay, halve on a plateau, or constant.",
                           choices=SCHEDULES)
    warmup_fraction: float = option(0.05, "Share of optimiser steps spent warming up linearly.", bounds=PROBABILITY)
    grad_clip_norm: float = option(1.0, "Clip the gradient norm to this (0: off).", bounds=NON_NEGATIVE)
    amp: str = option(DEFAULT_AMP, "Mixed precision: auto (bf16, or fp16 on older GPUs; off on the CPU), bf16, "
                      "fp16, off.", choices=AMP_CHOICES)
    gradient_checkpointing: bool = option(False, "Recompute backbone activations in backward: less memory, "
                                          "~30 % slower.")
    eval_every_steps: int = option(0, "Validate every N optimiser steps (0: once per epoch).", bounds=NON_NEGATIVE)
    patience: int = option(5, "Stop after this many validations without improvement (0: never).",
                           bounds=NON_NEGATIVE)
    select_best: str = option("average", "Keep best.pt by average CCC; per-attribute also keeps best_<attribute>.pt.",
                              choices=("average", "per-attribute"))
    attributes: tuple[str, ...] = option(ATTRIBUTES, "The attributes this system predicts, e.g. valence, or "
                                         "arousal,dominance (a separate system per attribute, the paper's future "
                                         "work): the model has a head for each, and the CCC loss, best.pt and early "
                                         "stopping use them alone (their average CCC). sertool ensemble joins "
                                         "systems of different attributes.", choices=ATTRIBUTES)
    max_nonfinite_steps: int = option(5, "Stop after this many optimiser steps in a row with a non-finite loss or "
                                      "gradient.", bounds=AT_LEAST_ONE)
    checkpoint_every_steps: int = option(0, "Also write last.pt every N optimiser steps (0: at validations).",
                                         bounds=NON_NEGATIVE)
    log_every_steps: int = option(10, "Write a metrics.jsonl line every N optimiser steps.", bounds=AT_LEAST_ONE)
    ddp_timeout_s: int = option(7200, "Under torchrun: how long a rank waits for the others at a collective (e.g. "
                                "while rank 0 writes a checkpoint) before the job fails. The set-up's waits (cache "
                                "fills) have no limit.", bounds=Bounds(at_least=1, at_most=7 * 24 * 3600),
                                resumable=True)

    def attribute_names(self) -> tuple[str, ...]:
        """``attributes`` in ``ATTRIBUTES`` order, the order of the model's heads and of its outputs.

        Raises:
            SertoolError: no attribute, or one given twice.
        """
        try:
            return attribute_subset(self.attributes)
        except ValueError as error:
            raise SertoolError(f"train.attributes (--attributes): {error}") from None

    def ox_balance_mode(self) -> str:
        """The effective ``ox_balance``: ``ox_outside_balance: true`` (the older key) means ``whole``.

        Raises:
            SertoolError: the older key asks for ``whole`` while ``ox_balance`` asks for ``one-class``.
        """
        if not self.ox_outside_balance:
            return self.ox_balance
        if self.ox_balance == "one-class":
            raise SertoolError("train.ox_outside_balance (--ox-outside-balance) keeps O/X whole, but "
                               "train.ox_balance (--ox-balance) is one-class: give only --ox-balance")
        return "whole"


@dataclass
class Config:
    """Everything that defines a run. ``seed`` makes it reproducible."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = option(0, "Seed of initialisation, sampling and crops.", bounds=SEED)
    recipe: str | None = option(None, "Defaults for every field not set by --config or a flag: small-cpu (the "
                                "fbank encoder on a small corpus), paper (the paper's, WavLM on MSP-Podcast). "
                                "sertool train picks the backbone's recipe when not given (fbank: small-cpu, "
                                "others: paper) and records it.", choices=tuple(RECIPES))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (only str, int, float, bool, None, lists, dicts): safe to store anywhere."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config", base: "Config | None" = None) -> "Config":
        """Inverse of ``to_dict``; missing keys take their values in ``base`` (default: the defaults).

        Raises:
            SertoolError: an unknown key or a value of the wrong type, naming the key and ``source``.
        """
        config = copy.deepcopy(base) if base is not None else cls()
        for section, key, value in _walk(data, source):
            apply_value(config, section, key, value, source=source)
        return config

    @classmethod
    def from_yaml(cls, path: str | Path, *, base: "Config | None" = None) -> "Config":
        """Read a ``--config`` file (the ``config.yaml`` of a run folder is one); keys it leaves out take
        their values in ``base`` (default: the defaults). UTF-8, with or without a byte-order mark, and
        UTF-16 with one (what Windows editors and PowerShell write) are read.

        Raises:
            SertoolError: the file is missing, not YAML, or holds an unknown key, a wrong type or a value
                outside its bounds.
        """
        return cls.from_dict(read_config_file(path), source=f"--config {path}", base=base)

    def check(self, *, source: str = "config") -> None:
        """Check every field's type, choices and bounds: a config built in code has not been through the
        checks of ``from_dict`` and the flags.

        Raises:
            SertoolError: naming the first bad key and ``source``.
        """
        for option_ in config_options():
            _coerce(option_, self.get(option_.key), f"{source}: {option_.key}")
        self.train.ox_balance_mode()  # the older key and the new one must agree, before any data is read
        _check_lora(self)
        self.train.attribute_names()

    def with_absolute_paths(self) -> "Config":
        """A copy whose relative paths (``path`` options) are absolute, from the current directory, so that
        a run folder's config holds wherever the run is continued from. A model option is changed only
        when it names a local file or folder; a hub id stays as it is."""
        config = copy.deepcopy(self)
        for option_ in config_options():
            value = config.get(option_.key)
            if value is None or option_.path is None:
                continue
            local = Path(value).expanduser()
            if option_.path == "path" or local.exists():
                apply_value(config, option_.section, option_.name, os.path.abspath(local), source="config")
        return config

    def get(self, key: str) -> Any:
        """The value of ``key`` (``train.lr_heads``, or ``seed``)."""
        section, _, name = key.rpartition(".")
        return getattr(getattr(self, section) if section else self, name)


def _check_lora(config: Config) -> None:
    """LoRA options that would adapt nothing are refused, not ignored. What needs the backbone's frozen
    state (LoRA on a fine-tuned encoder) is refused where the backbone is built
    (``sertool.models.backbones.build_backbone``).

    Raises:
        SertoolError: ``--text-lora-rank`` without ``--text``, ``--lora-placement`` without ``--lora-rank``,
            ``--lr-lora`` without any adapter.
    """
    model = config.model
    if model.text_lora_rank and not model.text:
        raise SertoolError(f"--text-lora-rank {model.text_lora_rank} adapts the text encoder, and there is none: add "
                           "--text, or drop --text-lora-rank")
    if model.lora_placement is not None and not model.lora_rank:
        raise SertoolError(f"--lora-placement {model.lora_placement} places the speech encoder's LoRA adapters, and "
                           "--lora-rank is 0: give --lora-rank, or drop --lora-placement")
    if config.train.lr_lora is not None and not model.lora_rank and not model.text_adapter_rank():
        raise SertoolError(f"--lr-lora {config.train.lr_lora:g}: there are no LoRA adapters to train (--lora-rank and "
                           "--text-lora-rank are 0): give a rank, or drop --lr-lora")


def differences(a: Config, b: Config) -> list[str]:
    """The keys (``train.lr_heads``) whose values differ between ``a`` and ``b``, in declaration order."""
    return [o.key for o in config_options() if a.get(o.key) != b.get(o.key)]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a ``--config`` YAML file, unchecked (``Config.from_dict`` checks it). UTF-8, with or
    without a byte-order mark, and UTF-16 with one (what Windows editors and PowerShell write) are read.

    Raises:
        SertoolError: the file is missing, not YAML, or not a mapping.
    """
    import yaml

    from sertool.guards.reads import MAX_CONFIG_BYTES, read_user_bytes

    # Bytes, not text: PyYAML then decodes by the byte-order mark itself.
    raw = read_user_bytes(path, what="config file (--config)", max_bytes=MAX_CONFIG_BYTES)
    try:
        data = yaml.safe_load(raw) or {}
    except yaml.YAMLError as error:
        raise SertoolError(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise SertoolError(f"--config {path}: the top level must be a mapping of sections")
    return data


def config_keys(data: dict[str, Any], *, source: str = "config") -> set[tuple[str | None, str]]:
    """The ``(section, key)`` pairs a config mapping sets (``(None, "seed")`` for top-level keys)."""
    return {(section, key) for section, key, _ in _walk(data, source)}


def apply_recipe(config: Config, *, given: set[tuple[str | None, str]]) -> str:
    """Fill the fields not in ``given`` with the recipe's values, and record the recipe in ``config.recipe``.

    The recipe is ``config.recipe`` when set (``--recipe``), else the backbone's (``BACKBONE_RECIPES``).

    Args:
        config: the config after ``--config`` and the flags.
        given: the ``(section, key)`` pairs the user set (in the file or as flags); they are never changed.

    Returns:
        The recipe's name.
    """
    name = config.recipe or BACKBONE_RECIPES.get(config.model.backbone, "paper")
    for key, value in RECIPES[name].items():
        section, _, field_name = key.rpartition(".")
        if (section or None, field_name) not in given:
            apply_value(config, section or None, field_name, value, source=f"recipe {name}")
    config.recipe = name
    return name


@dataclass(frozen=True)
class ConfigOption:
    """One field of the config, or of a command's options, seen as a command-line option (see ``option``)."""

    section: str | None  # "data", "model", "train" (the nested dataclass's field), or None for top-level fields
    name: str
    flag: str
    type: Any  # int, float, str, bool, tuple (a list of names) or list (of numbers)
    default: Any
    help: str
    choices: tuple[str, ...] | None
    optional: bool  # the field accepts None
    bounds: Bounds | None  # for int and float fields, and the items of a list
    path: str | None  # "path", "path or hub id", or None (see ``option``)
    resumable: bool  # `train --resume` may set it again
    metavar: str | None = None
    required: bool = False
    many: bool = False  # a comma-separated list of numbers on the command line
    argument: str | None = None  # the positional argument that may stand for the flag
    item: Any = None  # a list's items: int or float
    length: int | None = None  # a list of exactly this many numbers (``--label-range LOW HIGH``: 2)

    @property
    def key(self) -> str:
        """The YAML key with its section: ``train.lr_heads``."""
        return f"{self.section}.{self.name}" if self.section else self.name


def check_options(options: Any, *, source: str | None) -> None:
    """Check every field of an options dataclass built in code (``InferenceOptions``, ``PredictOptions``, ...; a
    ``Config`` checks itself with ``Config.check``) against its declaration: type, choices and bounds, the
    declaration the command-line flags are built from, so the Python API and the CLI accept the same values.

    Args:
        options: the dataclass; nested options dataclasses are checked too.
        source: how the message names where the values came from ("sertool.load"); None: name each field by
            its flag (the command line).

    Raises:
        SertoolError: naming ``source``, the first bad field and the values it allows.
    """
    for spec in dataclasses.fields(options):
        value = getattr(options, spec.name)
        if "help" not in spec.metadata:  # a nested options dataclass
            check_options(value, source=source)
        else:
            check_value(type(options), spec.name, value, source=source)


def check_value(owner: type, name: str, value: Any, *, source: str | None) -> Any:
    """``value`` checked against the declaration of field ``name`` of the options dataclass ``owner``, and
    returned (an int where a float is declared is widened).

    Raises:
        SertoolError: naming ``source`` and ``name``, and the values the field allows.
    """
    option_ = _field_option(owner, name)
    where = f"{source}: {name}" if source is not None else option_.flag
    if option_.type is list:  # a list of numbers (ensemble --weights, data manifest --label-range)
        if value is None and option_.optional:
            return None
        if not isinstance(value, (list, tuple)):
            raise SertoolError(f"{where} must be a list of numbers, got {value!r}")
        if option_.length is not None and len(value) != option_.length:
            raise SertoolError(f"{where} must be {option_.length} numbers, got {value!r}")
        item = dataclasses.replace(option_, type=option_.item, optional=False)
        checked = [_coerce(item, entry, f"{where}[{index}]") for index, entry in enumerate(value)]
        return tuple(checked) if isinstance(value, tuple) else checked
    return _coerce(option_, value, where)


@functools.lru_cache(maxsize=None)
def _field_option(owner: type, name: str) -> ConfigOption:
    """Field ``name`` of the dataclass ``owner`` as a ``ConfigOption`` (what ``_coerce`` checks against)."""
    spec = next(spec for spec in dataclasses.fields(owner) if spec.name == name)
    return _as_option(spec, typing.get_type_hints(owner)[name], None)


def config_options() -> list[ConfigOption]:
    """Every field of ``Config`` as a command-line option, in declaration order."""
    return field_options(Config)


def field_options(owner: type) -> list[ConfigOption]:
    """Every field of the options dataclass ``owner`` (``Config``, ``EvaluateOptions``, ...) as a command-line
    option, in declaration order; the fields of a nested options dataclass (a config section, the shared
    inference options) in its place, their ``section`` the name of the field that holds it."""
    return list(_field_options(owner, None))


@functools.lru_cache(maxsize=None)
def _field_options(owner: type, section: str | None) -> tuple[ConfigOption, ...]:
    hints = typing.get_type_hints(owner)
    options: list[ConfigOption] = []
    for spec in dataclasses.fields(owner):
        if "help" in spec.metadata:
            options.append(_as_option(spec, hints[spec.name], section))
        else:  # a nested options dataclass
            assert callable(spec.default_factory), f"{owner.__name__}.{spec.name}: a nested dataclass needs a factory"
            options.extend(_field_options(spec.default_factory, spec.name))  # type: ignore[arg-type]
    return tuple(options)


def _as_option(spec: dataclasses.Field, hint: Any, section: str | None) -> ConfigOption:
    kind, optional = _base_type(hint)
    item, length = _number_list(hint) if kind is list else (None, None)
    default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
    metadata = spec.metadata
    return ConfigOption(section, spec.name, metadata.get("flag") or "--" + spec.name.replace("_", "-"), kind, default,
                        metadata["help"], metadata.get("choices"), optional, metadata.get("bounds"),
                        metadata.get("path"), metadata.get("resumable", False), metadata.get("metavar"),
                        metadata.get("required", False), metadata.get("many", False), metadata.get("argument"),
                        item, length)


def apply_value(config: Config, section: str | None, key: str, value: Any, *, source: str) -> None:
    """Set ``config.<section>.<key> = value`` after checking the key, the type, the choices and the bounds.

    Raises:
        SertoolError: naming ``source`` and the key.
    """
    option_ = _options_by_key().get((section, key))
    where = f"{section}.{key}" if section else key
    if option_ is None:
        raise SertoolError(f"{source}: {_unknown_key(section, key)}")
    value = _coerce(option_, value, f"{source}: {where}")
    setattr(getattr(config, section) if section else config, key, value)


def _unknown_key(section: str | None, key: Any) -> str:
    """What to say of an unknown ``key`` in ``section`` (None: the top level): where the key belongs when it
    is a known key of another level, else the closest known key here (a typo); then every known key here
    (at the top level: the sections and the top-level fields)."""
    fields = sorted(o.name for o in config_options() if o.section == section)
    elsewhere = [o for o in config_options() if o.name == key and o.section != section]
    close = difflib.get_close_matches(str(key), [*_SECTIONS, *fields] if section is None else fields, n=1)
    if elsewhere:
        hint = "; it belongs " + " or ".join(f"under {o.section}: ({o.key})" if o.section else "at the top level"
                                             for o in elsewhere) + "."
    else:
        hint = f"; did you mean {close[0]}?" if close else "."
    known = (f"the sections {', '.join(_SECTIONS)} and the fields {', '.join(fields)}" if section is None
             else ", ".join(fields))
    return (f"unknown key {f'{section}.{key}' if section else key}{hint} Known "
            f"{f'in {section}' if section else 'at the top level'}: {known}")


def _coerce(option_: ConfigOption, value: Any, where: str) -> Any:
    """A value read from YAML or a flag → the option's type, or a SertoolError naming ``where``."""
    if value is None:
        if option_.optional:
            return None
        raise SertoolError(f"{where} cannot be empty")
    value = _coerce_names(value, where) if option_.type is tuple else _coerce_scalar(option_, value, where)
    if option_.path == "path or hub id":
        _check_model_location(value, where)
    bad = [item for item in (value if option_.type is tuple else (value,))
           if option_.choices and item not in option_.choices]
    if bad:
        raise SertoolError(f"{where}: {', '.join(map(str, bad))} is not one of {', '.join(option_.choices or ())}")
    return value


def _coerce_names(value: Any, where: str) -> tuple[str, ...]:
    """A list option: one name or a list of names."""
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) for item in items):
        raise SertoolError(f"{where} must be a list of names, got {value!r}")
    for item in items:
        check_text(item, where)
    return tuple(items)


def _coerce_scalar(option_: ConfigOption, value: Any, where: str) -> Any:
    """A bool, int, float or str option: its exact type (an int where a float is asked is widened), in bounds."""
    if option_.type is bool and not isinstance(value, bool):
        raise SertoolError(f"{where} must be true or false, got {value!r}")
    if option_.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, option_.type) or (option_.type is int and isinstance(value, bool)):
        raise SertoolError(f"{where} must be {option_.type.__name__}, got {value!r}")
    problem = option_.bounds.problem(value) if option_.bounds is not None and option_.type is not bool else None
    if problem:
        raise SertoolError(f"{where} {problem}, got {value!r}")
    if isinstance(value, str):
        check_text(value, where)
    return value


def check_text(value: str, where: str) -> None:
    """No option's or argument's text may hold a NUL byte: no file, split or model is named with one (and the OS
    refuses it)."""
    if "\0" in value:
        raise SertoolError(f"{where} {value!r}: cannot hold a NUL byte")


def _check_model_location(value: str, where: str) -> None:
    """A hub id or folder: refuse what can only be a mistake, before any model is loaded.

    The classic is an inline YAML comment written without a space before ``#`` (``text_model: x# comment``):
    YAML then keeps the comment as part of the value, and the run fails only when it loads the model.
    """
    if value != value.strip() or not value:
        raise SertoolError(f"{where} {value!r}: a model id or folder cannot be empty or start or end with spaces")
    if "#" in value and not Path(value).expanduser().exists():
        raise SertoolError(f"{where} {value!r}: not a model id or folder. An inline YAML comment needs a space "
                           "before '#' (`key: value  # comment`), or YAML keeps it as part of the value")


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _walk(data: dict[str, Any], source: str):
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise SertoolError(f"{source}: section {key} must be a mapping")
            for inner_key, inner_value in value.items():
                yield key, inner_key, inner_value
        else:
            yield None, key, value


def _base_type(hint: Any) -> tuple[Any, bool]:
    """A field's type as an option sees it: ``tuple`` for a list of names (``tuple[str, ...]``), ``list`` for a
    list of numbers (``list[float]``, or ``tuple[float, float]``), else the type itself; and whether None is
    allowed."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    optional = type(None) in typing.get_args(hint)
    inner = args[0] if optional else hint
    origin = typing.get_origin(inner)
    if origin is tuple:
        return (tuple if Ellipsis in typing.get_args(inner) else list), optional
    return (list if origin is list else inner), optional


def _number_list(hint: Any) -> tuple[Any, int | None]:
    """The item type of a list of numbers, and its length when fixed (``tuple[float, float]``: float, 2)."""
    optional = type(None) in typing.get_args(hint)
    inner = next(arg for arg in typing.get_args(hint) if arg is not type(None)) if optional else hint
    items = typing.get_args(inner)
    return items[0], (len(items) if typing.get_origin(inner) is tuple else None)


@functools.lru_cache(maxsize=1)
def _options_by_key() -> dict[tuple[str | None, str], ConfigOption]:
    return {(o.section, o.name): o for o in config_options()}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
