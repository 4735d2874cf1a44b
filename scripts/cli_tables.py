"""Write docs/cli.md's option tables from the commands themselves: click's parameters, which sertool.cli.flags makes
from the options dataclasses, so a flag's name, default, allowed values and help have one home.

    python scripts/cli_tables.py          # rewrite the tables in docs/cli.md
    python scripts/cli_tables.py --check  # exit 1 if they are not current (tests/test_docs.py runs this)

Each table goes between a ``<!-- options: KEY -->`` line and the next ``<!-- options: end -->`` line; the rest of
the document is written by hand. KEY is a command (``evaluate``, ``data demo``), ``shared inference`` (the flags
evaluate, predict and ensemble share: ``InferenceOptions``) or ``every command`` (--quiet, --debug, --help). A
command's table leaves those out, and `train`'s leaves out the config's flags: docs/training.md and docs/models.md
are their tables.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import click  # noqa: E402 - the repository root goes on the path first

from scripts.generated_docs import regenerate  # noqa: E402
from sertool.cli.commands import cli  # noqa: E402
from sertool.cli.flags import Number  # noqa: E402
from sertool.core.config import Bounds, config_options, field_options  # noqa: E402
from sertool.inference.options import InferenceOptions  # noqa: E402

DOCUMENT = ROOT / "docs" / "cli.md"
EVERY_COMMAND, SHARED_INFERENCE = "every command", "shared inference"
EVERY_COMMAND_FLAGS = ("quiet", "debug")  # sertool.cli.commands._Group's; and click's --help
SHARES_INFERENCE = ("evaluate", "predict", "ensemble")
START = re.compile(r"^<!-- options: (?!end -->)(?P<key>[a-z ]+) -->$", re.MULTILINE)
END = "<!-- options: end -->"


def commands() -> dict[str, click.Command]:
    """Every command that runs (not a group), by its path: ``{"data demo": ..., "evaluate": ...}``."""
    found: dict[str, click.Command] = {}

    def walk(group: click.Group, path: tuple[str, ...]) -> None:
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                walk(command, (*path, name))
            else:
                found[" ".join((*path, name))] = command

    walk(cli, ())
    return found


def context(path: str) -> click.Context:
    """A click context of the command at ``path`` under ``sertool`` (its parameters then include --help)."""
    ctx = click.Context(cli, info_name="sertool", **cli.context_settings)
    command: click.Command = cli
    for name in path.split():
        command = command.commands[name]  # type: ignore[attr-defined]
        ctx = click.Context(command, info_name=name, parent=ctx)
    return ctx


def config_flag_names() -> set[str]:
    """The parameter names of `sertool train`'s config flags (``train__lr_heads``, ``seed``)."""
    return {f"{spec.section}__{spec.name}" if spec.section else spec.name for spec in config_options()}


def table_options(key: str) -> list[click.Option]:
    """The options the table ``key`` lists, in ``--help`` order."""
    shared = {spec.name for spec in field_options(InferenceOptions)}
    if key == EVERY_COMMAND:
        return [param for param in _options(SHARES_INFERENCE[0]) if _every_command(param)]
    if key == SHARED_INFERENCE:
        return [param for param in _options(SHARES_INFERENCE[0]) if param.name in shared]
    left_out = (shared if key in SHARES_INFERENCE else set()) | (config_flag_names() if key == "train" else set())
    return [param for param in _options(key) if not _every_command(param) and param.name not in left_out]


def _options(path: str) -> list[click.Option]:
    """The options of the command at ``path`` in ``--help`` order, --help included."""
    ctx = context(path)
    return [param for param in ctx.command.get_params(ctx) if isinstance(param, click.Option)]


def _every_command(param: click.Option) -> bool:
    return param.name in EVERY_COMMAND_FLAGS or "--help" in param.opts


def render(key: str) -> str:
    """The table ``key`` (and, for a command, its usage line), without its marker lines."""
    lines = []
    if key not in (EVERY_COMMAND, SHARED_INFERENCE):
        ctx = context(key)
        usage = " ".join(["sertool", key, *ctx.command.collect_usage_pieces(ctx)])
        lines += [f"`{usage}`", ""]
    lines += ["| flag | default | allowed | |", "|---|---|---|---|"]
    ctx = context(SHARES_INFERENCE[0] if key in (EVERY_COMMAND, SHARED_INFERENCE) else key)
    lines += [f"| {flag_cell(param)} | {default_cell(param, ctx)} | {allowed_cell(param)} | "
              f"{_cell(param.help or '').replace('<', '&lt;')} |" for param in table_options(key)]
    return "\n".join(lines)


def flag_cell(param: click.Option) -> str:
    names = ", ".join(f"`{name}`" for name in param.opts + param.secondary_opts)
    return _cell(f"{names[:-1]} {param.metavar}`" if param.metavar else names)


def default_cell(param: click.Option, ctx: click.Context) -> str:
    """``required``, nothing (no default: None, an off flag, an empty list), a number, or a string in backticks."""
    if param.required:
        return "required"
    value = param.get_default(ctx)
    if value is None or value is False or value == ():
        return ""
    if isinstance(value, (tuple, list)):
        return " ".join(_number(item) for item in value)
    return _number(value) if isinstance(value, (int, float)) else f"`{value}`"


def allowed_cell(param: click.Option) -> str:
    kind = param.type
    if isinstance(kind, click.Choice):
        return ", ".join(f"`{choice}`" for choice in kind.choices)
    if isinstance(kind, Number):
        allowed = "finite" if kind.bounds == Bounds() else kind.bounds.describe()
        return f"each {allowed}, comma-separated" if kind.many else allowed
    return ""


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def updated(document: str) -> str:
    """``document`` with the text between each ``<!-- options: KEY -->`` line and the next end line replaced by
    the table ``KEY``."""
    parts, position = [], 0
    for match in START.finditer(document):
        end = document.find(END, match.end())
        if end < 0:
            raise SystemExit(f"{DOCUMENT}: {match.group()} has no {END} line after it")
        parts += [document[position:match.end()], "\n", render(match.group("key")), "\n"]
        position = end
    return "".join(parts) + document[position:]


def keys(document: str) -> list[str]:
    """The tables ``document`` holds, in order."""
    return [match.group("key") for match in START.finditer(document)]


def main() -> int:
    return regenerate(DOCUMENT, updated, description=__doc__.splitlines()[0], script="scripts/cli_tables.py")


if __name__ == "__main__":
    sys.exit(main())
