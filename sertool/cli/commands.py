"""The `sertool` command line: parses flags and hands over to the library. No logic lives here.

Heavy modules (torch, transformers) are imported inside each command, so `sertool --help` stays fast.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import typing
from pathlib import Path
from typing import Any

import click

from sertool.core.config import (
    DEFAULT_DEVICE,
    DEVICE_CHOICES,
    PROBABILITY,
    SEED,
    WORKERS,
    Bounds,
    check_options,
    check_text,
)
from sertool.core.errors import SertoolError
from sertool.core.progress import task
from sertool.core.splits import DEVELOPMENT, TRAIN
from sertool.core.version import __version__
from sertool.data.selection import SPEAKER_CHOICES
from sertool.demo.corpus import DEMO_SIZES
from sertool.experiments.grid import SCALES
from sertool.guards.surface import DEBUG_VARIABLE
from sertool.inference.options import EnsembleOptions, EvaluateOptions, PredictOptions

EXIT_USER_ERROR = 2
EXIT_BUG = 1  # an unexpected exception: Python's own status for an uncaught one
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C
DEMO_SIZE_NAMES = tuple(DEMO_SIZES)
_AT_LEAST_TWO = Bounds(at_least=2)


def _show_progress(ctx: click.Context, param: click.Parameter, quiet: bool) -> None:
    from sertool.cli.console import show_progress

    show_progress(quiet=quiet)


def _ask_for_tracebacks(ctx: click.Context, param: click.Parameter, debug: bool) -> None:
    if debug:
        os.environ[DEBUG_VARIABLE] = "1"  # subprocesses (torchrun ranks, loader workers) see it too


class _Group(click.Group):
    """A click group whose commands all fail the same way (``_fail``), stop on Ctrl-C or SIGTERM with its
    message and the shell's exit status (130, 143), take ``--quiet`` and ``--debug``, and draw the progress of
    their long steps on a terminal (``sertool.core.progress``)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group):
            cmd.params.append(click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, is_eager=True,
                                           callback=_show_progress,
                                           help="No progress bars (they are drawn only on a terminal anyway)."))
            cmd.params.append(click.Option(["--debug"], is_flag=True, expose_value=False, is_eager=True,
                                           callback=_ask_for_tracebacks,
                                           help=f"Show the traceback of an error instead of one line (also: "
                                                f"{DEBUG_VARIABLE}=1)."))
        if cmd.callback is not None:
            cmd.callback = _refusing_nul(cmd)
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
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
    labels = {param.name: param.opts[0] if isinstance(param, click.Option) else (param.name or "").upper()
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


class _Number(click.ParamType):
    """An int or float flag that must be finite and within ``bounds`` (click's FloatRange lets NaN through).

    Config flags take their bounds from the config's declaration, so a flag and a YAML key are checked
    alike; with ``many``, the value is a comma-separated list (``--weights 0.6,0.4``).
    """

    def __init__(self, kind: type[int] | type[float], bounds: Bounds | None = None, *, many: bool = False) -> None:
        self.kind, self.bounds, self.many = kind, bounds or Bounds(), many
        self.name = "integer" if kind is int else "float"

    def convert(self, value, param, ctx):
        if self.many and isinstance(value, str):
            return [self._one(item.strip(), param, ctx) for item in value.split(",")]
        return self._one(value, param, ctx)

    def _one(self, value, param, ctx):
        try:
            number = value if isinstance(value, self.kind) and not isinstance(value, bool) else self.kind(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'}", param, ctx)
        problem = self.bounds.problem(number)
        if problem:
            self.fail(f"{value} {problem}", param, ctx)
        return number


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="sertool")
def cli() -> None:
    """sertool: speech emotion recognition of arousal, valence and dominance.

    Train, evaluate, ensemble and deploy the system that topped Task 2 of the Interspeech 2025
    SER challenge (MSP-Podcast), on MSP-Podcast or any corpus in its layout or a sertool manifest.
    """


@cli.group(cls=_Group)
def data() -> None:
    """Corpora: make the demo corpus, import other corpora, inspect any of them."""


def _path_argument(positional: str | None, option: str | None, *, name: str, flag: str) -> Path:
    """A path given either as the argument ``name`` or as ``flag`` (the convention of every command)."""
    if positional and option and Path(positional) != Path(option):
        raise SertoolError(f"two paths given ({positional} and {flag} {option}); pass one")
    path = positional or option
    if not path:
        raise SertoolError(f"no path given: pass {name} or {flag} {name}")
    return Path(path)


@data.command("info")
@click.argument("root", required=False, metavar="ROOT")
@click.option("--corpus", "corpus_option", metavar="ROOT", help="The corpus (same as the ROOT argument).")
@click.option("--cache-dir", help="Where what the scan read (durations, transcripts) is kept for the next command "
                                  "(default: $SERTOOL_CACHE or ~/.cache/sertool).")
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON on stdout instead of the tables.")
def data_info(root: str | None, corpus_option: str | None, cache_dir: str | None, as_json: bool) -> None:
    """Utterances and hours per split, classes with the O/X share, gender, speakers, transcripts.

    ROOT is an MSP-Podcast root (Audios/, Labels/labels_consensus.csv, Transcripts/), a manifest CSV,
    or a folder holding manifest.csv.
    """
    from sertool.cli.console import print_corpus_summary, print_json, print_load_report
    from sertool.data.corpus import open_corpus
    from sertool.data.info import summarize, summary_document

    path = _path_argument(root, corpus_option, name="ROOT", flag="--corpus")
    corpus = open_corpus(path, cache_dir=cache_dir)
    print_load_report(corpus.report)
    if as_json:
        print_json(summary_document(corpus, summarize(corpus)))
    else:
        print_corpus_summary(f"{path} ({corpus.kind})", summarize(corpus))


@data.command("demo")
@click.argument("out", required=False, metavar="OUT")
@click.option("--out", "out_option", metavar="DIR", help="Where to write the corpus (same as the OUT argument).")
@click.option("--size", type=click.Choice(DEMO_SIZE_NAMES), default="default", show_default=True,
              help="tiny 56, small 330, default 1,560, large 4,080 clips.")
@click.option("--seed", type=_Number(int, SEED), default=0, show_default=True,
              help="Seed: the same seed gives byte-identical files.")
@click.option("--force", is_flag=True, help="Write into OUT even if it is not empty (replacing an earlier corpus).")
def data_demo(out: str | None, out_option: str | None, size: str, seed: int, force: bool) -> None:
    """Synthesise the demo corpus (eSpeak NG speech) in MSP-Podcast layout into OUT.

    Speaker-disjoint Train / Development / Test1 with labels, and Test3 audio without labels, as in the
    challenge. Arousal and dominance drive the prosody; valence lives mostly in the words (docs/data.md).
    """
    from sertool.cli.console import out as console
    from sertool.demo.corpus import generate_demo_corpus

    path = _path_argument(out, out_option, name="OUT", flag="--out")
    with task("synthesising") as progress:
        summary = generate_demo_corpus(path, seed=seed, force=force, progress=progress, **DEMO_SIZES[size])
    splits = ", ".join(f"{split} {count:,}" for split, count in summary.utterances.items())
    hours = summary.duration_s / 3600
    console.print(f"wrote {summary.num_utterances:,} utterances ({hours:.2f} h: {splits}) to {path}")


@data.command("speakers")
@click.option("--corpus", required=True, metavar="ROOT", help="MSP-Podcast root or manifest.")
@click.option("--split", default=TRAIN, show_default=True, help="Where the utterances come from.")
@click.option("--speaker-model", default="microsoft/wavlm-base-plus-sv", show_default=True,
              help="Hub id or folder of an x-vector model, or log-mel-stats (no download).")
@click.option("--num-speakers", type=_Number(int, _AT_LEAST_TWO), default=10, show_default=True,
              help="Speakers to plot (at least 2).")
@click.option("--speakers", "speaker_choice", type=click.Choice(SPEAKER_CHOICES), default="random",
              show_default=True, help="A seeded random draw of speakers (the paper's), or those with the most "
                                      "utterances.")
@click.option("--per-speaker", type=_Number(int, _AT_LEAST_TWO), default=10, show_default=True,
              help="Utterances per speaker (at least 2: the Fisher ratio needs a spread within each speaker).")
@click.option("--out", required=True, metavar="PNG", help="The figure to write.")
@click.option("--seed", type=_Number(int, SEED), default=0, show_default=True,
              help="Which speakers and utterances are drawn.")
@click.option("--force", is_flag=True, help="Overwrite --out.")
def data_speakers(corpus: str, split: str, speaker_model: str, num_speakers: int, speaker_choice: str,
                  per_speaker: int, out: str, seed: int, force: bool) -> None:
    """The paper's Figure 2: speaker embeddings projected to 2-D, coloured by speaker.

    Shows whether a speaker extractor separates this corpus's speakers (the paper's reason why adding
    speaker embeddings did not help), with the Fisher ratio of the projection as a number.
    """
    from sertool.cli.console import out as console
    from sertool.experiments.speakers import speaker_figure

    figure = speaker_figure(corpus, out, split=split, speaker_model=speaker_model, num_speakers=num_speakers,
                            per_speaker=per_speaker, speakers=speaker_choice, seed=seed, force=force)
    console.print(f"Fisher ratio {figure.map.fisher_ratio:.2f} (between-/within-speaker variance of the 2-D points) "
                  f"on {figure.num_utterances:,} {split} utterances of {num_speakers} speakers; wrote {out}")


def _column_options(command):
    """One ``--<field>-column`` option per ``ColumnMap`` field, so the CLI and the importer cannot drift."""
    from sertool.data.columns import ColumnMap

    for spec in reversed(dataclasses.fields(ColumnMap)):
        command = click.option(spec.metadata["flag"], spec.name, default=spec.default,
                               show_default=spec.default is not None, metavar="NAME",
                               help=f"Column with {spec.metadata['help']}.")(command)
    return command


@data.command("manifest")
@click.argument("folder")
@click.argument("metadata")
@click.option("--out", required=True, metavar="CSV", help="The manifest to write.")
@_column_options
@click.option("--label-range", nargs=2, type=_Number(float), default=(1.0, 7.0), show_default=True, metavar="LOW HIGH",
              help="Scale of the A/V/D columns, mapped linearly onto 1..7 (e.g. 0 1 for values in 0..1).")
@click.option("--dev-fraction", type=_Number(float, PROBABILITY), default=0.15, show_default=True,
              help="Share of utterances for Development, in [0, 1).")
@click.option("--test-fraction", type=_Number(float, PROBABILITY), default=0.15, show_default=True,
              help="Share of utterances for Test1, in [0, 1).")
@click.option("--seed", type=_Number(int, SEED), default=0, show_default=True, help="Seed of the speaker assignment.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def data_manifest(folder: str, metadata: str, out: str, label_range: tuple[float, float], dev_fraction: float,
                  test_fraction: float, seed: int, force: bool, **columns: Any) -> None:
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
    from sertool.data.columns import ColumnMap
    from sertool.data.importer import make_manifest
    from sertool.data.info import summarize

    manifest = make_manifest(folder, metadata, out, columns=ColumnMap(**columns), label_range=label_range,
                             held_out_fractions=(dev_fraction, test_fraction), seed=seed, force=force)
    print_load_report(manifest.report)
    print_corpus_summary(f"{out} (manifest)", summarize(manifest))
    console.print(f"wrote {len(manifest.utterances):,} utterances to {out}")


class _SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options in groups, as docs/training.md and docs/models.md do: the
    config's ``data``, ``model`` and ``train`` sections (flags from ``_config_flags``), then the rest."""

    SECTIONS = (("data", "Data (the config's data section)"), ("model", "Model (the config's model section)"),
                ("train", "Training (the config's train section, and the seed)"))

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                groups.setdefault(self._section(param.name or ""), []).append(record)
        for key, title in (("run", "Run and output"), *self.SECTIONS):
            if groups.get(key):
                with formatter.section(title):
                    formatter.write_dl(groups[key])

    def _section(self, name: str) -> str:
        section, separator, _ = name.partition("__")
        if separator:
            return section
        from sertool.core.config import config_options  # a top-level config field (the seed) trains

        return "train" if any(spec.name == name and not spec.section for spec in config_options()) else "run"


def _config_flags(command):
    """One option per ``Config`` field (see ``sertool.core.config.config_options``); None means "not given"."""
    from sertool.core.config import config_options

    for spec in reversed(config_options()):
        name = f"{spec.section}__{spec.name}" if spec.section else spec.name
        default_text = ", ".join(spec.default) if spec.type is tuple else spec.default
        reset = f" (none: no {spec.name})" if spec.type is tuple else ""
        allowed = f"; {spec.bounds.describe()}" if spec.bounds else ""
        help_text = (f"{spec.help}{reset}  [default: {default_text if default_text not in ('', None) else 'none'}"
                     f"{allowed}]")
        if spec.type is bool:
            positive = spec.flag
            command = click.option(f"{positive}/--no-{positive[2:]}", name, default=None, help=help_text)(command)
        elif spec.type is tuple:
            command = click.option(spec.flag, name, multiple=True, type=click.Choice([*(spec.choices or ()), "none"]),
                                   help=help_text)(command)
        else:
            kind = (click.Choice(spec.choices) if spec.choices else
                    _Number(spec.type, spec.bounds) if spec.type in (int, float) else spec.type)
            command = click.option(spec.flag, name, type=kind, default=None, help=help_text)(command)
    return command


@cli.command("train", cls=_SectionedCommand)
@click.option("--config", "config_file", metavar="FILE",
              help="YAML config (a run folder's config.yaml is one); flags override it.")
@click.option("--out", metavar="RUN_DIR", help="Run folder to create: best.pt, last.pt, config, logs.")
@click.option("--resume", metavar="RUN_DIR", help="Continue the interrupted run in RUN_DIR exactly where it stopped "
              "(--corpus, --cache-dir, --feature-cache and --num-workers may point elsewhere).")
@click.option("--force", is_flag=True, help="Start over in an --out folder that already holds files.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default=DEFAULT_DEVICE, show_default=True,
              help="Where to train; under torchrun each process takes its LOCAL_RANK GPU.")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard scalars to RUN_DIR/tensorboard/ "
              "(needs the tensorboard package).")
