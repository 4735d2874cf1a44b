"""The work behind `evaluate`, `predict` and `ensemble`; the CLI only parses flags and prints results."""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from sertool.core.errors import SertoolError
from sertool.core.hub import is_repo_id
from sertool.core.io import write_json_document
from sertool.core.progress import task
from sertool.core.splits import DEVELOPMENT
from sertool.data.records import ATTRIBUTES, GENDERS, Utterance
from sertool.data.report import LoadReport
from sertool.data.selection import HeldOut, held_out, training_data_note
from sertool.guards.outputs import OutputPlan
from sertool.inference.ensemble import (
    EnsemblePlan,
    apply_plan,
    mean_plan,
    refuse_repeated_members,
    select_per_attribute,
    write_plan,
)
from sertool.inference.inputs import (
    WindowMerger,
    attach_transcripts,
    check_windows,
    collect_inputs,
    corpus_split,
    piece_count,
    require_complete,
    windowed_pieces,
)
from sertool.inference.options import EnsembleOptions, EvaluateOptions, PredictOptions
from sertool.inference.predictions import SCALE_UNIT, Predictions
from sertool.inference.predictor import (
    InferenceOptions,
    Predictor,
    PredictorOutput,
    member_options,
    on_scale,
    open_predictor,
    union_of_training_ids,
    unit_scaling,
)
from sertool.inference.windows import default_windows
from sertool.inference.writers import (
    WRITERS,
    check_submission_attributes,
    format_of,
    write_predictions_file,
    write_submission,
)
from sertool.models.bootstrap import BootstrapResult, Interval, bootstrap_ccc
from sertool.models.ccc import ccc_scores, collapsed_attributes

# Files or windows `predict` holds at a time: 256 ten-second windows are ~43 minutes of audio, ~21
# length-sorted batches of the default 120 padded seconds, while the records and ASR audio in flight stay
# a few MB.
PREDICT_CHUNK_PIECES = 256


@dataclass
class Scores:
    """CCC per attribute and their average on one split, plus gender metrics where a model has that head.

    ``ccc`` has the attributes the system predicts (all three, or those of a system of fewer:
    ``train.attributes``) and "average", the mean of those.
    """

    name: str
    ccc: dict[str, float]
    num_utterances: int
    gender_accuracy: float | None = None
    gender_uar: float | None = None  # unweighted average recall over Male / Female
    # Utterances of the split left out because the system trained on them, and whether its training data
    # was known at all (a predictions CSV does not say what made it).
    excluded_trained_on: int = 0
    training_data_known: bool = True
    # Initial models (``train --init-from``) of unknown training data: ``training_data_note`` says so.
    unknown_training_data: tuple[str, ...] = ()
    # Bootstrap confidence interval of each CCC (and "average"), with ``evaluate --bootstrap B``.
    ci: dict[str, Interval] | None = None
    collapsed: list[str] = field(default_factory=list)  # attributes with near-constant predictions

    def to_json(self) -> dict[str, Any]:
        """The row as JSON-ready data: the same numbers ``print_scores`` shows, unrounded."""
        return {"system": self.name, "utterances": self.num_utterances, "ccc": dict(self.ccc),
                "ci": None if self.ci is None else {name: [ci.low, ci.high] for name, ci in self.ci.items()},
                "gender_accuracy": self.gender_accuracy, "gender_uar": self.gender_uar,
                "excluded_trained_on": self.excluded_trained_on, "training_data_known": self.training_data_known,
                "training_data_note": self.training_data_note, "collapsed": list(self.collapsed)}

    @property
    def training_data_note(self) -> str | None:
        """``selection.training_data_note``: the line that names an initial model of unknown training data."""
        return training_data_note(self.name, self.unknown_training_data)


def scores_document(rows: Sequence[Scores], *, split: str, corpus: str | Path | None,
                    differences: Sequence[Difference] = ()) -> dict[str, Any]:
    """What ``evaluate --scores`` / ``ensemble --scores`` write (and ``--json`` prints): the split, each
    system's CCC per attribute and average with its utterance count, and the ensemble's gains."""
    return {"split": split, "corpus": None if corpus is None else str(corpus),
            "systems": [row.to_json() for row in rows],
            "differences": [{"system": item.system, "reference": item.reference, "ccc": dict(item.value),
                             "ci": {name: [ci.low, ci.high] for name, ci in item.ci.items()}}
                            for item in differences]}


