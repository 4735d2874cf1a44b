"""The docs stay true: every option is documented, every command has a worked example."""
from __future__ import annotations

from pathlib import Path

from sertool.config import config_options

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_config_option_is_documented_with_its_flag():
    text = (DOCS / "training.md").read_text() + (DOCS / "models.md").read_text()
    missing = [option.flag for option in config_options() if f"`{option.flag}`" not in text]
    assert not missing, f"flags missing from docs/training.md and docs/models.md: {missing}"


def test_every_numeric_option_documents_its_allowed_values():
    rows = [line for line in ((DOCS / "training.md").read_text() + (DOCS / "models.md").read_text()).splitlines()
            if line.startswith("| `")]
    missing = []
    for option in config_options():
        if option.type in (int, float):
            row = next((line for line in rows if f"`{option.flag}`" in line), "")
            if option.bounds is None or f" | {option.bounds.describe()} | " not in row:
                missing.append(option.flag)
    assert not missing, f"numeric options without bounds, or without them in their docs row: {missing}"


def test_every_command_has_a_worked_example():
    text = (DOCS / "cli.md").read_text()
    for command in ("data demo", "data info", "data manifest", "data speakers", "train", "evaluate", "predict",
                    "ensemble", "export", "baseline", "reproduce", "plot"):
        assert f"sertool {command}" in text, command


def test_reliability_table_lists_every_reliability_test():
    import ast

    tests = []
    for name in ("test_reliability.py", "test_faults_training.py", "test_faults_inference.py"):
        source = (Path(__file__).resolve().parent / name).read_text()
        tests += [node.name for node in ast.parse(source).body
                  if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    text = (DOCS / "reliability.md").read_text()
    assert [name for name in tests if name not in text] == []