@_config_flags
def train_command(config_file: str | None, out: str | None, resume: str | None, force: bool, device: str,
                  tensorboard: bool, **flags) -> None:
    """Train one system and write its run folder.

    Fields set neither by --config nor by a flag take the backbone's recipe: the paper's defaults below,
    except for --backbone fbank, which gets the small-cpu recipe (--recipe; docs/training.md).

    \b
      sertool train --corpus MSP-Podcast --backbone wavlm --aux gender --out runs/wavlm
      sertool train --corpus demo/corpus --backbone fbank --aux gender --out runs/fbank
      torchrun --nproc-per-node 4 -m sertool train --config wavlm.yaml --out runs/wavlm
    """
    from sertool.cli.console import train_reporter
    from sertool.training.loop import train
    from sertool.training.setup import resolve_train_config

    config, run_dir, relocated = resolve_train_config(config_file, flags, out=out, resume=resume)
    train(config, run_dir, resume=resume is not None, relocated=relocated, force=force, argv=sys.argv, device=device,
          reporter=train_reporter(run_dir, tensorboard=tensorboard))


def _option_flags(options_class):
    """One flag per field of an options dataclass (``sertool.inference.options``), nested option dataclasses
    (bootstrap, inference) flattened in place: the field's default, choices, bounds and help are the flag's."""
    def decorate(command):
        for spec, kind in reversed(_flag_fields(options_class)):
            meta = spec.metadata
            flag = meta["flag"] or "--" + spec.name.replace("_", "-")
            if kind is bool:
                command = click.option(flag, spec.name, is_flag=True, help=meta["help"])(command)
                continue
            value_type = (click.Choice(meta["choices"]) if meta["choices"] else
                          _Number(kind, meta["bounds"], many=meta["many"]) if meta["bounds"] else None)
            command = click.option(flag, spec.name, type=value_type, default=spec.default, show_default=True,
                                   required=meta["required"], metavar=meta["metavar"], help=meta["help"])(command)
        return command
    return decorate