@dataclass
class EvaluationResult:
    scores: Scores
    predictions: Predictions
    written: list[Path] = field(default_factory=list)
    document: dict[str, Any] = field(default_factory=dict)  # scores_document: what --scores writes


def labelled(utterances: Sequence[Utterance], split: str) -> np.ndarray:
    """The ``[N, 3]`` labels of ``utterances`` (A, V, D; ``of_attributes`` takes a system's columns).

    Raises:
        SertoolError: some utterances have no labels (e.g. Test3), naming the split.
    """
    unlabelled = [utt.id for utt in utterances if not utt.has_labels]
    if unlabelled:
        raise SertoolError(f"--split {split}: {len(unlabelled)} utterances have no A/V/D labels "
                           f"(e.g. {unlabelled[0]}); evaluate needs labels — use `sertool predict` for "
                           "unlabelled audio")
    return np.array([utt.labels() for utt in utterances], dtype=np.float64).reshape(len(utterances), len(ATTRIBUTES))


def of_attributes(labels: np.ndarray, attributes: Sequence[str]) -> np.ndarray:
    """The columns of ``[N, 3]`` ``labels`` (A, V, D) of ``attributes``, those a system predicts."""
    return labels[:, [ATTRIBUTES.index(name) for name in attributes]]


def score(name: str, output: PredictorOutput, utterances: Sequence[Utterance], labels: np.ndarray, *,
          held_out: HeldOut | None = None, unknown_from: Sequence[str] = ()) -> Scores:
    """CCC over the whole split (never per batch) of each attribute the system predicts and their average, the
    attributes whose predictions collapsed to a near-constant, and gender accuracy / UAR where the model predicts
    it. ``labels`` are ``[N, 3]`` (A, V, D): each attribute is scored against its own.

    ``held_out`` (from ``selection.held_out``) records what was left out of ``utterances`` beforehand;
    ``unknown_from`` names the system's initial models of unknown training data (``unknown_training_data``).
    """
    values, attributes = output.predictions.values, output.predictions.attributes
    labels = of_attributes(labels, attributes)
    scores = Scores(name, ccc_scores(values, labels, attributes=attributes), len(utterances),
                    collapsed=collapsed_attributes(values, labels, attributes=attributes),
                    excluded_trained_on=held_out.excluded if held_out else 0,
                    training_data_known=held_out.known if held_out else True,
                    unknown_training_data=tuple(unknown_from))
    if output.gender_probabilities is not None:
        known = np.array([utt.gender in GENDERS for utt in utterances])
        if known.any():
            truth = np.array([GENDERS.index(utt.gender) for utt in utterances if utt.gender in GENDERS])
            guess = output.gender_probabilities[known].argmax(axis=1)
            scores.gender_accuracy = float((guess == truth).mean())
            recalls = [float((guess[truth == k] == k).mean()) for k in range(len(GENDERS)) if (truth == k).any()]
            scores.gender_uar = float(np.mean(recalls))
    return scores


def _held_out(utterances: Sequence[Utterance], training_ids: frozenset[str] | None, *, split: str,
              name: str) -> HeldOut:
    """``selection.held_out``, refusing a split the system trained on entirely."""
    kept = held_out(utterances, training_ids)
    if utterances and not kept.utterances:
        raise SertoolError(f"--split {split}: {name} trained on all {len(utterances)} of its utterances; a score on "
                           "them would say nothing about unseen data. Evaluate a held-out split")
    return kept


def declare_outputs(outputs: OutputPlan, *, out: str | None, file_format: str | None,
                    submission: str | None) -> tuple[Path | None, Path | None]:
    """Before any work: declare ``--out`` and ``--submission`` in ``outputs``, and check ``out``'s format is known.

    Returns:
        Both as absolute paths (None where not given).
    """
    out_path = outputs.file(out, flag="--out")
    if out_path is not None and file_format is None:
        format_of(out_path)
    return out_path, outputs.file(submission, flag="--submission")


