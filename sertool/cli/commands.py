"""The `sertool` command line: parses flags and hands over to the library. No logic lives here.

Heavy modules (torch, transformers) are imported inside each command, so `sertool --help` stays fast.
"""
from __future__ import annotations

import functools
import os
import sys
import typing
from typing import Any

import click

from sertool.baseline.options import BaselineOptions
from sertool.cli.flags import AliasArgument, SectionedCommand, option_flags, options_from
from sertool.cli.options import DemoOptions, PlotOptions, TrainOptions
from sertool.core.config import Config, check_text
from sertool.core.errors import SertoolError
from sertool.core.progress import DEFAULT_LOG_EVERY_S, LOG_EVERY_VARIABLE, task
from sertool.core.version import __version__
from sertool.data.options import InfoOptions, ManifestOptions
from sertool.experiments.options import ReproduceOptions, SpeakersOptions
from sertool.guards.surface import DEBUG_VARIABLE
from sertool.inference.options import EnsembleOptions, EvaluateOptions, PredictOptions
from sertool.store.options import ExportOptions

EXIT_USER_ERROR = 2
EXIT_BUG = 1  # an unexpected exception: Python's own status for an uncaught one
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C


def _show_progress(ctx: click.Context, param: click.Parameter, quiet: bool) -> None:
    from sertool.cli.console import show_progress

    show_progress(quiet=quiet)


def _ask_for_tracebacks(ctx: click.Context, param: click.Parameter, debug: bool) -> None:
    if debug:
        os.environ[DEBUG_VARIABLE] = "1"  # subprocesses (torchrun ranks, loader workers) see it too


# `sertool --help` lists the commands in these groups, in this order (the order of the work), as `train --help`
# groups its options; a command missing here is listed under "Other commands".
COMMAND_SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Corpora", ("data",)),
    ("Training", ("train", "baseline", "plot")),
    ("Evaluation and prediction", ("evaluate", "predict", "ensemble")),
    ("Sharing a model", ("export",)),
    ("The paper's experiments", ("reproduce",)),
)
OTHER_COMMANDS = "Other commands"


class _Group(click.Group):
    """A click group whose commands all fail the same way (``_fail``), stop on Ctrl-C or SIGTERM with its
    message and the shell's exit status (130, 143), take ``--quiet`` and ``--debug``, and show the progress of
    their long steps (``sertool.core.progress``: bars on a terminal, plain lines in a log).

    Args:
        sections: ``(title, command names)`` pairs: ``--help`` lists the commands under these titles, in this
            order (click lists them alphabetically under one title, and has no groups of its own).
    """

    def __init__(self, *args: Any, sections: tuple[tuple[str, tuple[str, ...]], ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sections = sections

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        if not self.sections:
            super().format_commands(ctx, formatter)
            return
        commands = {name: command for name in self.list_commands(ctx)
                    if (command := self.get_command(ctx, name)) is not None and not command.hidden}
        if not commands:
            return
        width = max(len(name) for name in commands)
        listed = {name for _, names in self.sections for name in names}
        others = tuple(name for name in commands if name not in listed)
        for title, names in (*self.sections, (OTHER_COMMANDS, others)):
            rows = [(name, commands[name].get_short_help_str(formatter.width - 6 - width))
                    for name in names if name in commands]
            if rows:
                with formatter.section(title):
                    # One column width for every section: click measures each table alone.
                    formatter.write_dl(rows, col_spacing=2 + width - max(len(name) for name, _ in rows))

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            cmd.params.append(click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True,
                                           callback=_show_progress,
                                           help="No progress: no bars on a terminal, no lines in a log (a line every "
                                                f"${LOG_EVERY_VARIABLE} seconds, {DEFAULT_LOG_EVERY_S:g} by default)."))
            cmd.params.append(click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True,
                                           callback=_ask_for_tracebacks,
                                           help=f"Show the traceback of an error instead of one line, and the "
                                                f"warnings of other packages that sertool hides (also: "
                                                f"{DEBUG_VARIABLE}=1)."))
        if cmd.callback is not None:
            cmd.callback = _refusing_nul(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context):
        from sertool.guards.third_party import warnings_held

        try:
            with warnings_held() as held:
                result = super().invoke(ctx)
            if held:  # other packages' warnings: counted, not printed (--debug prints them)
                click.secho(f"note: {len(held)} warning{'s' if len(held) > 1 else ''} of other packages held back; "
                            "--debug shows them", fg="bright_black", err=True)
            return result
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # usage errors and --help: click's own one-line handling
        except KeyboardInterrupt as stop:
            click.secho(str(stop) or "interrupted", fg="yellow", err=True)
            sys.exit(getattr(stop, "exit_status", EXIT_INTERRUPTED))
        except Exception as error:  # noqa: BLE001 - the one error surface: every failure ends as one line
            _fail(error)