def _flag_fields(options_class) -> list[tuple[dataclasses.Field, type]]:
    """The flag fields of ``options_class`` in declaration order, each with its value's type (a list's item's)."""
    hints = typing.get_type_hints(options_class)
    fields = []
    for spec in dataclasses.fields(options_class):
        if "help" not in spec.metadata:  # a nested options dataclass
            fields.extend(_flag_fields(spec.default_factory))
            continue
        kind = next(arg for arg in typing.get_args(hints[spec.name]) or (hints[spec.name],) if arg is not type(None))
        fields.append((spec, typing.get_args(kind)[0] if spec.metadata["many"] else kind))
    return fields


def _options_from(options_class, flags: dict):
    """The options dataclass filled from click's values (the inverse of ``_option_flags``), checked against its
    declarations as ``sertool.load`` checks the API's (``config.check_options``)."""
    options = _filled(options_class, flags)
    check_options(options, source=None)
    return options


def _filled(options_class, flags: dict):
    return options_class(**{spec.name: flags.pop(spec.name) if "help" in spec.metadata
                            else _filled(spec.default_factory, flags)
                            for spec in dataclasses.fields(options_class)})


@cli.command("evaluate")
@click.argument("model", metavar="CKPT")
@_option_flags(EvaluateOptions)
def evaluate_command(model: str, **flags) -> None:
    """CCC per attribute and average of CKPT on a split (whole utterances, batched by length).

    CKPT is a checkpoint, a run folder (its best.pt), a model folder (sertool export, or the authors'
    released models) or its hub id, a predictions CSV, or an ensemble JSON.
    """
    from sertool.cli.console import print_collapse_warnings, print_json, print_load_report, print_scores, print_written
    from sertool.inference.workflows import run_evaluate

    options = _options_from(EvaluateOptions, flags)
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
@_option_flags(PredictOptions)
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

    result = run_predict(model, paths, _options_from(PredictOptions, flags), on_load_report=print_load_report,
                         stream=sys.stdout)
    count = len(result.predictions)
    for path in result.written:
        console.print(f"wrote {path} ({count:,} file{'s' if count != 1 else ''})")