def evaluate(model_path: str | Path, utterances: Sequence[Utterance], *, split: str, options: InferenceOptions,
             outputs: OutputPlan | None = None, out: Path | None = None, plot: Path | None = None,
             scores: Path | None = None, corpus: str | Path | None = None, bootstrap: int = 0,
             bootstrap_seed: int = 0) -> EvaluationResult:
    """Predict a labelled split with a checkpoint / run folder / CSV / ensemble and score it.

    Utterances the model trained on (recorded in its checkpoint, e.g. Development's O/X of a
    ``--dev-ox-to-train`` run) are left out of the score, the predictions file and the plot; the
    ``Scores`` say how many.

    Writes the predictions (labels beside them) to ``out``, the plot to ``plot`` and the scores as JSON
    (``scores_document``; ``corpus`` names where the split came from) to ``scores`` when given, each
    declared beforehand in ``outputs``.
    ``bootstrap`` > 0 adds a bootstrap confidence interval of each CCC (``sertool.models.bootstrap``,
    ``bootstrap`` resamples of the scored utterances, seeded by ``bootstrap_seed``).

    Raises:
        SertoolError: unlabelled utterances, or every utterance of the split was trained on.
    """
    outputs = outputs or OutputPlan()
    predictor = open_predictor(model_path, options)
    kept = _held_out(utterances, predictor.training_ids, split=split, name=predictor.name)
    utterances = kept.utterances
    labels = labelled(utterances, split)
    output = predictor.predict(utterances)
    result = EvaluationResult(score(predictor.name, output, utterances, labels, held_out=kept,
                                    unknown_from=predictor.unknown_training_from), output.predictions)
    if bootstrap:
        result.scores.ci = _resampled([output.predictions], labels, bootstrap, bootstrap_seed).interval(0)
    result.document = scores_document([result.scores], split=split, corpus=corpus)
    own_labels = of_attributes(labels, output.predictions.attributes)
    if out is not None:
        write_predictions_file(outputs, out, output.predictions, labels=own_labels)
        result.written.append(out)
    if plot is not None:
        from sertool.inference.plots import plot_evaluation

        with outputs.writing(plot, "wb") as handle:
            plot_evaluation(output.predictions, own_labels, [utt.emo_class for utt in utterances], handle)
        result.written.append(plot)
    if scores is not None:
        with outputs.writing(scores) as handle:
            write_json_document(result.document, handle)
        result.written.append(scores)
    return result


def predict(model_path: str | Path, utterances: Sequence[Utterance], *, options: InferenceOptions,
            window_s: float | None = None, hop_s: float | None = None) -> Predictions:
    """Predict every utterance with the model at ``model_path`` (see ``predict_with``)."""
    return predict_with(open_predictor(model_path, options), utterances, window_s=window_s, hop_s=hop_s)


def predict_with(predictor: Predictor, utterances: Sequence[Utterance], *, window_s: float | None = None,
                 hop_s: float | None = None) -> Predictions:
    """Predict every utterance with an open predictor (`sertool predict` and ``sertool.load`` alike);
    files longer than ``window_s`` are cut into windows (``hop_s`` apart), each window becomes a segment
    row and the file's row is their duration-weighted mean. ``window_s`` defaults to the clip length the
    model was made for (``predictor.input_s``), so a clip of that length runs whole as in training; see
    ``windows.default_windows``.

    The input streams through the model ``PREDICT_CHUNK_PIECES`` pieces (files or windows) at a time, and
    each window reads only its own span, so memory is bounded by the chunk and batch sizes, whatever the
    length and number of the files; what grows with them is the output (a few numbers per window).

    Raises:
        SertoolError: a file too short to predict (before any work), unreadable audio, or a prediction
            that is not finite (naming the file or window).
    """
    window_s, hop_s = default_windows(predictor.input_s, window_s=window_s, hop_s=hop_s)
    check_windows(utterances, window_s=window_s, hop_s=hop_s)
    merger = WindowMerger()
    pieces = windowed_pieces(utterances, window_s=window_s, hop_s=hop_s)
    total, done = piece_count(utterances, window_s=window_s, hop_s=hop_s), 0
    # The whole input's progress: each chunk's prediction pass is a task of its own, one chunk long.
    with task(f"predicting {len(utterances):,} files ({total:,} pieces of at most {window_s:g} s)") as update:
        while chunk := list(itertools.islice(pieces, PREDICT_CHUNK_PIECES)):
            merger.add(chunk, predictor.predict([piece.utterance for piece in chunk]).predictions)
            done += len(chunk)
            update(done, total)
    return merger.result(utterances)


