"""ContentCache's on_disk mode: values come back from their file, and a write that fails is an error."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from sertool.cache import items as cache_module
from sertool.cache.items import ContentCache
from sertool.core.errors import SertoolError


class FromFile:
    """A value that says which file it was read from (as a memory-mapped array would live in one)."""

    def __init__(self, number: int, path: Path | None = None) -> None:
        self.number, self.path = number, path


class Codec:
    suffix = ".json"

    def encode(self, rows: Mapping[str, FromFile]) -> bytes:
        return json.dumps({key: value.number for key, value in rows.items()}).encode()

    def decode(self, path: Path) -> dict[str, FromFile]:
        return {key: FromFile(number, path) for key, number in json.loads(path.read_text()).items()}


def test_on_disk_values_are_read_back_from_their_file_group_by_group(tmp_path):
    cache: ContentCache[FromFile] = ContentCache(tmp_path / "c", Codec(), on_disk=True)
    values = cache.get(["a", "b", "c"], lambda positions: [FromFile(10 * p) for p in positions], group_size=2)
    assert [value.number for value in values] == [0, 10, 20]
    files = sorted(tmp_path.joinpath("c").glob("*.json"))
    assert len(files) == 2 and {value.path for value in values} == set(files)  # none kept as computed
    in_memory: ContentCache[FromFile] = ContentCache(tmp_path / "m", Codec())  # the default keeps them as computed
    assert in_memory.get(["a"], lambda positions: [FromFile(1)])[0].path is None


def test_an_on_disk_write_that_fails_raises_and_keeps_the_groups_written(tmp_path, monkeypatch):
    cache: ContentCache[FromFile] = ContentCache(tmp_path / "c", Codec(), on_disk=True)
    writes = []
    real_atomic_write = cache_module.atomic_write

    def disk_full_at_the_second_write(path, mode="w", **options):
        writes.append(path)
        if len(writes) == 2:
            raise SertoolError(f"{path}: write failed (No space left on device)")
        return real_atomic_write(path, mode, **options)

    monkeypatch.setattr(cache_module, "atomic_write", disk_full_at_the_second_write)
    with pytest.raises(SertoolError, match="No space left.*next run goes on from there"):
        cache.get(["a", "b", "c", "d"], lambda positions: [FromFile(p) for p in positions], group_size=2)
    monkeypatch.undo()
    again: ContentCache[FromFile] = ContentCache(tmp_path / "c", Codec(), on_disk=True)
    again.get(["a", "b", "c", "d"], lambda positions: [FromFile(p) for p in positions], group_size=2)
    assert (again.hits, again.misses) == (2, 2)
