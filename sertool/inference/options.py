"""What evaluate, predict and ensemble take: one options dataclass per command, each field its flag.

Every field is declared with ``sertool.core.config.option`` (help, choices, bounds, flag name), as ``Config``'s
fields are, and ``sertool.cli.commands`` turns the fields into the commands' flags: each default and choice list has
this one home. The module imports no torch, so the CLI can read it at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sertool.core.config import (
    AMP_CHOICES,
    DEFAULT_AMP,
    DEFAULT_ASR_MODEL_ID,
    DEFAULT_DEVICE,
    DEFAULT_EVAL_BATCH_S,
    DEFAULT_HOP_S,
    DEFAULT_QUANTIZE,
    DEFAULT_WINDOW_S,
    DEVICE_CHOICES,
    MIN_DURATION_S,
    NON_NEGATIVE,
    POSITIVE,
    QUANTIZE_CHOICES,
    SEED,
    THREADS,
    THREADS_HELP,
    WORKERS,
    Bounds,
    option,
)
from sertool.core.splits import DEVELOPMENT, TEST3
from sertool.inference.predictions import SCALE_RATINGS, SCALES
from sertool.inference.writers import WRITERS

if TYPE_CHECKING:
    import torch

PER_ATTRIBUTE_CHOICES = ("best",)
# predict's windows: one window is at most an hour of audio in one forward pass; a hop of 50 ms already gives
# 72,000 windows per hour, so a shorter one is a typo, not time resolution.
MAX_WINDOW_S = 3600.0
MIN_HOP_S = 0.05  # ensemble --per-attribute: the member subset that is best per attribute


@dataclass
class InferenceOptions:
    """How checkpoints are run; shared by every inference command.

    ``backbone_path`` / ``text_model`` / ``speaker_embedding`` replace the pretrained model locations a
    checkpoint recorded (e.g. a hub id on an offline machine, or a folder on another machine): frozen
    pretrained weights are not stored in checkpoints, they are loaded from there. ``quantize`` and
    ``threads`` are for the CPU (``sertool.acceleration.cpu``).
    """

    device: str = option(DEFAULT_DEVICE, "Where to run the model.", choices=DEVICE_CHOICES)
    max_batch_s: float = option(DEFAULT_EVAL_BATCH_S, "Inference batch bound: utterances × longest clip ≤ this many "
                                "seconds.", flag="--batch-s", bounds=POSITIVE)
    num_workers: int = option(0, "Data-loader processes.", bounds=WORKERS)
    amp: str = option(DEFAULT_AMP, "Mixed precision (auto: bf16/fp16 on GPUs, off on the CPU).", choices=AMP_CHOICES)
    cache_dir: str | None = option(None, "Cache of corpus scans (durations, transcripts), text embeddings and ASR "
                                   "transcripts (default: $SERTOOL_CACHE or ~/.cache/sertool).")
    backbone_path: str | None = option(None, "Where the checkpoint's speech backbone lives here (hub id or folder), "
                                       "if not where it was trained.")
    text_model: str | None = option(None, "Where an MM checkpoint's text encoder lives here (hub id or folder).")
    speaker_embedding: str | None = option(None, "Where a +S Emb checkpoint's speaker model lives here.")
    asr: str = option(DEFAULT_ASR_MODEL_ID, "Whisper model (hub id or folder) that transcribes audio without a "
                      "transcript (MM models).")
    quantize: str = option(DEFAULT_QUANTIZE, "int8: int8 linear layers in the speech backbone, and its convolutional "
                           "front end in bf16 on CPUs with AMX; faster on a CPU (how much: docs/performance.md, "
                           "benchmark 10), predictions move by a few hundredths (CPU only).",
                           choices=QUANTIZE_CHOICES)
    threads: int = option(0, THREADS_HELP, bounds=THREADS)

    def torch_device(self) -> torch.device:
        from sertool.core.devices import select_device

        return select_device(self.device)


@dataclass
class BootstrapOptions:
    """``--bootstrap B`` and its seed (evaluate, ensemble)."""

    bootstrap: int = option(0, "Bootstrap 95 % confidence intervals of each CCC from B resamples of the utterances "
                            "(e.g. 1000; 0: none).", bounds=Bounds(at_least=0, at_most=100_000), metavar="B")
    bootstrap_seed: int = option(0, "Seed of the bootstrap resamples.", bounds=SEED)


@dataclass
class ScoreOutputOptions:
    """``--scores FILE`` and ``--json`` (evaluate, ensemble): the score table as data."""

    scores: str | None = option(None, "Also write the scores as JSON: split, utterances and CCC per system.",
                                metavar="JSON")
    as_json: bool = option(False, "Print the scores as JSON on stdout instead of the table (messages go to stderr).",
                           flag="--json")


@dataclass
class EvaluateOptions:
    """`sertool evaluate`: score a model on a labelled split."""

    corpus: str = option(None, "MSP-Podcast root or manifest.", metavar="ROOT", required=True)
    split: str = option(DEVELOPMENT, "A labelled split.")
    out: str | None = option(None, "Write the predictions (labels beside them) here (.csv or .json).", metavar="CSV")
    plot: str | None = option(None, "Write predicted-vs-true and by-class plots here.", metavar="PNG")
    force: bool = option(False, "Overwrite --out / --plot / --scores.")
    output: ScoreOutputOptions = field(default_factory=ScoreOutputOptions)
    bootstrap: BootstrapOptions = field(default_factory=BootstrapOptions)
    inference: InferenceOptions = field(default_factory=InferenceOptions)


@dataclass
class PredictOptions:
    """`sertool predict`: A/V/D of audio files, folders, manifests, or a corpus split."""

    corpus: str | None = option(None, "Predict a split of this corpus (with --split) instead of PATHS.",
                                metavar="ROOT")
    split: str = option(TEST3, "The split of --corpus to predict.")
    file_format: str | None = option(None, "Output format (default: from --out's suffix, else csv).",
                                     choices=tuple(WRITERS), flag="--format")
    out: str | None = option(None, "Write predictions here (default: standard output).", metavar="FILE")
    scale: str = option(SCALE_RATINGS, "ratings: MSP-Podcast's 1–7 rater scale; unit: the model's own 0..1 outputs "
                        "(rating − 1) / 6, e.g. the authors' raw sigmoid outputs (not for predictions CSVs). "
                        "--submission stays on 1–7.", choices=SCALES)
    submission: str | None = option(None, "Also write the challenge submission: FileName,EmoAct,EmoVal,EmoDom, 1–7, "
                                    "clipped, every file once.", metavar="CSV")
    transcripts: str | None = option(None, "Transcripts for MM models: a folder of <stem>.txt or a CSV with FileName "
                                     "and transcript columns (otherwise ASR).", metavar="DIR|CSV")
    window_s: float | None = option(None, f"Files longer than this are cut into windows (default: the clip length "
                                    f"the model was made for, its training crop, else {DEFAULT_WINDOW_S:g} s; at "
                                    f"least {MIN_DURATION_S:g} s, at most an hour).",
                                    bounds=Bounds(at_least=MIN_DURATION_S, at_most=MAX_WINDOW_S))
    hop_s: float | None = option(None, f"Seconds between window starts (default: {DEFAULT_HOP_S:g}, or the window "
                                 "if shorter; at least 0.05: 20 windows a second).",
                                 bounds=Bounds(at_least=MIN_HOP_S, at_most=MAX_WINDOW_S))
    force: bool = option(False, "Overwrite --out / --submission.")
    inference: InferenceOptions = field(default_factory=InferenceOptions)


@dataclass
class EnsembleOptions:
    """`sertool ensemble`: combine members' predictions of a split, and score them where it is labelled."""

    corpus: str = option(None, "MSP-Podcast root or manifest.", metavar="ROOT", required=True)
    split: str = option(DEVELOPMENT, "The split to combine (and score, if labelled).")
    weights: list[float] | None = option(None, "Weighted mean instead of the plain mean: one weight (≥ 0) per member.",
                                         bounds=NON_NEGATIVE, many=True, metavar="W,W,...")
    per_attribute: str | None = option(None, "Per attribute, the subset of the members that predict it whose mean is "
                                       "best on --select-split.", choices=PER_ATTRIBUTE_CHOICES)
    select_split: str = option(DEVELOPMENT, "Labelled split the per-attribute choice is made on.")
    out: str | None = option(None, "Write the ensemble's predictions (with the members' spread) here.", metavar="FILE")
    submission: str | None = option(None, "Write the challenge submission of the ensemble here.", metavar="CSV")
    save: str | None = option(None, "Keep the ensemble: evaluate and predict accept it as a checkpoint.",
                              metavar="JSON")
    member_backbone_paths: tuple[str, ...] = option((), "Where each member's speech backbone lives here (hub id or "
                                                    "folder), once per member in their order (- for a member's own), "
                                                    "e.g. WavLM and Whisper for the paper's pair offline; kept by "
                                                    "--save. --backbone-path gives one for all.",
                                                    flag="--member-backbone-path", metavar="PATH")
    force: bool = option(False, "Overwrite --out / --submission / --save / --scores.")
    output: ScoreOutputOptions = field(default_factory=ScoreOutputOptions)
    bootstrap: BootstrapOptions = field(default_factory=BootstrapOptions)
    inference: InferenceOptions = field(default_factory=InferenceOptions)
