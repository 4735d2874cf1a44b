"""`make reproduce`: train, evaluate and ensemble the paper's grid; write tables laid out like the paper's.

Resumable: a system whose scores are recorded (for the same config) is skipped, a run folder with a
``last.pt`` but no ``summary.json`` (an interrupted training) is resumed, and a finished run is only
evaluated. A system that fails (e.g. a model that cannot be loaded) is reported in its row and the grid goes
on.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sertool.checkpoint import LAST_NAME
from sertool.data.corpus import open_corpus
from sertool.data.records import ATTRIBUTES
from sertool.errors import SertoolError
from sertool.experiments.grid import SCALES, Grid, read_grid
from sertool.inference.predictor import InferenceOptions
from sertool.inference.workflows import ensemble, evaluate
from sertool.io import atomic_write
from sertool.training.loop import Reporter, train

EVAL_SPLITS = ("Development", "Test1")
COLUMNS = (*ATTRIBUTES, "average")


def reproduce(grid_path: str | Path, *, corpus: str | Path, scale: str, out_dir: str | Path,
              model_locations: dict[str, str] | None = None, only: Sequence[str] | None = None,
              device: str = "auto", reporter_factory: Callable[[], Reporter] | None = None,
              say: Callable[[str], None] = lambda text: None) -> Path:
    """Run the grid; returns the path of the written tables (``<out_dir>/tables.md``).

    Args:
        grid_path: e.g. ``configs/paper/grid.yaml``.
        corpus: the corpus every system trains and is evaluated on.
        scale: ``"demo"`` (stand-ins, demo overrides) or ``"real"`` (the configs as they are).
        out_dir: ``runs/``, ``predictions/``, ``scores/`` and ``tables.md`` go here.
        model_locations: real scale: hub id → local folder.
        only: run only these systems (and the ensembles all of whose members are among them).
        say: progress lines ("training mmwavlm", "skipping wavlm: done").
    """
    if scale not in SCALES:
        raise SertoolError(f"--scale {scale!r}: choose one of {', '.join(SCALES)}")
    grid = read_grid(grid_path)
    out_dir = Path(out_dir)
    systems = [system for system in grid.systems if only is None or system in only]
    unknown = sorted(set(only or ()) - set(grid.systems))
    if unknown:
        raise SertoolError(f"--systems {', '.join(unknown)}: not in {grid_path}; it has {', '.join(grid.systems)}")
    splits = {split: _split_or_none(corpus, split) for split in EVAL_SPLITS}
    options = InferenceOptions(device=device)
    results: dict[str, dict[str, Any]] = {}
    for system in systems:
        results[system] = _run_system(grid, system, corpus=str(corpus), scale=scale, out_dir=out_dir,
                                      model_locations=model_locations, splits=splits, options=options,
                                      device=device, reporter_factory=reporter_factory, say=say)
    ensembles = {}
    for item in grid.ensembles:
        if all(results.get(member, {}).get("scores") for member in item.members):
            ensembles[item.name] = _run_ensemble(item.members, out_dir, splits, options)
    path = out_dir / "tables.md"
    with atomic_write(path) as handle:
        handle.write(render_tables(grid, results, ensembles, scale=scale, corpus=str(corpus)))
    return path


def _split_or_none(corpus: str | Path, split: str):
    utterances = [utt for utt in open_corpus(corpus).utterances if utt.split == split]
    return utterances if utterances and all(utt.has_labels for utt in utterances) else None


def _run_system(grid: Grid, system: str, *, corpus: str, scale: str, out_dir: Path, model_locations, splits,
                options: InferenceOptions, device: str, reporter_factory, say) -> dict[str, Any]:
    run_dir = out_dir / "runs" / system
    scores_path = out_dir / "scores" / f"{system}.json"
    try:
        # As train stores it (absolute paths), so that a finished or interrupted run is recognised.
        config = grid.config(system, scale=scale, corpus=corpus, model_locations=model_locations).with_absolute_paths()
        if scores_path.is_file():
            recorded = json.loads(scores_path.read_text(encoding="utf-8"))
            if recorded.get("config") == config.to_dict():
                say(f"{system}: done earlier, skipped")
                return recorded
        reporter = reporter_factory() if reporter_factory else None
        if (run_dir / "summary.json").is_file() and _same_config(run_dir, config):
            say(f"{system}: trained earlier; evaluating")
        elif (run_dir / LAST_NAME).is_file() and _same_config(run_dir, config):
            say(f"{system}: resuming the interrupted training")
            train(config, run_dir, resume=True, device=device, reporter=reporter)
        else:
            say(f"{system}: training")
            train(config, run_dir, force=True, device=device, reporter=reporter)
        scores = {}
        for split, utterances in splits.items():
            if utterances is None:
                continue
            result = evaluate(run_dir, utterances, split=split, options=options,
                              out=out_dir / "predictions" / f"{system}-{split}.csv", force=True)
            scores[split] = result.scores.ccc
        record = {"config": config.to_dict(), "scores": scores}
    except SertoolError as error:
        say(f"{system}: failed: {error}")
        return {"error": str(error)}
    with atomic_write(scores_path) as handle:
        json.dump(record, handle, indent=2)
    return record


def _same_config(run_dir: Path, config) -> bool:
    import yaml

    path = run_dir / "config.yaml"
    return path.is_file() and yaml.safe_load(path.read_text(encoding="utf-8")) == config.to_dict()


def _run_ensemble(members: Sequence[str], out_dir: Path, splits, options: InferenceOptions) -> dict[str, Any]:
    scores = {}
    for split, utterances in splits.items():
        if utterances is None:
            continue
        csvs = [out_dir / "predictions" / f"{member}-{split}.csv" for member in members]
        result = ensemble(csvs, utterances, split=split, options=options)
        scores[split] = result.ensemble_scores.ccc if result.ensemble_scores else None
    return {"members": list(members), "scores": scores}


def render_tables(grid: Grid, results: dict[str, dict[str, Any]], ensembles: dict[str, dict[str, Any]], *,
                  scale: str, corpus: str) -> str:
    """Markdown tables like the paper's: Development CCC per system, with the paper's figure beside ours."""
    lines = [f"# Reproduction of Lertpetchpun et al. (Interspeech 2025) — {scale} scale", ""]
    if scale == "demo":
        lines += ["> **Demo scale.** Synthetic demo corpus, and CPU stand-ins for the pretrained models "
                  f"({', '.join(f'{k} → {v}' for k, v in grid.demo_stand_ins.items())}). The numbers show that "
                  "every step runs and how the comparisons come out on this corpus; they are not comparable to "
                  "the paper's, which are shown beside them for orientation.", ""]
    lines += [f"Corpus: `{corpus}`. Cells: CCC on Development, ours / the paper's.", ""]
    for table in grid.tables:
        lines += [f"## {table.title}", "", "| system | A | V | D | average |", "|---|---|---|---|---|"]
        for row in table.rows:
            result = results.get(row.system, {})
            lines.append(f"| {row.system} | " + _cells(result, "Development", row.paper) + " |")
        lines.append("")
    if grid.ensembles:
        lines += ["## Ensembles (mean of the members' predictions)", "",
                  "| ensemble | split | A | V | D | average |", "|---|---|---|---|---|---|"]
        for item in grid.ensembles:
            scored = ensembles.get(item.name)
            for split in EVAL_SPLITS:
                cells = " | ".join("not run" for _ in COLUMNS) if scored is None else \
                    _cells({"scores": scored["scores"]}, split, None)
                lines.append(f"| {item.name} | {split} | {cells} |")
        lines.append("")
    failed = {system: result["error"] for system, result in results.items() if "error" in result}
    if failed:
        lines += ["## Systems that did not run", ""] + [f"- `{system}`: {error}" for system, error in failed.items()]
    return "\n".join(lines) + "\n"


def _cells(result: dict[str, Any], split: str, paper) -> str:
    scores = (result.get("scores") or {}).get(split)
    cells = []
    for index, name in enumerate(COLUMNS):
        ours = "failed" if "error" in result else ("—" if scores is None else f"{scores[name]:.4f}")
        cells.append(ours if paper is None else f"{ours} / {paper[index]:.4f}")
    return " | ".join(cells)