@cli.command("ensemble")
@click.argument("members", nargs=-1, required=True, metavar="MEMBER...")
@_option_flags(EnsembleOptions)
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

    options = _options_from(EnsembleOptions, flags)
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
@click.option("--out", required=True, metavar="DIR", help="The model folder to write: config.json, model.safetensors "
              "(weights, no pickle), README.md (the model card).")
@click.option("--push-to-hub", metavar="REPO", help="Also upload the folder to the model hub as REPO (owner/name); "
              "needs a token (hf auth login).")
@click.option("--force", is_flag=True, help="Overwrite the model files of an earlier export in --out.")
def export_command(model: str, out: str, push_to_hub: str | None, force: bool) -> None:
    """Write RUN (a run folder, checkpoint, model folder or hub id) as a self-contained model folder.

    Every command and sertool.load() accept the folder (or its hub id after --push-to-hub) in place of
    RUN, with the same predictions.

    \b
      sertool export runs/wavlm --out models/wavlm
      sertool export runs/wavlm --out models/wavlm --push-to-hub me/wavlm-msp-podcast
    """
    from sertool.cli.console import out as console
    from sertool.store.export import export_model

    result = export_model(model, out, force=force, push_to_hub=push_to_hub)
    for path in result.written:
        console.print(f"wrote {path}")
    if result.url:
        console.print(f"uploaded to {result.url}")