def write_outputs(predictions: Predictions, *, outputs: OutputPlan, out: Path | None, file_format: str | None,
                  submission: Path | None, expected_ids: Sequence[str] | None, stream: TextIO | None,
                  shown: Predictions | None = None, system: str = "the system") -> list[Path]:
    """Predictions to ``out`` (format from ``file_format`` or the suffix) or ``stream``; a challenge
    submission to ``submission`` (both declared in ``outputs``). Returns the files written.

    ``shown``: what ``out`` or ``stream`` gets, if not ``predictions`` (``predict --scale unit``); the
    submission is always ``predictions``, on the 1..7 rater scale the challenge scores. ``system`` names what
    made them, in the refusal of a submission of fewer attributes than three."""
    shown = predictions if shown is None else shown
    written = []
    if submission is not None:
        write_submission(outputs, submission, predictions, expected_ids=expected_ids, system=system)
        written.append(submission)
    if out is not None:
        write_predictions_file(outputs, out, shown, file_format=file_format)
        written.append(out)
    elif submission is None and stream is not None:
        WRITERS[file_format or "csv"](shown, stream)
    return written


@dataclass
class EnsembleResult:
    member_scores: list[Scores]
    ensemble_scores: Scores | None
    plan: EnsemblePlan
    predictions: Predictions
    # With ``bootstrap``: the ensemble's CCC minus each member's, with a paired bootstrap interval.
    differences: list[Difference] = field(default_factory=list)
    document: dict[str, Any] | None = None  # scores_document (None on an unlabelled split): what --scores writes
    written: list[Path] = field(default_factory=list)


@dataclass
class Difference:
    """``CCC(system) − CCC(reference)`` per score on the same utterances, with its paired bootstrap CI."""

    system: str
    reference: str
    value: dict[str, float]
    ci: dict[str, Interval]


def difference(scores: Sequence[Scores], resampled: BootstrapResult, *, system: int, reference: int) -> Difference:
    """``scores[system]`` minus ``scores[reference]``; the indices are also the bootstrap's systems. Of the
    attributes both predict, and of the average where both predict the same attributes (``BootstrapResult``)."""
    ci = resampled.difference(system, reference)
    return Difference(scores[system].name, scores[reference].name,
                      {name: scores[system].ccc[name] - scores[reference].ccc[name] for name in ci}, ci)


