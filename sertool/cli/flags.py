"""Every command's flags, made from the options dataclasses that declare them, and read back into them.

A field declared with ``sertool.core.config.option`` (its default, help, choices, bounds, flag name, metavar) is
one click option: ``option_flags`` turns an options dataclass into a command's flags, ``options_from`` turns
click's values back into the dataclass, checked against the same declarations as the Python API's
(``config.check_options``). So a flag's name, default, help and allowed values live in one place, next to the
library code that uses them, and the docs' option tables are made from the commands (scripts/cli_tables.py).
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import click

from sertool.core.config import (
    BACKBONE_RECIPES,
    RECIPES,
    Bounds,
    ConfigOption,
    check_options,
    config_options,
    field_options,
)
from sertool.core.errors import SertoolError

ARGUMENT_SUFFIX = "_argument"  # the parameter name of the positional form of a flag (``option(argument=...)``)


class Number(click.ParamType):
    """An int or float flag that must be finite and within ``bounds`` (click's FloatRange lets NaN through).

    Flags take their bounds from the field's declaration, so a flag, a YAML key and an API argument are
    checked alike; with ``many``, the value is a comma-separated list (``--weights 0.6,0.4``).
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


class Names(click.Choice):
    """A list-of-names flag of `sertool train` (``--aux``, ``--attributes``): each use names one or several choices,
    comma-separated (``--attributes arousal,dominance``), and may be repeated; ``_joined`` makes one tuple of all."""

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return tuple(value)
        choose = super().convert
        return tuple(choose(item.strip(), param, ctx) for item in str(value).split(","))


def _joined(ctx: click.Context, param: click.Parameter, value: tuple[tuple[str, ...], ...]) -> tuple[str, ...]:
    """Every use of a repeated ``Names`` flag as one tuple, in order."""
    return tuple(name for names in value for name in names)


class AliasArgument(click.Argument):
    """The positional form of a flag (``ROOT`` for ``--corpus ROOT``): optional, since the flag may be given
    instead; messages name it by its metavar."""


def option_flags(options_class: type, *, overrides: bool = False) -> typing.Callable[[Any], Any]:
    """A decorator giving a click command one flag per field of ``options_class`` (a nested options dataclass's
    fields in its place), in declaration order.

    Each flag takes the field's default, choices, bounds, metavar and help (``_flag``). With ``overrides`` (the
    config's flags of `sertool train`), a flag left out is None, "not given", so that a --config file or a
    recipe decides; the help then shows the field's default, each recipe's value where one differs
    (``_recipe_values``) and the allowed values, booleans get a ``--no-`` form,
    a list of names is repeatable or comma-separated with ``none`` to empty it, and a config section's fields are
    named ``<section>__<field>`` (``_overriding_flag``).
    """
    def decorate(command):
        for spec in reversed(field_options(options_class)):
            command = (_overriding_flag(spec) if overrides else _flag(spec))(command)
            if spec.argument and not overrides:
                command = click.argument(spec.name + ARGUMENT_SUFFIX, required=False, metavar=spec.argument,
                                         cls=AliasArgument)(command)
        return command
    return decorate


def _flag(spec: ConfigOption):
    if spec.type is bool:
        return click.option(spec.flag, spec.name, is_flag=True, help=spec.help)
    kind = spec.item if spec.type is list else spec.type
    value_type = (click.Choice(spec.choices) if spec.choices else
                  Number(kind, spec.bounds, many=spec.many) if kind in (int, float) else None)
    return click.option(spec.flag, spec.name, type=value_type, default=spec.default, show_default=True,
                        required=spec.required, metavar=spec.metavar, help=spec.help, multiple=spec.type is tuple,
                        nargs=spec.length or 1)


def _overriding_flag(spec: ConfigOption):
    name = f"{spec.section}__{spec.name}" if spec.section else spec.name
    default_text = _shown(spec.default)
    reset = f" (none: no {spec.name})" if spec.type is tuple else ""
    allowed = f"; {spec.bounds.describe()}" if spec.bounds else ""
    help_text = (f"{spec.help}{reset}  [default: {default_text if default_text not in ('', None) else 'none'}"
                 f"{_recipe_values(spec)}{allowed}]")
    if spec.type is bool:
        return click.option(f"{spec.flag}/--no-{spec.flag[2:]}", name, default=None, help=help_text)
    if spec.type is tuple:
        return click.option(spec.flag, name, multiple=True, type=Names([*(spec.choices or ()), "none"]),
                            callback=_joined, help=help_text)
    kind = (click.Choice(spec.choices) if spec.choices else
            Number(spec.type, spec.bounds) if spec.type in (int, float) else spec.type)
    return click.option(spec.flag, name, type=kind, default=None, help=help_text)


def _recipe_values(spec: ConfigOption) -> str:
    """What the recipes set ``spec``'s field to, as the help's default shows it (", small-cpu recipe (fbank): 256"),
    for each recipe that sets it; empty when none does. `train --help` cannot know the backbone (--help is read
    before the other flags), so it names every recipe's value and the backbones that get that recipe."""
    key = f"{spec.section}.{spec.name}" if spec.section else spec.name
    shown = []
    for recipe, values in RECIPES.items():
        if key in values and values[key] != spec.default:
            backbones = ", ".join(backbone for backbone, name in BACKBONE_RECIPES.items() if name == recipe)
            shown.append(f", {recipe} recipe{f' ({backbones})' if backbones else ''}: {_shown(values[key])}")
    return "".join(shown)


def _shown(value: Any) -> Any:
    """A default as the help shows it: a list of names joined by commas, anything else as it is."""
    return ", ".join(value) if isinstance(value, tuple | list) else value


def options_from(options_class: type, values: dict[str, Any]):
    """``options_class`` filled from click's ``values`` (the inverse of ``option_flags``; the values it takes are
    removed from ``values``), checked against its declarations as ``sertool.load`` checks the API's.

    Raises:
        SertoolError: a flag and its positional form both given, differently, or neither of them; a value its
            field does not allow.
    """
    for spec in field_options(options_class):
        if spec.argument:
            values[spec.name] = _one_path(values.pop(spec.name + ARGUMENT_SUFFIX, None), values.get(spec.name),
                                          name=spec.argument, flag=spec.flag)
    options = _filled(options_class, values)
    check_options(options, source=None)
    return options


def _one_path(positional: str | None, option: str | None, *, name: str, flag: str) -> str:
    """A path given either as the argument ``name`` or as ``flag`` (the convention of every command)."""
    if positional and option and Path(positional) != Path(option):
        raise SertoolError(f"two paths given ({positional} and {flag} {option}); pass one")
    path = positional or option
    if not path:
        raise SertoolError(f"no path given: pass {name} or {flag} {name}")
    return str(Path(path))


def _filled(options_class: type, values: dict[str, Any]):
    return options_class(**{spec.name: values.pop(spec.name) if "help" in spec.metadata
                            else _filled(spec.default_factory, values)  # type: ignore[arg-type]
                            for spec in dataclasses.fields(options_class)})


class SectionedCommand(click.Command):
    """A command whose ``--help`` lists its options in groups, as docs/training.md and docs/models.md do: the
    config's ``data``, ``model`` and ``train`` sections (flags from ``option_flags(Config, overrides=True)``),
    then the rest."""

    SECTIONS = (("data", "Data (the config's data section)"), ("model", "Model (the config's model section)"),
                ("train", "Training (the config's train section, and the seed)"))

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                groups.setdefault(section_of(param.name or ""), []).append(record)
        for key, title in (("run", "Run and output"), *self.SECTIONS):
            if groups.get(key):
                with formatter.section(title):
                    formatter.write_dl(groups[key])


def section_of(name: str) -> str:
    """The help group of a `sertool train` parameter: its config section, "train" for a top-level config field
    (the seed), else "run"."""
    section, separator, _ = name.partition("__")
    if separator:
        return section
    return "train" if any(spec.name == name and not spec.section for spec in config_options()) else "run"