@cli.command("baseline")
@click.option("--corpus", required=True, metavar="ROOT", help="MSP-Podcast root or manifest.")
@click.option("--out", required=True, metavar="DIR", help="Writes <split>.csv (predictions) and summary.json here.")
@click.option("--train-split", default=TRAIN, show_default=True, help="The split the ridge is fitted on.")
@click.option("--valid-split", default=DEVELOPMENT, show_default=True,
              help="The split that chooses the regularisation strength (by CCC, per attribute).")
@click.option("--force", is_flag=True, help="Overwrite earlier outputs in --out.")
@click.option("--cache-dir", help="Where the corpus scan and each clip's statistics are kept for the next command "
                                  "(default: $SERTOOL_CACHE or ~/.cache/sertool).")
@click.option("--num-workers", default=2, show_default=True, type=_Number(int, WORKERS),
              help="Processes that compute the statistics of clips not cached yet (0: this one).")
def baseline_command(corpus: str, out: str, train_split: str, valid_split: str, force: bool, cache_dir: str | None,
                     num_workers: int) -> None:
    """The floor: ridge regression on utterance-level acoustic statistics (log-mel mean/std per band, ...).

    Fitted on --train-split, alpha chosen on --valid-split; every other split is predicted into
    DIR/<split>.csv, which evaluate and ensemble accept like a checkpoint.

    \b
      sertool baseline --corpus MSP-Podcast --out runs/baseline
      sertool ensemble runs/wavlm runs/baseline/Development.csv --corpus MSP-Podcast
    """
    from sertool.baseline.run import run_baseline
    from sertool.cli.console import out as console
    from sertool.cli.console import print_load_report, print_scores

    with task("acoustic statistics") as progress:
        result = run_baseline(corpus, out, train_split=train_split, valid_split=valid_split, force=force,
                              cache_dir=cache_dir, num_workers=num_workers, progress=progress)
    print_load_report(result.load_report)
    alphas = ", ".join(f"{name} {alpha:g}" for name, alpha in result.alphas.items())
    console.print(f"fitted on {result.train_utterances:,} {train_split} utterances; alpha chosen on {valid_split}: "
                  f"{alphas}")
    for split, scores in result.scores.items():
        role = " (chose alpha)" if split == valid_split else ""
        print_scores(f"{split} of {corpus}{role}", [scores])
    for path in result.written:
        console.print(f"wrote {path}")