def ensemble(member_paths: Sequence[str | Path], utterances: Sequence[Utterance], *, split: str,
             options: InferenceOptions, weights: Sequence[float] | None = None, per_attribute: bool = False,
             selection_utterances: Sequence[Utterance] | None = None, selection_split: str = DEVELOPMENT,
             outputs: OutputPlan | None = None, save: Path | None = None, scores: Path | None = None,
             corpus: str | Path | None = None, require_scores: bool = False, bootstrap: int = 0,
             bootstrap_seed: int = 0, backbone_paths: Sequence[str | None] = (),
             submission: Path | None = None) -> EnsembleResult:
    """Combine members (checkpoints, run folders, predictions CSVs, saved ensembles) on ``utterances``.

    Args:
        weights: one per member for a weighted mean (default: the paper's plain mean).
        per_attribute: for each attribute, use the member subset that is best on the selection split.
        selection_utterances: the labelled split the per-attribute choice is made on (default:
            ``utterances``, which must then be labelled).
        outputs: the command's outputs, in which ``save`` and ``scores`` are declared.
        save: write the plan as JSON, with members named relative to its folder; evaluate and predict take
            it in place of a checkpoint.
        bootstrap: resamples of a bootstrap CI of every CCC, and of the ensemble's gain over each member
            (paired: the same resamples for all); 0: none.
        bootstrap_seed: the resamples' seed.
        backbone_paths: one per member, in order: where that member's speech backbone lives here (None:
            where it recorded), e.g. WavLM and Whisper folders for the paper's pair offline; saved in the plan
            (named like the members). ``options.backbone_path`` instead applies one location to every member.
        scores: write the members' and the ensemble's scores (and gains) here as JSON (``scores_document``;
            ``corpus`` names where the split came from); the split must be labelled.
        submission: the ``--submission`` file that follows: the members must predict every attribute between
            them, refused before any prediction.
        require_scores: the caller needs ``EnsembleResult.document`` (``--json``): refuse an unlabelled split
            before any work, as ``scores`` does.

    Each attribute comes from the members that predict it (``mean_plan``'s ``coverage``): members of one attribute
    each (``train --attributes``) make one system of every attribute they cover, and an attribute that no member
    predicts is absent from the ensemble's predictions.

    Scores (and the per-attribute choice) leave out every utterance any member trained on: the members
    and the ensemble are scored on the same utterances, the intersection of the members' held-out sets.
    The predictions cover every utterance.
    """
    outputs = outputs or OutputPlan()
    has_labels = all(utt.has_labels for utt in utterances)
    _check_ensemble_request(len(member_paths), split=split, weights=weights, per_attribute=per_attribute,
                            scores_needed=(scores is not None or require_scores) and not has_labels)
    names = [_member_name(path, save) for path in member_paths]
    refuse_repeated_members(names, [str(path) for path in member_paths])
    backbones = _member_backbones(backbone_paths, len(member_paths), options=options)
    predictors = [open_predictor(path, member_options(options, backbone))
                  for path, backbone in zip(member_paths, backbones, strict=True)]
    if submission is not None:
        check_submission_attributes([name for predictor in predictors for name in predictor.attributes],
                                    path=submission, system="the ensemble's members")
    trained_on = union_of_training_ids(predictors)
    member_outputs = [predictor.predict(utterances) for predictor in predictors]
    members = [output.predictions for output in member_outputs]
    if per_attribute:
        chosen_on = _held_out(selection_utterances if selection_utterances is not None else utterances, trained_on,
                              split=selection_split, name="the ensemble's members").utterances
        chosen_ids = [utt.id for utt in chosen_on]
        chosen_members = [member.take(chosen_ids) for member in members] if selection_utterances is None else \
            [predictor.predict(chosen_on).predictions for predictor in predictors]
        plan = select_per_attribute(chosen_members, labelled(chosen_on, selection_split), names=names)
    else:
        plan = mean_plan(names, weights, coverage=[predictor.attributes for predictor in predictors])
    if backbone_paths:
        plan = dataclasses.replace(plan, backbone_paths=tuple(None if backbone is None else _member_name(backbone, save)
                                                              for backbone in backbones))
    combined = apply_plan(plan, members)
    result = EnsembleResult([], None, plan, combined)
    if has_labels:
        kept = _held_out(utterances, trained_on, split=split, name="the ensemble's members")
        labels = labelled(kept.utterances, split)
        scored = [_rows(output, kept.utterances) for output in [*member_outputs, PredictorOutput(combined)]]
        names = [predictor.name for predictor in predictors] + ["ensemble"]
        unknown = [predictor.unknown_training_from for predictor in predictors]
        unknown.append(tuple(dict.fromkeys(name for member in unknown for name in member)))
        rows = [score(name, output, kept.utterances, labels, held_out=kept, unknown_from=member_unknown)
                for name, output, member_unknown in zip(names, scored, unknown, strict=True)]
        result.member_scores, result.ensemble_scores = rows[:-1], rows[-1]
        if bootstrap:
            resampled = _resampled([output.predictions for output in scored], labels, bootstrap, bootstrap_seed)
            for index, row in enumerate(rows):
                row.ci = resampled.interval(index)
            result.differences = [difference(rows, resampled, system=len(predictors), reference=index)
                                  for index in range(len(predictors))]
        result.document = scores_document(rows, split=split, corpus=corpus, differences=result.differences)
    if save is not None:
        with outputs.writing(save) as handle:
            write_plan(plan, handle)
        result.written.append(save)
    if scores is not None:
        with outputs.writing(scores) as handle:
            write_json_document(result.document, handle)
        result.written.append(scores)
    return result


