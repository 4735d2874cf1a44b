"""The package's layers: which part of sertool may import which, and no import cycle anywhere.

Every import of every module under sertool/ counts, deferred ones inside functions included: a deferred
import only hides a dependency from the reader, it does not remove it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sertool"

# Each part of sertool: one folder each (base: core/ and guards/, which check each other's input and output). A
# module belongs to the longest prefix listed.
PARTS: dict[str, tuple[str, ...]] = {
    "base": ("sertool.core", "sertool.guards"),
    "cache": ("sertool.cache",),
    "data": ("sertool.data",),
    "demo": ("sertool.demo",),
    "runtime": ("sertool.runtime",),
    "models": ("sertool.models",),
    "acceleration": ("sertool.acceleration",),
    "store": ("sertool.store",),
    "training": ("sertool.training",),
    "inference": ("sertool.inference",),
    "baseline": ("sertool.baseline",),
    "experiments": ("sertool.experiments",),
    "interface": ("sertool", "sertool.__main__", "sertool.api", "sertool.cli"),
}
# The allowed arrows, written once: a part imports itself and the parts listed here, nothing else.
# runtime and models are siblings (neither imports the other), and so are training and inference.
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "cache": {"base"},
    "data": {"base", "cache"},
    "demo": {"base", "data"},
    "runtime": {"base", "cache", "data"},
    "models": {"base", "cache", "data"},
    "acceleration": {"base", "models"},
    "store": {"base", "data", "models"},
    "training": {"base", "cache", "data", "runtime", "models", "store"},
    "inference": {"base", "cache", "data", "runtime", "models", "acceleration", "store"},
    "baseline": {"base", "data", "models", "store", "inference"},
    "experiments": {"base", "data", "runtime", "models", "store", "training", "inference"},
    "interface": {"base", "cache", "data", "demo", "runtime", "models", "acceleration", "store", "training",
                  "inference", "baseline", "experiments"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(module: str) -> set[str]:
    """The sertool modules ``module`` imports, anywhere in its body."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:  # `from sertool.data import manifest` imports the module sertool.data.manifest
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target)
    return {name for name in found if name in MODULES}


GRAPH = {module: _imports(module) for module in MODULES}


def _part(module: str) -> str:
    owner = max(((prefix, part) for part, prefixes in PARTS.items() for prefix in prefixes
                 if module == prefix or module.startswith(prefix + ".")), key=lambda item: len(item[0]))
    return owner[1]


def test_every_module_belongs_to_a_part():
    assert {module: _part(module) for module in MODULES}  # _part raises on a module no part holds
    assert set(PARTS) == set(ALLOWED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_layer_it_may_not(module):
    mine = _part(module)
    wrong = sorted(f"{target} ({_part(target)})" for target in GRAPH[module]
                   if _part(target) != mine and _part(target) not in ALLOWED[mine])
    assert not wrong, f"{module} ({mine}) imports {', '.join(wrong)}; {mine} may import {sorted(ALLOWED[mine])}"


def test_no_import_cycle():
    """Depth-first search for a back edge; the message names the cycle."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(MODULES):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_allowed_arrows_have_no_cycle():
    """The layers themselves form an order, so the per-module checks above can never hide a cycle of parts."""
    order: list[str] = []
    remaining = dict(ALLOWED)
    while remaining:
        ready = [part for part, needs in remaining.items() if needs <= set(order)]
        assert ready, f"the allowed arrows among {sorted(remaining)} form a cycle"
        order.extend(sorted(ready))
        for part in ready:
            del remaining[part]