@cli.command("plot")
@click.argument("runs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option("--out", required=True, metavar="PNG", help="The figure to write.")
@click.option("--force", is_flag=True, help="Overwrite --out.")
def plot_command(runs: tuple[str, ...], out: str, force: bool) -> None:
    """Training curves of one or more runs, overlaid: training loss and validation CCC per attribute over
    optimiser steps (what every run folder's curves.png shows for its own run).

    \b
      sertool plot runs/wavlm runs/mmwavlm --out curves.png
    """
    from sertool.cli.console import print_written
    from sertool.training.curves import plot_runs

    print_written([plot_runs(runs, out, force=force)])


@cli.command("reproduce")
@click.option("--corpus", required=True, metavar="ROOT", help="The corpus every system trains and is evaluated on.")
@click.option("--grid", metavar="FILE", help="The experiment grid (default: the paper's, shipped with sertool: "
              "sertool/configs/paper/grid.yaml).")
@click.option("--scale", type=click.Choice(SCALES), default="demo", show_default=True,
              help="demo: CPU stand-ins for the pretrained models; real: the paper's models.")
@click.option("--out", default="results/demo", show_default=True, metavar="DIR",
              help="runs/, predictions/, scores/ and tables.md go here.")
@click.option("--seeds", type=_Number(int, Bounds(at_least=1, at_most=100)), default=1, show_default=True, metavar="N",
              help="Train every system N times (seeds s … s+N−1); the tables show mean ± sd over them.")
@click.option("--systems", metavar="A,B,...", help="Only these systems (and ensembles made of them).")
@click.option("--model", "models", multiple=True, metavar="ID=DIR",
              help="Real scale without hub access: load hub id ID from folder DIR (repeatable).")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default=DEFAULT_DEVICE, show_default=True)
def reproduce_command(corpus: str, grid: str | None, scale: str, out: str, seeds: int, systems: str | None,
                      models: tuple[str, ...], device: str) -> None:
    """Run the paper's experiment grid and write tables laid out like the paper's (make reproduce).

    Interrupted? Run it again: finished systems are skipped and an interrupted training resumes.
    """
    from sertool.cli.console import RichTrainReporter, err
    from sertool.cli.console import out as console
    from sertool.experiments.reproduce import parse_model_locations, reproduce
    from sertool.guards.reads import MAX_TABLE_BYTES, read_user_text

    path = reproduce(grid, corpus=corpus, scale=scale, out_dir=out, seeds=seeds,
                     model_locations=parse_model_locations(models),
                     only=systems.split(",") if systems else None, device=device, reporter_factory=RichTrainReporter,
                     say=lambda text: err.print(f"[bold]reproduce:[/] {text}"))
    console.print(read_user_text(path, what="tables", max_bytes=MAX_TABLE_BYTES), markup=False, highlight=False)
    console.print(f"wrote {path}")


def main() -> None:
    """Entry point of the `sertool` console script and `python -m sertool`."""
    from sertool.core.interrupts import raise_on_termination

    raise_on_termination()  # SIGTERM ends like Ctrl-C: temporary files removed, a message, exit status 143
    cli(prog_name="sertool")
