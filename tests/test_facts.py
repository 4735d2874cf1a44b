"""Each fact once: the names of the files sertool writes and reads, and the names of the emotion attributes, are
spelled in one place in sertool/, a named constant at the top of a module, and everywhere else by that name.

The spellings are found with ``ast``: a string that *is* the name (``run_dir / "best.pt"``,
``("arousal", "valence")``), or a path that ends in it (``"runs/best.pt"``), is one; docstrings, comments and
longer messages that mention a name ("see RUN_DIR/config.yaml") are prose, not spellings. Every part of sertool is
searched, including those whose owners are still moving their spellings to the constants: ``KNOWN_SPELLINGS`` lists
what is left there, and must shrink as they go (an entry that is gone fails too, so the list stays true).
"""
from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sertool"

# Each name, and the module that declares it (None: any one module, still to be settled by its owner).
DECLARED: dict[str, str | None] = {
    # The emotion attributes (core.constants.ATTRIBUTES) and their MSP-Podcast columns (data.records).
    "arousal": "sertool/core/constants.py",
    "valence": "sertool/core/constants.py",
    "dominance": "sertool/core/constants.py",
    "EmoAct": "sertool/data/records.py",
    "EmoVal": "sertool/data/records.py",
    "EmoDom": "sertool/data/records.py",
    # A run folder's files that more than the training loop reads, and a model folder's config.
    "config.yaml": "sertool/core/constants.py",
    "metrics.jsonl": "sertool/core/constants.py",
    "summary.json": "sertool/core/constants.py",
    "argv.txt": "sertool/core/constants.py",
    "best.pt": "sertool/core/constants.py",
    "last.pt": "sertool/core/constants.py",
    "config.json": "sertool/core/constants.py",
    # A run folder's files that only the training loop reads and writes.
    "environment.json": None,
    "data_report.json": None,
    "curves.png": None,
    # A model folder's other files, a manifest corpus, the reproduction's tables, a grid, MSP-Podcast's labels.
    "model.safetensors": "sertool/store/model_folder.py",
    "README.md": "sertool/store/model_folder.py",
    "model.onnx": "sertool/store/onnx_folder.py",
    "model.onnx.data": "sertool/store/onnx_folder.py",
    "manifest.csv": "sertool/data/manifest.py",
    "tables.md": "sertool/experiments/reproduce.py",
    "grid.yaml": "sertool/experiments/grid.py",
    "labels_consensus.csv": "sertool/data/msp.py",
}
FILE_NAMES = {name for name in DECLARED if "." in name}

# Spellings left in parts whose owners are moving them to the constants: (module, name) → how many. The goal is
# an empty dict; an entry whose spellings are gone must be removed (the test says so).
KNOWN_SPELLINGS: dict[tuple[str, str], int] = {}


def spellings(source: str, module: str) -> list[tuple[str, int, bool]]:
    """Every spelling of a ``DECLARED`` name in ``source``: ``(name, line, is_declaration)``. A declaration is a
    string inside the value of a module-level assignment to an upper-case name (``BEST_NAME = "best.pt"``,
    ``ATTRIBUTES = ("arousal", ...)``, ``MSP_LABELS = Path("Labels") / "labels_consensus.csv"``)."""
    tree = ast.parse(source, filename=module)
    prose = {id(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}  # docstrings
    declarations = set()
    for statement in tree.body:
        targets = (statement.targets if isinstance(statement, ast.Assign) else
                   [statement.target] if isinstance(statement, ast.AnnAssign) and statement.value else [])
        if targets and all(isinstance(target, ast.Name) and target.id.isupper() for target in targets):
            value = statement.value
            assert value is not None
            declarations.update(id(node) for node in ast.walk(value))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in prose:
            continue
        name = node.value if node.value in DECLARED else next(
            (name for name in FILE_NAMES if node.value.endswith(("/" + name, "\\" + name))), None)
        if name is not None:
            found.append((name, node.lineno, id(node) in declarations))
    return found


def offences(modules: dict[str, str]) -> tuple[list[str], Counter[tuple[str, str]], dict[tuple[str, str], list[int]]]:
    """What is wrong with ``modules`` (path → source): names without their one declaration, and every spelling
    beside it (``(module, name)`` → count, and → lines)."""
    problems: list[str] = []
    extra: Counter[tuple[str, str]] = Counter()
    lines: dict[tuple[str, str], list[int]] = {}
    places: dict[str, list[tuple[str, int, bool]]] = {name: [] for name in DECLARED}
    for module, source in sorted(modules.items()):
        for name, line, declaration in spellings(source, module):
            places[name].append((module, line, declaration))
    for name, found in places.items():
        home = DECLARED[name]
        declaration = next(((module, line) for module, line, is_declaration in found
                            if is_declaration and home in (None, module)), None)
        if declaration is None:
            problems.append(f"{name!r} is declared nowhere as a named constant" + (f" of {home}" if home else ""))
        for module, line, _ in found:
            if (module, line) != declaration:
                extra[(module, name)] += 1
                lines.setdefault((module, name), []).append(line)
    return problems, extra, lines


def _sources() -> dict[str, str]:
    return {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8")
            for path in sorted(PACKAGE.rglob("*.py"))}


def test_each_file_name_and_attribute_name_is_spelled_once_in_sertool():
    problems, extra, lines = offences(_sources())
    assert not problems, problems
    new = sorted(f"{module}:{','.join(map(str, lines[(module, name)]))}: {name!r} (use the constant of "
                 f"{DECLARED[name] or 'its one declaration'})"
                 for (module, name), count in extra.items() if count > KNOWN_SPELLINGS.get((module, name), 0))
    assert not new, f"spelled outside its one declaration: {new}"
    gone = sorted(f"{module}: {name!r} (listed {count}, found {extra.get((module, name), 0)})"
                  for (module, name), count in KNOWN_SPELLINGS.items() if extra.get((module, name), 0) < count)
    assert not gone, f"KNOWN_SPELLINGS lists more than is left; lower or remove these entries: {gone}"


def test_the_search_finds_a_planted_spelling_and_leaves_prose_alone():
    """The test above can fail: a second spelling of a name, as a string or a path's end, is found; the
    declaration, a docstring and a message that mentions the name are not."""
    sources = _sources()
    _, before, _ = offences(sources)
    planted = ('"""Mentions best.pt and "arousal" in prose."""\n'
               'def best(run):\n'
               '    """Returns run / "best.pt"."""\n'
               '    print(f"see {run}/best.pt for the arousal")\n'
               '    return run / "best.pt", "runs/last.pt", ("arousal",)\n')
    problems, after, _ = offences({**sources, "sertool/planted.py": planted})
    assert not problems
    assert after - before == Counter({("sertool/planted.py", "best.pt"): 1, ("sertool/planted.py", "last.pt"): 1,
                                      ("sertool/planted.py", "arousal"): 1})
    # A second declaration is a spelling too, and a name declared only outside its home is declared nowhere.
    _, after, _ = offences({**sources, "sertool/planted.py": 'BEST = "best.pt"\n'})
    assert after - before == Counter({("sertool/planted.py", "best.pt"): 1})
    constants = "sertool/core/constants.py"
    problems, _, _ = offences({**sources, constants: "", "sertool/planted.py": sources[constants]})
    assert "'best.pt' is declared nowhere as a named constant of sertool/core/constants.py" in problems
