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
DOC_FILES = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]  # notes/ included
# Flags the docs show for other programs: torchrun, pip, huggingface-cli, kill, mlflow ui, bench/bench.py; and
# ``--help`` / ``--version`` (click's own). A prefix such as ``--no-`` or ``--lr-`` names a family of flags.
FOREIGN_FLAGS = {"--nproc-per-node", "--nnodes", "--rdzv-backend", "--rdzv-endpoint", "--shutdown-timeout", "--no-deps",
                 "--local-dir", "--signal", "--from-json", "--markdown", "--only", "--help", "--version", "--no-", "--lr-",
                 "--variant", "--budget-s", "--tiny", "--steps", "--backend-store-uri"}  # --variant: bench/small_corpus.py; then gpu_check.py


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


def _cli_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_tables", ROOT / "scripts" / "cli_tables.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_cli_option_tables_are_generated_from_the_commands_current():
    script = _cli_tables()
    current = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert script.updated(current) == current, "docs/cli.md's option tables are not current: run python scripts/cli_tables.py"


def _option_tables() -> dict[str, list[dict[str, str]]]:
    """docs/cli.md's option tables, read as a reader sees them: ``{key: [row as {column: cell}]}``."""
    import re

    tables: dict[str, list[dict[str, str]]] = {}
    key, header = None, None
    for line in (DOCS / "cli.md").read_text(encoding="utf-8").splitlines():
        start = re.fullmatch(r"<!-- options: (.+) -->", line)
        if start:
            key, header = (None if start.group(1) == "end" else start.group(1)), None
            if key is not None:
                tables[key] = []
            continue
        if key is None or not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-: "):
            tables[key].append(dict(zip(header, cells, strict=True)))
    return tables


def test_every_command_has_an_option_table_that_agrees_with_its_help():
    """Every flag of every command (its --help) is in its table in docs/cli.md, with the flag's default, and the
    table lists no flag the command lacks. The flags every command takes and the shared inference flags have a
    table each; `train`'s config flags are the tables of training.md and models.md (checked above)."""
    import re

    import click

    from sertool.cli.commands import cli

    tables = _option_tables()
    script = _cli_tables()
    config_flags = script.config_flag_names()
    wrong = []
    for path, command in script.commands().items():
        assert path in tables, f"docs/cli.md has no option table of sertool {path}"
        keys = [path, "every command"] + (["shared inference"] if path in ("evaluate", "predict", "ensemble") else [])
        rows = {}
        for key in keys:
            for row in tables[key]:
                for flag in re.findall(r"`(-[^` ]+)", row["flag"]):
                    rows[flag] = row
        ctx = script.context(path)
        options = [param for param in command.get_params(ctx) if isinstance(param, click.Option)
                   and not (path == "train" and param.name in config_flags)]
        flags = {flag for param in options for flag in param.opts + param.secondary_opts}
        if set(rows) != flags:
            wrong.append(f"{path}: missing {sorted(flags - set(rows))}, extra {sorted(set(rows) - flags)}")
        for param in options:
            shown = rows.get(param.opts[0], {}).get("default")
            if shown is not None and not _same_default(shown, param, param.get_default(ctx)):
                wrong.append(f"{path} {param.opts[0]}: default {shown!r} in docs/cli.md, {param.get_default(ctx)!r} "
                             "in --help")
    assert cli.commands, "no commands"
    assert not wrong, wrong


def _same_default(shown: str, param, value) -> bool:
    if param.required:
        return shown == "required"
    if value is None or value is False or value == ():
        return shown == ""
    if isinstance(value, (tuple, list)):
        return [float(item) for item in shown.split()] == [float(item) for item in value]
    if isinstance(value, (int, float)):
        return _is_number(shown) and float(shown) == value
    return shown == f"`{value}`"


def _table(text: str, header: list[str]) -> list[list[str]]:
    """The rows of the first markdown table in ``text`` whose header row is ``header`` (cells stripped)."""
    rows: list[list[str]] = []
    inside = False
    for line in text.splitlines():
        if not line.startswith("|"):
            if inside:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not inside:
            inside = cells == header
        elif not set("".join(cells)) <= set("-: "):
            rows.append(cells)
    assert rows, f"no table with the header {header}"
    return rows


