"""`make reproduce`: train, evaluate and ensemble the paper's grid; write tables laid out like the paper's.

Every system is trained ``seeds`` times (seeds ``s, s + 1, ...`` from its config's seed ``s``); a table cell is
the mean ± sample standard deviation of its CCC over the seeds, and an ensemble is scored per seed (the
ensemble of the seed-k members) before the same mean ± sd. Every number is computed on utterances its
system never trained on: `evaluate` leaves out the utterances a checkpoint records as its training data
(Development's O/X for ``--dev-ox-to-train`` systems), and an ensemble is scored on the intersection of its
members' held-out sets. Rows whose evaluation set differs say so: each row names its utterance count.

Resumable: a (system, seed) whose scores are recorded for the same config is skipped, a run folder with a
``last.pt`` but no ``summary.json`` (an interrupted training) is resumed, and a finished run is only
evaluated. A system that fails (e.g. a model that cannot be loaded) is reported in its row and the grid goes
on.

Layout of ``out_dir``: ``runs/<system>/seed<k>/``, ``predictions/<system or ensemble id>/seed<k>-<split>.csv``,
``scores/<system>/seed<k>.json``, ``tables.md`` (the paper's tables) and ``variants.md`` (the variants').
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sertool.core.constants import CONFIG_NAME, LAST_NAME, SCORE_NAMES, SUMMARY_NAME
from sertool.core.errors import SertoolError
from sertool.core.io import load_json
from sertool.core.splits import DEVELOPMENT, HELD_OUT_SPLITS, TEST1, TEST3
from sertool.data.corpus import open_corpus
from sertool.data.records import Utterance
from sertool.data.selection import training_data_note
from sertool.experiments.grid import PAPER_GRID, PARTS, SCALES, Ensemble, Grid, SubmissionTable, read_grid
from sertool.experiments.options import ReproduceOptions
from sertool.guards.outputs import OutputPlan
from sertool.inference.predictions import read_predictions
from sertool.inference.predictor import InferenceOptions
from sertool.inference.workflows import Scores, ensemble, evaluate
from sertool.inference.writers import write_predictions_file
from sertool.training.loop import Reporter, train

EVAL_SPLITS = HELD_OUT_SPLITS
COLUMNS = SCORE_NAMES
# The tables of each part of the grid, in --out: the paper's laid out like the paper's, and the variants'.
TABLES_NAMES = {"paper": "tables.md", "variants": "variants.md"}


def parse_model_locations(items: Sequence[str]) -> dict[str, str]:
    """``--model HUB_ID=FOLDER`` values → ``{hub id: folder}`` (``reproduce``'s ``model_locations``).

    Raises:
        SertoolError: a value without ``=``.
    """
    locations = {}
    for item in items:
        hub_id, separator, folder = item.partition("=")
        if not separator:
            raise SertoolError(f"--model {item}: write it as HUB_ID=FOLDER, e.g. microsoft/wavlm-large=/models/wavlm")
        locations[hub_id] = folder
    return locations


def reproduce(options: ReproduceOptions, *, reporter_factory: Callable[[], Reporter] | None = None,
              say: Callable[[str], None] = lambda text: None) -> list[Path]:
    """Run the grid; returns the paths of the written tables (``<out>/tables.md`` for the paper's part,
    ``<out>/variants.md`` for the variants'), those of ``options.tables``.

    Args:
        options: ``grid``, a grid file (default: the paper's, ``PAPER_GRID``, shipped with sertool); ``corpus``,
            the corpus every system trains and is evaluated on; ``scale``, ``"demo"`` (stand-ins, demo
            overrides) or ``"real"`` (the configs as they are); ``out``, where ``runs/``, ``predictions/``,
            ``scores/`` and ``tables.md`` go; ``seeds``, trainings of every system, with consecutive seeds (the
            tables show mean ± sd over them); ``systems``, run only these (comma-separated; and the ensembles
            all of whose members are among them); ``models``, real scale: ``HUB_ID=FOLDER`` items, where a hub
            id's model is found; ``device``.
        reporter_factory: a training reporter per training (None: none).
        say: progress lines ("mmwavlm seed 1: training", "wavlm seed 0: done earlier, skipped").

    Raises:
        SertoolError: an unknown scale or system, fewer than one seed, or a ``models`` item without ``=``.
    """
    corpus, scale, seeds, device = options.corpus, options.scale, options.seeds, options.device
    if scale not in SCALES:
        raise SertoolError(f"--scale {scale!r}: choose one of {', '.join(SCALES)}")
    if seeds < 1:
        raise SertoolError(f"--seeds {seeds}: train every system at least once")
    model_locations = parse_model_locations(options.models)
    only = options.systems.split(",") if options.systems else None
    # The folder is the grid's own: re-running replaces what it wrote (finished systems are skipped first).
    outputs = OutputPlan(force=True)
    out_dir = outputs.folder(options.out, flag="--out")
    grid_path = PAPER_GRID if options.grid is None else options.grid
    grid = read_grid(grid_path)
    parts = PARTS if options.tables == "all" else (options.tables,)
    listed = grid.systems_of(parts)
    systems = [system for system in listed if only is None or system in only]
    unknown = sorted(set(only or ()) - set(listed))
    if unknown:
        raise SertoolError(f"--systems {', '.join(unknown)}: not in the {options.tables} tables of {grid_path}; "
                           f"they have {', '.join(listed)}")
    splits = {split: _split_or_none(corpus, split) for split in EVAL_SPLITS}
    inference = InferenceOptions(device=device)
    results: dict[str, dict[str, Any]] = {}
    for system in systems:
        if not grid.runs_at(system, scale):
            results[system] = {"skipped": f"{scale} scale: not run ({grid.variants[system].what}; it needs the real "
                                          "models)"}
            say(f"{system}: {results[system]['skipped']}")
            continue
        results[system] = _run_system(grid, system, seeds=seeds, corpus=str(corpus), scale=scale, outputs=outputs,
                                      out_dir=out_dir, model_locations=model_locations, splits=splits,
                                      options=inference, device=device, reporter_factory=reporter_factory, say=say)
    ensembles = {item.id: _run_ensemble(item, results, outputs, out_dir, splits, inference) for item in grid.ensembles
                 if "paper" in parts and all(results.get(member, {}).get("seeds") for member in item.members)}
    paths = []
    for part in parts:  # a file per part, so that running one part never replaces the other's tables
        path = out_dir / TABLES_NAMES[part]
        with outputs.writing(path) as handle:
            handle.write(render_tables(grid, results, ensembles, scale=scale, corpus=str(corpus), seeds=seeds,
                                       parts=(part,)))
        paths.append(path)
    return paths


def _split_or_none(corpus: str | Path, split: str) -> list[Utterance] | None:
    utterances = [utt for utt in open_corpus(corpus).utterances if utt.split == split]
    return utterances if utterances and all(utt.has_labels for utt in utterances) else None


def _run_system(grid: Grid, system: str, *, seeds: int, corpus: str, scale: str, outputs: OutputPlan, out_dir: Path,
                model_locations, splits, options: InferenceOptions, device: str, reporter_factory,
                say) -> dict[str, Any]:
    """Every seed of one system: ``{"seeds": {seed: record}}``, or ``{"error": ...}`` if one failed."""
    try:
        # As train stores it (absolute paths), so that a finished or interrupted run is recognised.
        base = grid.config(system, scale=scale, corpus=corpus, model_locations=model_locations).with_absolute_paths()
        records = {}
        for seed in range(base.seed, base.seed + seeds):
            base.seed = seed
            records[seed] = _run_seed(base, system, seed=seed, outputs=outputs, out_dir=out_dir, splits=splits,
                                      options=options, device=device, reporter_factory=reporter_factory, say=say)
        return {"seeds": records}
    except SertoolError as error:
        say(f"{system}: failed: {error}")
        return {"error": str(error)}


def _run_seed(config, system: str, *, seed: int, outputs: OutputPlan, out_dir: Path, splits, options: InferenceOptions,
              device: str, reporter_factory, say) -> dict[str, Any]:
    """Train (or resume, or skip) one seed of a system and score it on every labelled split."""
    name = f"{system} seed {seed}"
    run_dir = out_dir / "runs" / system / f"seed{seed}"
    scores_path = out_dir / "scores" / system / f"seed{seed}.json"
    if scores_path.is_file():
        recorded = load_json(scores_path, what="scores record")
        if isinstance(recorded, dict) and recorded.get("config") == config.to_dict():
            say(f"{name}: done earlier, skipped")
            return recorded
    reporter = reporter_factory() if reporter_factory else None
    if (run_dir / SUMMARY_NAME).is_file() and _same_config(run_dir, config):
        say(f"{name}: trained earlier; evaluating")
    elif (run_dir / LAST_NAME).is_file() and _same_config(run_dir, config):
        say(f"{name}: resuming the interrupted training")
        train(config, run_dir, resume=True, device=device, reporter=reporter)
    else:
        say(f"{name}: training")
        train(config, run_dir, force=True, device=device, reporter=reporter)
    scores = {}
    for split, utterances in splits.items():
        if utterances is not None:
            # evaluate leaves out what the run trained on, and writes only the scored rows.
            result = evaluate(run_dir, utterances, split=split, options=options, outputs=outputs,
                              out=_predictions_path(out_dir, system, seed, split))
            scores[split] = _score_record(result.scores)
    summary = load_json(run_dir / SUMMARY_NAME, what="run summary")
    record = {"config": config.to_dict(), "scores": scores,
              "steps": summary.get("steps") if isinstance(summary, dict) else None}
    with outputs.writing(scores_path) as handle:
        json.dump(record, handle, indent=2)
    return record


def _predictions_path(out_dir: Path, name: str, seed: int, split: str) -> Path:
    return out_dir / "predictions" / name / f"seed{seed}-{split}.csv"


def _score_record(scores: Scores) -> dict[str, Any]:
    return {**scores.ccc, "utterances": scores.num_utterances, "trained_on_left_out": scores.excluded_trained_on,
            "unknown_training_data": list(scores.unknown_training_data)}


def _unknown_from(results: Sequence[dict[str, Any]], split: str | None = None) -> list[str]:
    """The initial models of unknown training data behind the seeds of ``results`` (each as ``_run_system``
    or ``_run_ensemble`` returns them), on ``split`` or any split, in order."""
    found = [name for result in results for record in (result.get("seeds") or {}).values()
             for scored, score_record in record.get("scores", {}).items() if split in (None, scored)
             for name in score_record.get("unknown_training_data", ())]
    return list(dict.fromkeys(found))


def _notes(rows: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """``selection.training_data_note`` for each (name, result) of a table that has one, as Markdown lines."""
    notes = [training_data_note(name, _unknown_from([result])) for name, result in rows]
    return [f"Note: {note}" for note in notes if note] + ([""] if any(notes) else [])


def _same_config(run_dir: Path, config) -> bool:
    from sertool.core.config import read_config_file

    path = run_dir / CONFIG_NAME
    try:
        return path.is_file() and read_config_file(path) == config.to_dict()
    except SertoolError:  # a damaged config.yaml: not this config, so the run starts over
        return False


def _run_ensemble(item: Ensemble, results: dict[str, dict[str, Any]], outputs: OutputPlan, out_dir: Path, splits,
                  options: InferenceOptions) -> dict[str, Any]:
    """Per seed k, the mean of the members' seed-k predictions, scored on the utterances every member held out.

    Returns ``{"seeds": {k: {"scores": {split: record}}}}`` over the seeds every member has.
    """
    common = set.intersection(*(set(results[member]["seeds"]) for member in item.members))
    records = {}
    for seed in sorted(common):
        scores = {}
        for split, utterances in splits.items():
            if utterances is None:
                continue
            members = [_predictions_path(out_dir, member, seed, split) for member in item.members]
            # Each member's file holds the utterances it was scored on, i.e. those it never trained on.
            held_out = set.intersection(*(set(read_predictions(path).ids) for path in members))
            kept = [utt for utt in utterances if utt.id in held_out]
            if not kept:
                continue  # the members trained on all of it between them: nothing to score ("—")
            result = ensemble(members, kept, split=split, options=options)
            write_predictions_file(outputs, _predictions_path(out_dir, item.id, seed, split), result.predictions)
            assert result.ensemble_scores is not None, "the splits hold labelled utterances only (_split_or_none)"
            # The members are scored from their predictions files: what they started from is in their records.
            scores[split] = {**_score_record(result.ensemble_scores),
                             "trained_on_left_out": len(utterances) - len(kept),
                             "unknown_training_data": _unknown_from([results[member] for member in item.members],
                                                                    split)}
        records[seed] = {"scores": scores}
    return {"members": list(item.members), "seeds": records}


def render_tables(grid: Grid, results: dict[str, dict[str, Any]], ensembles: dict[str, dict[str, Any]], *,
                  scale: str, corpus: str, seeds: int = 1, parts: tuple[str, ...] = ("paper",)) -> str:
    """Markdown tables like the paper's: Development CCC per system, with the paper's figure beside ours.

    With several seeds every cell is ``mean ± sd`` (sample standard deviation over the seeds); the column
    ``n`` is the number of utterances scored (fewer where a system trained on some of the split), the column
    ``budget`` the system's training budget (epochs or optimiser steps) and the steps its runs took (early
    stopping may end a run before its budget). ``parts``: the tables shown (a grid table's ``part``).
    """
    lines = [f"# Reproduction of Lertpetchpun et al. (Interspeech 2025) — {scale} scale", ""]
    if scale == "demo":
        lines += ["> **Demo scale.** Synthetic demo corpus, and CPU stand-ins for the pretrained models "
                  f"({', '.join(f'{k} → {v}' for k, v in grid.demo_stand_ins.items())}), trained briefly. The "
                  "numbers show that every step runs and how the comparisons come out on this corpus; they are not "
                  "comparable to the paper's, which are shown beside them for orientation.", ""]
    spread = (f"mean ± sd over N = {seeds} seeds (each system trained {seeds} times; sd: sample standard "
              "deviation)") if seeds > 1 else "one seed (N = 1: no error bars; `--seeds 3` gives them)"
    lines += [f"Corpus: `{corpus}`. Cells: CCC on Development, {spread}; ours / the paper's. "
              "n: utterances scored — every system is scored only on utterances it did not train on, so systems "
              "that move Development's O/X into training (`dev-ox`) are scored on fewer.", ""]
    for table in (table for table in grid.tables if table.part in parts):
        lines += [f"## {table.title}", ""] + ([table.note, ""] if table.note else [])
        lines += ["| system | budget | n | A | V | D | average |", "|---|---|---|---|---|---|---|"]
        for row in table.rows:
            result = results.get(row.system, {})
            lines.append(f"| {row.system} | {_budget(result)} | {_cells(result, DEVELOPMENT, row.paper)} |")
        lines.append("")
        lines += _notes([(row.system, results.get(row.system, {})) for row in table.rows])
    if grid.ensembles and "paper" in parts:
        lines += ["## Ensembles (mean of the members' predictions, per seed)", "",
                  "Each seed's ensemble averages that seed's members; it is scored on the utterances none of its "
                  "members trained on (n).", "",
                  "| ensemble | split | n | A | V | D | average |", "|---|---|---|---|---|---|---|"]
        for item in grid.ensembles:
            for split in EVAL_SPLITS:
                scored = ensembles.get(item.id)
                cells = " | ".join(["not run"] * (len(COLUMNS) + 1)) if scored is None else _cells(scored, split, None)
                lines.append(f"| {item.name} | {split} | {cells} |")
        lines.append("")
        lines += _notes([(item.name, ensembles.get(item.id, {})) for item in grid.ensembles])
    if grid.submissions is not None and "paper" in parts:
        lines += _submission_table(grid, grid.submissions, results, ensembles)
    failed = {system: result["error"] for system, result in results.items() if "error" in result}
    if failed:
        lines += ["## Systems that did not run", ""] + [f"- `{system}`: {error}" for system, error in failed.items()]
    return "\n".join(lines) + "\n"


def _submission_table(grid: Grid, table: SubmissionTable, results: dict[str, dict[str, Any]],
                      ensembles: dict[str, dict[str, Any]]) -> list[str]:
    """The paper's submitted systems: ours on Test1, a stand-in for the challenge's Test3 (whose labels are
    not public), beside the paper's test figures ("n/a" where the grid gives none)."""
    names = {item.id: item.name for item in grid.ensembles}
    lines = [f"## {table.title}", "",
             f"Ours: CCC on **{TEST1}, a stand-in**: the challenge scored the submissions on {TEST3}, whose labels "
             f"are not public, so these are not the paper's test conditions; ours / the paper's {TEST3} figure "
             "(n/a: not available).", ""]
    if table.note:
        lines += [table.note, ""]
    lines += ["| system | split | n | A | V | D | average |", "|---|---|---|---|---|---|---|"]
    for row in table.rows:
        result = ensembles.get(row.system) if row.system in names else results.get(row.system)
        paper = row.paper or (None,) * len(COLUMNS)
        cells = " | ".join(["not run"] * (len(COLUMNS) + 1)) if result is None else _cells(result, TEST1, paper)
        lines.append(f"| {names.get(row.system, row.system)} | {TEST1} (stand-in for {TEST3}) | {cells} |")
    lines.append("")
    return lines


def _budget(result: dict[str, Any]) -> str:
    """The training budget of a system's runs (``20 epochs``, ``40000 steps``) and the optimiser steps they took
    (mean over the seeds): ``20 epochs (6120 steps)``."""
    records = list((result.get("seeds") or {}).values())
    if not records:
        return "—"
    train = records[0]["config"]["train"]
    epochs, max_steps = train["epochs"], train["max_steps"]
    rules = [f"{epochs} epoch{'s' * (epochs != 1)}"] * bool(epochs) + [f"{max_steps} steps"] * bool(max_steps)
    rule = " or ".join(rules)
    steps = [record["steps"] for record in records if isinstance(record.get("steps"), int)]
    return f"{rule} ({round(statistics.mean(steps))} steps run)" if steps else rule


def _cells(result: dict[str, Any], split: str, paper: Sequence[float | None] | None) -> str:
    """``n`` and one cell per column: ``mean ± sd`` over the seeds (or the one value), ``/ paper`` beside
    (``n/a`` for a figure the paper does not give)."""
    if "error" in result:
        return " | ".join(["failed"] * (len(COLUMNS) + 1))
    if "skipped" in result:
        return " | ".join(["real scale only"] * (len(COLUMNS) + 1))
    per_seed = [record["scores"][split] for record in (result.get("seeds") or {}).values()
                if split in record.get("scores", {})]
    if not per_seed:
        return " | ".join(["—"] * (len(COLUMNS) + 1))
    counts = sorted({record["utterances"] for record in per_seed})
    cells = [str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"]
    for index, name in enumerate(COLUMNS):
        values = [record[name] for record in per_seed]
        ours = f"{values[0]:.4f}" if len(values) == 1 else \
            f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
        figure = None if paper is None else paper[index]
        cells.append(ours if paper is None else f"{ours} / {'n/a' if figure is None else f'{figure:.4f}'}")
    return " | ".join(cells)