def _refusing_nul(cmd: click.Command) -> typing.Callable[..., Any]:
    """``cmd``'s callback, refusing first any option or argument whose text holds a NUL byte: no file, split or
    model is named with one, and the OS would refuse it deep inside the command instead."""
    callback = cmd.callback
    assert callback is not None
    labels = {param.name: param.opts[0] if isinstance(param, click.Option) else
              ((param.metavar if isinstance(param, AliasArgument) else param.name) or "").upper()
              for param in cmd.params}

    @functools.wraps(callback)
    def checked(*args: Any, **values: Any) -> Any:
        for name, value in values.items():
            for text in value if isinstance(value, tuple | list) else (value,):
                if isinstance(text, str):
                    check_text(text, labels.get(name, name))
        return callback(*args, **values)

    return checked


def _fail(error: Exception) -> typing.NoReturn:
    """End the command on ``error``: a failure the user can act on is one line (exit 2); anything else is a bug,
    one line naming the file its traceback was saved to (exit 1), or the traceback itself with ``--debug``."""
    from sertool.guards.surface import debug_requested, known_failure, report_bug

    message = known_failure(error)
    if debug_requested() and not isinstance(error, SertoolError):
        raise error
    if message is None:
        click.secho(f"error: {report_bug(error, command=' '.join(sys.argv))}", fg="red", err=True)
        sys.exit(EXIT_BUG)
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(EXIT_USER_ERROR)


