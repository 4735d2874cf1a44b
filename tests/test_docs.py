"""The docs stay true: every option is documented, every command has a worked example."""
from __future__ import annotations

from pathlib import Path

from sertool.core.config import config_options

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


def test_reliability_tables_are_generated_from_the_tests_current():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reliability_table", DOCS.parent / "scripts" / "reliability_table.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    current = (DOCS / "reliability.md").read_text()
    assert script.updated(current, script.render(script.collect())) == current, \
        "docs/reliability.md's tables are not current: run python scripts/reliability_table.py"


def test_reliability_table_lists_every_reliability_test():
    import ast

    tests = []
    for name in ("test_reliability.py", "test_faults_training.py", "test_faults_inference.py"):
        source = (Path(__file__).resolve().parent / name).read_text()
        tests += [node.name for node in ast.parse(source).body
                  if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    text = (DOCS / "reliability.md").read_text()
    assert [name for name in tests if name not in text] == []


ROOT = DOCS.parent
DOC_FILES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
# Flags the docs show for other programs: torchrun, pip, huggingface-cli, kill, bench/bench.py; and
# ``--help`` / ``--version`` (click's own). A prefix such as ``--no-`` or ``--lr-`` names a family of flags.
FOREIGN_FLAGS = {"--nproc-per-node", "--nnodes", "--rdzv-backend", "--rdzv-endpoint", "--shutdown-timeout", "--no-deps",
                 "--local-dir", "--signal", "--from-json", "--markdown", "--only", "--help", "--version", "--no-", "--lr-",
                 "--variant", "--budget-s", "--tiny", "--steps"}  # --variant: bench/small_corpus.py; then gpu_check.py


def _sertool_flags() -> set[str]:
    import click

    from sertool.cli.commands import cli

    flags: set[str] = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            flags.update(param.opts + param.secondary_opts)
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(cli)
    return flags


def test_every_documented_flag_exists():
    import re

    flags = _sertool_flags() | FOREIGN_FLAGS
    unknown = sorted({f"{match.group()} ({path.name})" for path in DOC_FILES
                      for match in re.finditer(r"(?<![\w-])--[a-z][a-z0-9-]*", path.read_text(encoding="utf-8"))
                      if match.group() not in flags})
    assert not unknown, f"documented flags that no sertool command has: {unknown}"


def test_every_documented_source_file_exists():
    import re

    missing = sorted({f"{match.group()} ({path.name})" for path in DOC_FILES
                      for match in re.finditer(r"(?<![\w/.-])sertool/[\w./-]*\w", path.read_text(encoding="utf-8"))
                      if not (ROOT / match.group()).exists()})
    assert not missing, f"documented files that do not exist: {missing}"


def test_every_documented_default_is_the_configs():
    """The option tables (a `flag` and a `default` column) give each config option's default as it is."""
    options = {option.flag: option for option in config_options()}
    wrong = []
    for name in ("training.md", "models.md"):
        header: list[str] | None = None
        for line in (DOCS / name).read_text(encoding="utf-8").splitlines():
            if not line.startswith("|"):
                header = None
                continue
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
                continue
            if "flag" not in header or "default" not in header or set(cells[0]) <= set("-: "):
                continue
            flag, shown = cells[header.index("flag")], cells[header.index("default")]
            option = options.get(flag.split("`")[1] if "`" in flag else flag)
            if option is None:
                continue  # a boolean's two flags
            value = shown.strip("`")
            if isinstance(option.default, (int, float)) and not isinstance(option.default, bool) and _is_number(value):
                if float(value) != option.default:
                    wrong.append(f"{option.flag}: {shown} in {name}, {option.default!r} in the config")
            elif shown.startswith("`") and value != _shown_default(option.default):  # words: a described default
                wrong.append(f"{option.flag}: {shown} in {name}, {option.default!r} in the config")
    assert not wrong, wrong


def _shown_default(value) -> str:
    """A default as the docs write it: none for no value, true/false, numbers as Python prints them."""
    if value is None or value == ():
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ", ".join(value)
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
