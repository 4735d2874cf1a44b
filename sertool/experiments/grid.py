"""The paper's experiment grid: which systems, how they are laid out in tables, how they are scaled.

The grid file (``sertool/configs/paper/grid.yaml``) names systems by their config file in the same folder, or as a
*variant* of such a system (its config with a few settings changed, declared in the grid), groups them into tables
with the paper's Development CCC beside each, and lists ensembles of systems and the paper's submitted systems
(its Table 6, on the challenge test set; ``reproduce`` scores them on Test1). Each table belongs to a *part*: the
paper's tables (``paper``, what ``make reproduce`` runs) or the variants that measure what the paper leaves open
and what the authors' release does differently (``variants``, ``reproduce --tables variants``). At demo scale
each system's pretrained models are replaced by stand-ins and a few training settings are overridden, so
that the whole grid runs on a CPU in minutes; at real scale the configs run as they are, with model
locations optionally pointed at local folders.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sertool.core.config import Config, apply_value
from sertool.core.errors import SertoolError
from sertool.guards.reads import MAX_CONFIG_BYTES, read_user_text

SCALES = ("demo", "real")
PARTS = ("paper", "variants")  # a table's part; ``reproduce --tables`` picks parts ("all": both)
SOURCES = ("paper", "release", "sertool")  # whose choice a variant's difference is
# The paper's grid and its configs are package data (setup.cfg), so an installed sertool finds them wherever
# it runs; in a checkout they are the same files.
GRID_NAME = "grid.yaml"  # a grid's file: the paper's, and what `reproduce --grid` names in its messages
PAPER_GRID = Path(__file__).resolve().parent.parent / "configs" / "paper" / GRID_NAME


@dataclass(frozen=True)
class Row:
    system: str
    paper: tuple[float, float, float, float] | None  # A, V, D, average on Development, or None


@dataclass(frozen=True)
class Table:
    title: str
    rows: tuple[Row, ...]
    part: str = "paper"  # one of PARTS
    note: str = ""  # shown under the title: what the table measures and whose choices its rows are


@dataclass(frozen=True)
class Variant:
    """A system that is another system's config with some settings changed.

    ``settings`` apply at real scale, and at demo scale too unless ``demo_settings`` replaces them there (they
    are applied after the demo overrides, so a variant's difference survives them). A variant that means
    nothing with the demo stand-ins (the padded Whisper input, on the fbank stand-in) leaves ``demo`` out of
    ``scales``.
    """

    id: str
    of: str  # the system it varies: a config of the grid's folder
    settings: dict[str, dict[str, Any]]  # {section: {key: value}}
    demo_settings: dict[str, dict[str, Any]] | None
    scales: tuple[str, ...]
    source: str  # whose choice the difference is: SOURCES
    what: str  # one line: what the variant changes and why

    def settings_at(self, scale: str) -> dict[str, dict[str, Any]]:
        """The settings it changes at ``scale``."""
        return self.demo_settings if scale == "demo" and self.demo_settings is not None else self.settings


@dataclass(frozen=True)
class SubmissionTable:
    """The paper's submitted systems on the challenge test set (Test3, whose labels are not public):
    ``reproduce`` scores them on Test1 instead, a stand-in, beside the paper's test figures."""

    title: str
    rows: tuple[Row, ...]  # each names an ensemble id or a system; paper: test-set figures, None where not given
    note: str  # what the paper's figures are (and are not), shown under the title


@dataclass(frozen=True)
class Ensemble:
    id: str  # names its files (predictions/<id>/...); letters, digits, '-' and '_'
    name: str  # as the table shows it
    members: tuple[str, ...]


@dataclass
class Grid:
    """A parsed grid file."""

    folder: Path
    tables: list[Table]
    ensembles: list[Ensemble]
    demo_stand_ins: dict[str, str] = field(default_factory=dict)
    demo_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    submissions: SubmissionTable | None = None
    variants: dict[str, Variant] = field(default_factory=dict)

    @property
    def systems(self) -> list[str]:
        """Every system the tables and ensembles need, each once, in order of first mention."""
        return self.systems_of(PARTS)

    def systems_of(self, parts: tuple[str, ...]) -> list[str]:
        """The systems the tables of ``parts`` need (and, with ``paper``, the ensembles), in order of mention."""
        names = [row.system for table in self.tables if table.part in parts for row in table.rows]
        if "paper" in parts:
            names += [member for ensemble in self.ensembles for member in ensemble.members]
        return list(dict.fromkeys(names))

    def runs_at(self, system: str, scale: str) -> bool:
        """Whether ``system`` means something at ``scale`` (every config does; a variant may be real-scale only)."""
        return system not in self.variants or scale in self.variants[system].scales

    def config(self, system: str, *, scale: str, corpus: str, model_locations: dict[str, str] | None = None) -> Config:
        """The resolved config of ``system`` at ``scale`` on ``corpus``.

        Args:
            model_locations: real scale only: default hub id → local folder (e.g. ``microsoft/wavlm-large`` →
                ``/models/wavlm-large``), for machines without hub access.
        """
        if system in self.variants:
            variant = self.variants[system]
            if not self.runs_at(system, scale):
                raise SertoolError(f"grid {self.folder / GRID_NAME}: variant {system!r} runs at "
                                   f"{' and '.join(variant.scales)} scale only")
            config = self.config(variant.of, scale=scale, corpus=corpus, model_locations=model_locations)
            for section, values in variant.settings_at(scale).items():
                for key, value in values.items():
                    apply_value(config, section, key, value, source=f"{self.folder / GRID_NAME} variants.{system}")
            return config
        path = self.folder / f"{system}.yaml"
        if not path.is_file():
            raise SertoolError(f"grid {self.folder / GRID_NAME}: system {system!r} has no config {path}")
        config = Config.from_yaml(path)
        config.data.corpus = corpus
        if scale == "demo":
            model = config.model
            config.model = dataclasses.replace(
                model, backbone=self.demo_stand_ins.get("backbone", model.backbone), backbone_path=None,
                text_model=self.demo_stand_ins.get("text_model", model.text_model),
                speaker_embedding=self.demo_stand_ins.get("speaker_embedding") if model.speaker_embedding else None)
            for section, values in self.demo_overrides.items():
                for key, value in values.items():
                    apply_value(config, section, key, value, source=f"{self.folder / GRID_NAME} demo_scale")
        elif model_locations:
            from sertool.core.config import DEFAULT_BACKBONE_IDS

            model = config.model
            backbone_id = model.backbone_path or DEFAULT_BACKBONE_IDS[model.backbone]
            backbone_path = (model_locations.get(backbone_id, model.backbone_path) if backbone_id
                             else model.backbone_path)
            config.model = dataclasses.replace(
                model, backbone_path=backbone_path,
                text_model=model_locations.get(model.text_model, model.text_model),
                speaker_embedding=model_locations.get(model.speaker_embedding, model.speaker_embedding)
                if model.speaker_embedding else None)
        return config


def read_grid(path: str | Path) -> Grid:
    """Parse a grid file.

    Raises:
        SertoolError: unreadable YAML or a malformed entry, naming it.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(read_user_text(path, what="grid", max_bytes=MAX_CONFIG_BYTES))
    except yaml.YAMLError as error:
        raise SertoolError(f"--grid {path}: cannot read it ({str(error).splitlines()[0]})") from None
    try:
        tables = [Table(str(table["title"]), tuple(Row(_file_name(row["system"]), _four(row.get("paper")))
                                                   for row in table["rows"]),
                        _choice(table.get("part", "paper"), PARTS, "part"), str(table.get("note", "")))
                  for table in data.get("tables", [])]
        ensembles = [Ensemble(_file_name(item["id"]), str(item["name"]), tuple(str(m) for m in item["members"]))
                     for item in data.get("ensembles", []) or []]
        if len({item.id for item in ensembles}) != len(ensembles) or {item.id for item in ensembles} & set(
                row.system for table in tables for row in table.rows):
            raise ValueError("ensemble ids must differ from each other and from the systems' names")
        demo = data.get("demo_scale", {}) or {}
        grid = Grid(path.parent, tables, ensembles, dict(demo.get("stand_ins", {}) or {}),
                    {section: dict(values) for section, values in (demo.get("overrides", {}) or {}).items()})
        grid.variants = _variants(data.get("variants"), grid)
        grid.submissions = _submissions(data.get("submissions"), grid)
        return grid
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise SertoolError(f"--grid {path}: malformed grid ({type(error).__name__}: {error}); "
                           "see sertool/configs/paper/grid.yaml for the layout") from None


def _variants(data: Any, grid: Grid) -> dict[str, Variant]:
    variants = {}
    for name, item in (data or {}).items():
        variant = Variant(_file_name(name), _file_name(item["of"]), _settings(item["set"]),
                          _settings(item["demo"]) if "demo" in item else None,
                          tuple(_choice(scale, SCALES, "scale") for scale in item.get("scales", SCALES)),
                          _choice(item["source"], SOURCES, "source"), str(item["what"]))
        if variant.of in (data or {}):
            raise ValueError(f"variant {name} is of {variant.of!r}, another variant: name a system with a config")
        variants[variant.id] = variant
    return variants


def _settings(values: Any) -> dict[str, dict[str, Any]]:
    settings = {str(section): dict(keys) for section, keys in values.items()}
    for section, keys in settings.items():  # every key must be a config key: a typo fails at read time
        for key, value in keys.items():
            try:
                apply_value(Config(), section, key, value, source="variants")
            except SertoolError as error:
                raise ValueError(str(error)) from None
    return settings


def _choice(value: Any, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} {value!r}: choose one of {', '.join(choices)}")
    return str(value)


def _submissions(data: Any, grid: Grid) -> SubmissionTable | None:
    if data is None:
        return None
    rows = tuple(Row(_file_name(row["system"]), _four(row.get("paper"))) for row in data["rows"])
    known = set(grid.systems) | {item.id for item in grid.ensembles}
    unknown = [row.system for row in rows if row.system not in known]
    if unknown:
        raise ValueError(f"submissions rows {', '.join(unknown)}: not an ensemble id or a system of the tables")
    return SubmissionTable(str(data["title"]), rows, str(data.get("note", "")))


def _file_name(value: Any) -> str:
    text = str(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", text):
        raise ValueError(f"system or ensemble id {text!r} must be letters, digits, '-' and '_' (it names files)")
    return text


def _four(values: Any) -> tuple[float, float, float, float] | None:
    if values is None:
        return None
    numbers = tuple(float(value) for value in values)
    if len(numbers) != 4:
        raise ValueError(f"paper figures must be [A, V, D, average], got {values}")
    return numbers