def _folder_name(prefix: str) -> str:
    """A part's module prefix as docs/architecture.md names it: ``sertool.data`` → ``data/``."""
    if prefix == "sertool":
        return "__init__.py"
    name = prefix.removeprefix("sertool.")
    return f"{name}/" if (ROOT / "sertool" / name).is_dir() else f"{name}.py"


def test_architecture_arrows_are_the_layering_tests():
    """docs/architecture.md's table of parts is tests/test_layering.py's PARTS and ALLOWED, row for row."""
    from tests.test_layering import ALLOWED, PARTS

    rows = _table((DOCS / "architecture.md").read_text(encoding="utf-8"), ["part", "folders", "may import"])
    documented = {part: ({cell.strip("`") for cell in folders.split(", ")},
                         set() if arrows == "–" else set(arrows.split(", ")))
                  for part, folders, arrows in rows}
    assert len(documented) == len(rows), "a part is listed twice"
    expected = {part: ({_folder_name(prefix) for prefix in PARTS[part]}, ALLOWED[part]) for part in PARTS}
    assert documented == expected


def test_every_package_folder_is_in_the_layouts():
    """README.md's and docs/architecture.md's layouts name every folder of sertool/."""
    folders = sorted(f"{path.parent.name}/" for path in (ROOT / "sertool").glob("*/__init__.py"))
    for path in (ROOT / "README.md", DOCS / "architecture.md"):
        text = path.read_text(encoding="utf-8")
        layout = text[text.index("## Layout"):]
        assert [name for name in folders if f" {name} " not in layout and f"`{name}`" not in layout] == [], path.name


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens kept), each space a hyphen."""
    import re

    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        anchor = _anchor(line.lstrip("#"))
        anchors.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
        seen[anchor] = seen.get(anchor, 0) + 1
    return anchors



def test_every_link_between_the_docs_resolves():
    """Every relative link in README.md and docs/ (notes included) names a file that exists and, with a
    ``#fragment``, a heading of that file."""
    import re

    broken = []
    for path in DOC_FILES:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            name, _, fragment = target.partition("#")
            linked = (path.parent / name).resolve() if name else path
            if not linked.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif fragment and linked.suffix == ".md" and fragment not in _anchors(linked):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_the_testing_section_names_every_file_with_slow_tests():
    """docs/architecture.md's "Testing" says what make test-quick leaves out: every test file holding a test
    marked slow is named there."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    section = text[text.index("## Testing"):text.index("\n## ", text.index("## Testing") + 1)]
    import re

    files = sorted(path.name for path in (ROOT / "tests").glob("test_*.py")
                   if re.search(r"^@pytest\.mark\.slow$|marks=\[pytest\.mark\.slow\]", path.read_text(encoding="utf-8"),
                                flags=re.MULTILINE))
    assert files and [name for name in files if f"tests/{name}" not in section] == []


def test_no_file_holds_a_merge_conflict_marker():
    root = DOCS.parent
    files = [*root.glob("*.md"), root / "Makefile", *(root / "docs").rglob("*.md"), *(root / "sertool").rglob("*.py"),
             *(root / "sertool").rglob("*.yaml"), *(root / "tests").rglob("*.py"), *(root / "scripts").rglob("*"),
             *(root / "bench").rglob("*.py")]
    marked = [f"{path.relative_to(root)}:{number}" for path in files if path.is_file()
              for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
              if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "======="]
    assert not marked, f"merge conflict markers left in: {marked}"


def test_ci_installs_as_the_readme_says():
    """The plain-pip check CI runs installs the extras the README's plain-pip line names, after the same torch."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    script = (ROOT / "scripts" / "plain_install_check.sh").read_text(encoding="utf-8")
    readme_extras = re.search(r"^pip install .*'\.(\[[a-z,]+\])'", readme, flags=re.M)
    assert readme_extras is not None, "README.md lost its plain-pip line"
    assert f'EXTRAS="{readme_extras.group(1)}"' in script
    assert "torch==2.13.0" in readme and "TORCH_SPEC:-torch==2.13.0" in script
    assert "make plain-install" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
