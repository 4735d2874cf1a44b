"""Write docs/reliability.md's tables of cases from the tests' ``@case`` markers (tests/cases.py).

    python scripts/reliability_table.py          # rewrite the tables in docs/reliability.md
    python scripts/reliability_table.py --check  # exit 1 if they are not current (tests/test_docs.py runs this)

The markers are read from the test files' source with ``ast``: nothing is imported or run. The tables go
between the ``<!-- cases: start -->`` and ``<!-- cases: end -->`` lines of the document; the rest of it is
written by hand.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.generated_docs import regenerate  # noqa: E402
from tests.cases import KINDS  # noqa: E402 - the repository root goes on the path first

DOCUMENT = ROOT / "docs" / "reliability.md"
START, END = "<!-- cases: start -->", "<!-- cases: end -->"


def collect(tests_dir: Path = ROOT / "tests") -> list[tuple[str, str, str, str]]:
    """Every ``@case`` in ``tests_dir``: ``(kind, what, outcome, "tests/file.py::test")`` in file and line order."""
    cases = []
    for path in sorted(tests_dir.glob("test_*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "case":
                    kind, what, outcome = (ast.literal_eval(argument) for argument in decorator.args)
                    cases.append((kind, what, outcome, f"tests/{path.name}::{node.name}"))
    return cases


def render(cases: list[tuple[str, str, str, str]]) -> str:
    """The tables, one per kind in ``KINDS``' order."""
    parts = [START, "", "_Generated from the tests' `@case` markers by `scripts/reliability_table.py`; "
             f"{len(cases)} cases._", ""]
    for kind, heading in KINDS.items():
        rows = [case for case in cases if case[0] == kind]
        if not rows:
            continue
        parts += [f"### {heading}", "", "| case | what happens | test |", "|---|---|---|"]
        parts += [f"| {_cell(what)} | {_cell(outcome)} | `{test}` |" for _, what, outcome, test in rows]
        parts.append("")
    parts.append(END)
    return "\n".join(parts)


def updated(document: str, tables: str) -> str:
    """``document`` with the text between its markers replaced by ``tables``."""
    before, found, rest = document.partition(START)
    _, found_end, after = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"{DOCUMENT}: the {START} and {END} lines are missing")
    return before + tables + after


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> int:
    return regenerate(DOCUMENT, lambda text: updated(text, render(collect())), description=__doc__.splitlines()[0],
                      script="scripts/reliability_table.py")


if __name__ == "__main__":
    sys.exit(main())
