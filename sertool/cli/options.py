"""The options of the commands whose library code takes them as arguments of its own (train, plot, data demo):
one dataclass per command, each field its flag (``sertool.core.config.option``), as the other commands' options
are declared beside their library code (``sertool.inference.options``, ``sertool.data.options``, ...).

Imports no torch: the CLI reads it at start-up.
"""
from __future__ import annotations

from dataclasses import dataclass

from sertool.core.config import DEFAULT_DEVICE, DEVICE_CHOICES, SEED, THREADS, THREADS_HELP, option
from sertool.demo.corpus import DEMO_SIZES

DEMO_SIZE_NAMES = tuple(DEMO_SIZES)  # data demo --size


@dataclass
class TrainOptions:
    """`sertool train`: where the run goes and how it is run; what is trained is the config's (``Config``, whose
    fields are the command's other flags)."""

    config_file: str | None = option(None, "YAML config (a run folder's config.yaml is one); flags override it.",
                                     flag="--config", metavar="FILE")
    out: str | None = option(None, "Run folder to create: best.pt, last.pt, config, logs.", metavar="RUN_DIR")
    resume: str | None = option(None, "Continue the interrupted run in RUN_DIR exactly where it stopped (--corpus, "
                                "--cache-dir, --feature-cache and --num-workers may point elsewhere).",
                                metavar="RUN_DIR")
    force: bool = option(False, "Start over in an --out folder that already holds files.")
    device: str = option(DEFAULT_DEVICE, "Where to train; under torchrun each process takes its LOCAL_RANK GPU.",
                         choices=DEVICE_CHOICES)
    threads: int = option(0, THREADS_HELP + " Under torchrun: per process.", bounds=THREADS)
    tensorboard: bool = option(False, "Also write TensorBoard scalars to RUN_DIR/tensorboard/ (needs the "
                               "tensorboard package).")
    mlflow: bool = option(False, "Also log the run to MLflow: config, losses, validation CCCs, best.pt's scores "
                          "(MLFLOW_TRACKING_URI, by default RUN_DIR/mlflow.db; MLFLOW_EXPERIMENT_NAME, by default "
                          "sertool; needs mlflow-skinny).")
    plan: bool = option(False, "Print the memory plan (parameters, gradients and AdamW state, the largest "
                        "micro-batch, the estimated peak in fp32 and half precision, with and without gradient "
                        "checkpointing) and exit: nothing trains, nothing is written.")


def _clips(size: dict[str, int]) -> int:
    """The clips of a ``DEMO_SIZES`` preset: every labelled speaker's, and Test3's."""
    return size["num_speakers"] * size["utterances_per_speaker"] + size["test3_utterances"]


@dataclass
class DemoOptions:
    """`sertool data demo`: the demo corpus to synthesise (``sertool.demo.corpus.generate_demo_corpus``)."""

    out: str = option(None, "Where to write the corpus (same as the OUT argument).", metavar="DIR", argument="OUT")
    size: str = option("default", ", ".join(f"{name} {_clips(size):,}" for name, size in DEMO_SIZES.items())
                       + " clips.", choices=DEMO_SIZE_NAMES)
    seed: int = option(0, "Seed: the same seed gives byte-identical files.", bounds=SEED)
    force: bool = option(False, "Write into OUT even if it is not empty (replacing an earlier corpus).")


@dataclass
class PlotOptions:
    """`sertool plot`: where the training curves go (``sertool.training.curves.plot_runs``)."""

    out: str = option(None, "The figure to write.", metavar="PNG", required=True)
    force: bool = option(False, "Overwrite --out.")