@click.group(cls=_Group, sections=COMMAND_SECTIONS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sertool")
def cli() -> None:
    """sertool: speech emotion recognition of arousal, valence and dominance.

    Train, evaluate, ensemble and deploy the system that topped Task 2 of the Interspeech 2025
    SER challenge (MSP-Podcast), on MSP-Podcast or any corpus in its layout or a sertool manifest.
    """


@cli.group(cls=_Group)
def data() -> None:
    """Corpora: make the demo corpus, import other corpora, inspect any of them."""


@data.command("info")
@option_flags(InfoOptions)
def data_info(**flags) -> None:
    """Utterances and hours per split, classes with the O/X share, gender, speakers, transcripts.

    ROOT is an MSP-Podcast root (Audios/, Labels/labels_consensus.csv, Transcripts/), a manifest CSV,
    or a folder holding manifest.csv.
    """
    from sertool.cli.console import print_corpus_summary, print_json, print_load_report
    from sertool.data.corpus import open_corpus
    from sertool.data.info import summarize, summary_document

    options = options_from(InfoOptions, flags)
    corpus = open_corpus(options.corpus, cache_dir=options.cache_dir)
    print_load_report(corpus.report)
    if options.as_json:
        print_json(summary_document(corpus, summarize(corpus)))
    else:
        print_corpus_summary(f"{options.corpus} ({corpus.kind})", summarize(corpus))


@data.command("demo")
@option_flags(DemoOptions)
def data_demo(**flags) -> None:
    """Synthesise the demo corpus (eSpeak NG speech) in MSP-Podcast layout into OUT.

    Speaker-disjoint Train / Development / Test1 with labels, and Test3 audio without labels, as in the
    challenge. Arousal and dominance drive the prosody; valence lives mostly in the words (docs/data.md).
    """
    from sertool.cli.console import out as console
    from sertool.demo.corpus import DEMO_SIZES, generate_demo_corpus

    options = options_from(DemoOptions, flags)
    with task("synthesising") as progress:
        summary = generate_demo_corpus(options.out, seed=options.seed, force=options.force, progress=progress,
                                       **DEMO_SIZES[options.size])
    splits = ", ".join(f"{split} {count:,}" for split, count in summary.utterances.items())
    hours = summary.duration_s / 3600
    console.print(f"wrote {summary.num_utterances:,} utterances ({hours:.2f} h: {splits}) to {options.out}")


@data.command("speakers")
@option_flags(SpeakersOptions)
def data_speakers(**flags) -> None:
    """The paper's Figure 2: speaker embeddings projected to 2-D, coloured by speaker.

    Shows whether a speaker extractor separates this corpus's speakers (the paper's reason why adding
    speaker embeddings did not help), with the Fisher ratio of the projection as a number.
    """
    from sertool.cli.console import out as console
    from sertool.experiments.speakers import speaker_figure

    options = options_from(SpeakersOptions, flags)
    figure = speaker_figure(options)
    console.print(f"Fisher ratio {figure.map.fisher_ratio:.2f} (between-/within-speaker variance of the 2-D points) "
                  f"on {figure.num_utterances:,} {options.split} utterances of {options.num_speakers} speakers; "
                  f"wrote {options.out}")


@data.command("manifest")
@click.argument("folder")
@click.argument("metadata")
@option_flags(ManifestOptions)
def data_manifest(folder: str, metadata: str, **flags) -> None:
    """Turn FOLDER of audio plus a METADATA CSV into a sertool manifest.

    Without --split-column, speakers are assigned to Train / Development / Test1 so that no speaker is in
    two splits (stratified by gender). Example for a corpus with A/V/D on 0..1:

    \b
      sertool data manifest urdu urdu/metadata.csv --out urdu.csv --path-column file \\
        --speaker-column speaker --gender-column gender --class-column emotion \\
        --arousal-column nrc_arousal --valence-column nrc_valence \\
        --dominance-column nrc_dominance --label-range 0 1
    """
    from sertool.cli.console import out as console
    from sertool.cli.console import print_corpus_summary, print_load_report
    from sertool.data.importer import make_manifest
    from sertool.data.info import summarize

    options = options_from(ManifestOptions, flags)
    manifest = make_manifest(folder, metadata, options)
    print_load_report(manifest.report)
    print_corpus_summary(f"{options.out} (manifest)", summarize(manifest))
    console.print(f"wrote {len(manifest.utterances):,} utterances to {options.out}")


@cli.command("train", cls=SectionedCommand)
@option_flags(TrainOptions)
@option_flags(Config, overrides=True)
def train_command(**flags) -> None:
    """Train one system and write its run folder.

    Fields set neither by --config nor by a flag take the backbone's recipe: the paper's defaults below,
    except for --backbone fbank, which gets the small-cpu recipe (--recipe; docs/training.md): each flag it
    changes shows its value beside the default.

    \b
      sertool train --corpus MSP-Podcast --backbone wavlm --aux gender --out runs/wavlm
      sertool train --corpus demo/corpus --backbone fbank --aux gender --out runs/fbank
      torchrun --nproc-per-node 4 -m sertool train --config wavlm.yaml --out runs/wavlm
      sertool train --config wavlm.yaml --corpus MSP-Podcast --plan    # the memory it will need
    """
    run = options_from(TrainOptions, flags)  # what is left in flags is the config's, None where not given
    if run.plan:
        from sertool.cli.console import print_memory_plan
        from sertool.training.memory_plan import plan_training

        print_memory_plan(plan_training(run.config_file, flags, resume=run.resume, device=run.device))
        return
    from sertool.cli.console import train_reporter
    from sertool.training.loop import train
    from sertool.training.setup import resolve_train_config

    config, run_dir, relocated = resolve_train_config(run.config_file, flags, out=run.out, resume=run.resume)
    train(config, run_dir, resume=run.resume is not None, relocated=relocated, force=run.force, argv=sys.argv,
          device=run.device, threads=run.threads,
          reporter=train_reporter(run_dir, tensorboard=run.tensorboard, mlflow=run.mlflow))


@cli.command("evaluate")
@click.argument("model", metavar="CKPT")
@option_flags(EvaluateOptions)
def evaluate_command(model: str, **flags) -> None:
    """CCC per attribute and average of CKPT on a split (whole utterances, batched by length).

    CKPT is a checkpoint, a run folder (its best.pt), a model folder (sertool export, its ONNX form, or
    the authors' released models) or its hub id, a predictions CSV, or an ensemble JSON.
    """
    from sertool.cli.console import print_collapse_warnings, print_json, print_load_report, print_scores, print_written
    from sertool.inference.workflows import run_evaluate

    options = options_from(EvaluateOptions, flags)
    result = run_evaluate(model, options, on_load_report=print_load_report)
    if options.output.as_json:
        print_json(result.document)
        print_collapse_warnings([result.scores])
    else:
        print_scores(f"{options.split} of {options.corpus}", [result.scores])
    print_written(result.written, as_json=options.output.as_json)


@cli.command("predict")
@click.argument("model", metavar="CKPT")
@click.argument("paths", nargs=-1, metavar="[PATHS]...")
@option_flags(PredictOptions)
def predict_command(model: str, paths: tuple[str, ...], **flags) -> None:
    """Predict A/V/D (1–7 scale) for audio files, folders, a manifest, or a corpus split.

    CKPT is anything evaluate takes, e.g. a run folder or a model hub id.

    \b
      sertool predict runs/wavlm clip.wav talks/ --out predictions.csv
      sertool predict runs/wavlm --corpus MSP-Podcast --split Test3 --submission submission.csv
      sertool predict tiantiaf/wavlm-large-msp-podcast-emotion-dim clip.wav
    """
    from sertool.cli.console import out as console
    from sertool.cli.console import print_load_report
    from sertool.inference.workflows import run_predict

    result = run_predict(model, paths, options_from(PredictOptions, flags), on_load_report=print_load_report,
                         stream=sys.stdout)
    count = len(result.predictions)
    for path in result.written:
        console.print(f"wrote {path} ({count:,} file{'s' if count != 1 else ''})")


@cli.command("ensemble")
@click.argument("members", nargs=-1, required=True, metavar="MEMBER...")
@option_flags(EnsembleOptions)
def ensemble_command(members: tuple[str, ...], **flags) -> None:
    """Average the A/V/D predictions of MEMBERs: checkpoints, run folders, model folders or hub ids,
    predictions CSVs or ensembles.

    \b
      sertool ensemble runs/wavlm runs/mmwhisper --corpus MSP-Podcast --split Development --save ens.json
      sertool ensemble a.csv b.csv --corpus MSP-Podcast --split Development --per-attribute best
    """
    from sertool.cli.console import (
        err,
        print_collapse_warnings,
        print_differences,
        print_json,
        print_load_report,
        print_scores,
        print_written,
    )
    from sertool.cli.console import out as console
    from sertool.inference.workflows import run_ensemble

    options = options_from(EnsembleOptions, flags)
    as_json = options.output.as_json
    result = run_ensemble(members, options, on_load_report=print_load_report)
    rows = [*result.member_scores, result.ensemble_scores] if result.ensemble_scores is not None else []
    if as_json:
        print_json(result.document)
        print_collapse_warnings(rows)
    elif rows:
        print_scores(f"{options.split} of {options.corpus}", rows, highlight="ensemble")
    if result.differences and not as_json:
        print_differences(f"the ensemble's gain over each member, {options.split}", result.differences)
    if options.per_attribute:
        for name, chosen in result.plan.weights.items():
            (err if as_json else console).print(f"{name}: " + " + ".join(result.plan.members[index]
                                                                         for index, _ in chosen))
    print_written(result.written, as_json=as_json)


@cli.command("export")
@click.argument("model", metavar="RUN")
@option_flags(ExportOptions)
def export_command(model: str, **flags) -> None:
    """Write RUN (a run folder, checkpoint, model folder or hub id) as a self-contained model folder.

    Every command and sertool.load() accept the folder (or its hub id after --push-to-hub) in place of
    RUN, with the same predictions. --format onnx writes the model as one ONNX graph, which they run with
    onnxruntime.

    \b
      sertool export runs/wavlm --out models/wavlm
      sertool export runs/wavlm --out models/wavlm --push-to-hub me/wavlm-msp-podcast
      sertool export runs/wavlm --out models/wavlm-onnx --format onnx
    """
    from sertool.cli.console import out as console
    from sertool.store.export import export_model

    result = export_model(model, options_from(ExportOptions, flags))
    for path in result.written:
        console.print(f"wrote {path}")
    if result.url:
        console.print(f"uploaded to {result.url}")


@cli.command("baseline")
@option_flags(BaselineOptions)
def baseline_command(**flags) -> None:
    """The floor: ridge regression on utterance-level acoustic features (log-mel statistics, or openSMILE's
    eGeMAPS or ComParE functionals: --features).

    Fitted on --train-split, alpha chosen on --valid-split; every other split is predicted into
    DIR/<split>.csv, which evaluate and ensemble accept like a checkpoint.

    \b
      sertool baseline --corpus MSP-Podcast --out runs/baseline
      sertool baseline --corpus MSP-Podcast --out runs/egemaps --features egemaps
      sertool ensemble runs/wavlm runs/baseline/Development.csv --corpus MSP-Podcast
    """
    from sertool.baseline.run import run_baseline
    from sertool.cli.console import out as console
    from sertool.cli.console import print_load_report, print_scores

    options = options_from(BaselineOptions, flags)
    with task(f"{options.features} features") as progress:
        result = run_baseline(options, progress=progress)
    print_load_report(result.load_report)
    alphas = ", ".join(f"{name} {alpha:g}" for name, alpha in result.alphas.items())
    console.print(f"fitted on {result.train_utterances:,} {options.train_split} utterances; alpha chosen on "
                  f"{options.valid_split}: {alphas}")
    for split, scores in result.scores.items():
        role = " (chose alpha)" if split == options.valid_split else ""
        print_scores(f"{split} of {options.corpus}{role}", [scores])
    for path in result.written:
        console.print(f"wrote {path}")


@cli.command("plot")
@click.argument("runs", nargs=-1, required=True, metavar="RUN_DIR...")
@option_flags(PlotOptions)
def plot_command(runs: tuple[str, ...], **flags) -> None:
    """Training curves of one or more runs, overlaid: training loss and validation CCC per attribute over
    optimiser steps (what every run folder's curves.png shows for its own run).

    \b
      sertool plot runs/wavlm runs/mmwavlm --out curves.png
    """
    from sertool.cli.console import print_written
    from sertool.training.curves import plot_runs

    options = options_from(PlotOptions, flags)
    print_written([plot_runs(runs, options.out, force=options.force)])


@cli.command("reproduce")
@option_flags(ReproduceOptions)
def reproduce_command(**flags) -> None:
    """Run the paper's experiment grid and write tables laid out like the paper's (make reproduce).

    Interrupted? Run it again: finished systems are skipped and an interrupted training resumes.
    """
    from sertool.cli.console import RichTrainReporter, err
    from sertool.cli.console import out as console
    from sertool.experiments.reproduce import reproduce
    from sertool.guards.reads import MAX_TABLE_BYTES, read_user_text

    paths = reproduce(options_from(ReproduceOptions, flags), reporter_factory=RichTrainReporter,
                      say=lambda text: err.print(f"[bold]reproduce:[/] {text}"))
    for path in paths:
        console.print(read_user_text(path, what="tables", max_bytes=MAX_TABLE_BYTES), markup=False, highlight=False)
        console.print(f"wrote {path}")


def main() -> None:
    """Entry point of the `sertool` console script and `python -m sertool`."""
    from sertool.core.interrupts import raise_on_termination

    raise_on_termination()  # SIGTERM ends like Ctrl-C: temporary files removed, a message, exit status 143
    cli(prog_name="sertool")