def _check_ensemble_request(num_members: int, *, split: str, weights: Sequence[float] | None, per_attribute: bool,
                            scores_needed: bool) -> None:
    """Before any work: an ensemble's flags fit together (``scores_needed``: scores asked of an unlabelled split).

    Raises:
        SertoolError: naming the flags that conflict.
    """
    if scores_needed:
        raise SertoolError(f"--split {split} has no A/V/D labels: there are no scores for --scores or --json; "
                           "drop them, or choose a labelled split")
    if num_members < 2:
        raise SertoolError("an ensemble needs at least two members")
    if weights and len(weights) != num_members:
        raise SertoolError(f"--weights: {len(weights)} weights for {num_members} members")
    if weights and per_attribute:
        raise SertoolError("--weights and --per-attribute best exclude each other")


def _member_backbones(backbone_paths: Sequence[str | None], num_members: int, *,
                      options: InferenceOptions) -> list[str | None]:
    """Each member's backbone location (``--member-backbone-path``; ``-`` or None: the member's own).

    Raises:
        SertoolError: not one per member, or given together with ``--backbone-path``.
    """
    if not backbone_paths:
        return [None] * num_members
    if options.backbone_path is not None:
        raise SertoolError("--backbone-path and --member-backbone-path exclude each other: give --member-backbone-path "
                           "once per member (- for a member's own backbone), or one --backbone-path for all")
    if len(backbone_paths) != num_members:
        raise SertoolError(f"--member-backbone-path: {len(backbone_paths)} given for {num_members} members; give it "
                           "once per member, in the members' order (- for a member's own backbone)")
    return [None if path in (None, "-") else path for path in backbone_paths]


def _resampled(predictions: list[Predictions], labels: np.ndarray, num_resamples: int, seed: int) -> BootstrapResult:
    """``bootstrap_ccc`` of each system's attributes against the ``[N, 3]`` ``labels``, refusing what cannot be
    resampled with a message that names the flag."""
    if len(labels) < 2:
        raise SertoolError(f"--bootstrap: {len(labels)} scored utterance(s); resampling needs at least 2")
    return bootstrap_ccc([system.values for system in predictions], labels, num_resamples=num_resamples, seed=seed,
                         attributes=[system.attributes for system in predictions])


def _rows(output: PredictorOutput, utterances: Sequence[Utterance]) -> PredictorOutput:
    """The rows of ``output`` for ``utterances``, in their order."""
    ids = [utt.id for utt in utterances]
    if ids == output.predictions.ids:
        return output
    row_of = {file_id: row for row, file_id in enumerate(output.predictions.ids)}
    rows = [row_of[file_id] for file_id in ids]
    gender = None if output.gender_probabilities is None else output.gender_probabilities[rows]
    return PredictorOutput(output.predictions.take(ids), gender)


def _member_name(path: str | Path, save: Path | None) -> str:
    """How a saved plan names a member: relative to the plan's folder when possible; a hub id as itself."""
    if not Path(path).expanduser().exists() and is_repo_id(str(path)):
        return str(path)
    path = Path(path).expanduser().resolve()
    if save is None:
        return str(path)
    base = save.expanduser().resolve().parent
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


# ---- the commands: each takes its options dataclass (sertool.inference.options) and does the whole command ----
LoadReportHook = Callable[[LoadReport], None]  # shows what reading the input dropped, before the model runs


def run_evaluate(model: str | Path, options: EvaluateOptions, *, on_load_report: LoadReportHook) -> EvaluationResult:
    """`sertool evaluate`: ``options.split`` of ``options.corpus``, scored with ``model`` (see ``evaluate``).

    Raises:
        SertoolError: as ``corpus_split`` and ``evaluate``.
    """
    outputs = OutputPlan(force=options.force)
    out, _ = declare_outputs(outputs, out=options.out, file_format=None, submission=None)
    plot = outputs.file(options.plot, flag="--plot")
    scores = outputs.file(options.output.scores, flag="--scores")
    utterances, report = corpus_split(options.corpus, options.split, cache_dir=options.inference.cache_dir)
    on_load_report(report)
    return evaluate(model, utterances, split=options.split, options=options.inference, outputs=outputs, out=out,
                    plot=plot, scores=scores, corpus=options.corpus, bootstrap=options.bootstrap.bootstrap,
                    bootstrap_seed=options.bootstrap.bootstrap_seed)


@dataclass
class PredictResult:
    predictions: Predictions
    written: list[Path]


def run_predict(model: str | Path, paths: Sequence[str], options: PredictOptions, *, on_load_report: LoadReportHook,
                stream: TextIO) -> PredictResult:
    """`sertool predict`: the audio ``paths`` or a split of ``options.corpus`` (one of the two), their
    transcripts attached, predicted, and written to ``options.out`` (else ``stream``) and the submission.

    The outputs are checked before any work; a submission refuses input that dropped rows of its split.

    Raises:
        SertoolError: both or neither of ``paths`` and a corpus, an output that may not be written, an
            incomplete submission, or as ``predict``.
    """
    if bool(paths) == bool(options.corpus):
        raise SertoolError("give audio PATHS or --corpus ROOT (with --split), not both or neither")
    outputs = OutputPlan(force=options.force)
    out, submission = declare_outputs(outputs, out=options.out, file_format=options.file_format,
                                      submission=options.submission)
    cache_dir = options.inference.cache_dir
    utterances, report = (corpus_split(options.corpus, options.split, cache_dir=cache_dir) if options.corpus
                          else collect_inputs(paths, cache_dir=cache_dir))
    on_load_report(report)
    if submission is not None:
        require_complete(report, options.split if options.corpus else None, purpose=f"--submission {submission}")
    if options.transcripts:
        utterances = attach_transcripts(utterances, options.transcripts)
    predictor = open_predictor(model, options.inference)
    if submission is not None:  # a system of fewer attributes: refused before any work
        check_submission_attributes(predictor.attributes, path=submission, system=predictor.name)
    if options.scale == SCALE_UNIT:
        unit_scaling(predictor)  # a predictions CSV has none: refused before any work
    predictions = predict_with(predictor, utterances, window_s=options.window_s, hop_s=options.hop_s)
    shown = on_scale(predictions, predictor, options.scale)  # the submission stays on 1..7
    written = write_outputs(predictions, outputs=outputs, out=out, file_format=options.file_format,
                            submission=submission, expected_ids=[utt.id for utt in utterances], stream=stream,
                            shown=shown, system=predictor.name)
    return PredictResult(shown, written)


def run_ensemble(members: Sequence[str | Path], options: EnsembleOptions, *,
                 on_load_report: LoadReportHook) -> EnsembleResult:
    """`sertool ensemble`: ``members`` combined on ``options.split`` (see ``ensemble``), the per-attribute
    choice made on ``options.select_split``, then the predictions, submission and plan written.

    Raises:
        SertoolError: an output that may not be written (checked before any work), an incomplete
            submission, or as ``ensemble``.
    """
    outputs = OutputPlan(force=options.force)
    out, submission = declare_outputs(outputs, out=options.out, file_format=None, submission=options.submission)
    save = outputs.file(options.save, flag="--save")
    scores = outputs.file(options.output.scores, flag="--scores")
    cache_dir = options.inference.cache_dir
    utterances, report = corpus_split(options.corpus, options.split, cache_dir=cache_dir)
    on_load_report(report)
    if submission is not None:
        require_complete(report, options.split, purpose=f"--submission {submission}")
    per_attribute = options.per_attribute is not None  # its one choice: best
    selection = (corpus_split(options.corpus, options.select_split, cache_dir=cache_dir)[0]
                 if per_attribute and options.select_split != options.split else None)
    result = ensemble(members, utterances, split=options.split, options=options.inference, weights=options.weights,
                      per_attribute=per_attribute, selection_utterances=selection,
                      selection_split=options.select_split, outputs=outputs, save=save, scores=scores,
                      corpus=options.corpus, require_scores=options.output.as_json,
                      bootstrap=options.bootstrap.bootstrap, bootstrap_seed=options.bootstrap.bootstrap_seed,
                      backbone_paths=options.member_backbone_paths, submission=submission)
    result.written[:0] = write_outputs(result.predictions, outputs=outputs, out=out, file_format=None,
                                       submission=submission, expected_ids=[utt.id for utt in utterances],
                                       stream=None, system="the ensemble")
    return result
