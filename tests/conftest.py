"""Shared fixtures: tiny hand-made corpora written to a temp folder (tests never read ../shared)."""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings

from tests.corpus_files import write_tiny_msp

# Property tests draw the same examples on every run of the suite (CI fails only on a change, never on a rare
# draw); the sweep (make sweep, SERTOOL_SWEEP_EXAMPLES) draws new ones each time, to find what is still hidden.
settings.register_profile("suite", derandomize=True, database=None)
settings.register_profile("sweep", derandomize=False)
settings.load_profile("sweep" if os.environ.get("SERTOOL_SWEEP_EXAMPLES") else "suite")


@pytest.fixture(scope="session", autouse=True)
def _session_cache_in_temp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """What module- and session-scoped fixtures (set up before any test's own fixtures) run caches in a temp
    folder of the session, never in the user's ~/.cache/sertool, which an older sertool may have filled."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERTOOL_CACHE", str(tmp_path_factory.mktemp("sertool-session-cache")))
        yield


@pytest.fixture(autouse=True)
def _cache_in_temp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and the commands it runs in subprocesses) caches in a fresh temp folder, never in the
    user's ~/.cache/sertool: corpus scans record what they read there."""
    monkeypatch.setenv("SERTOOL_CACHE", str(tmp_path_factory.mktemp("sertool-cache")))


@pytest.fixture
def tiny_msp(tmp_path: Path) -> Path:
    """Six utterances of three speakers over Train / Development / Test1, plus one Test3 file."""
    return write_tiny_msp(tmp_path)


@dataclass
class NetworkWaits:
    """What a test's code did that could make it wait on a network: connections, host lookups, sleeps."""

    connections: list[object] = field(default_factory=list)
    lookups: list[object] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)

    def none(self) -> bool:
        return not (self.connections or self.lookups or self.sleeps)


@pytest.fixture
def network_waits(monkeypatch: pytest.MonkeyPatch) -> NetworkWaits:
    """Records, in this process, every attempt to open a connection or look a host name up (each fails at
    once with OSError, as on a machine without a network) and every ``time.sleep`` (which returns at once).

    "Fails fast" without a clock: an offline failure is slow only if it waits on the network (a connection
    or a name lookup that times out, possibly retried) or sleeps between retries; a test asserts
    ``network_waits.none()`` instead of a wall-clock limit, which a busy shared machine can break.
    """
    waits = NetworkWaits()

    def connect(self: socket.socket, address: object, *args: object) -> None:
        waits.connections.append(address)
        raise OSError(f"tests: no network (connect to {address!r})")

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        waits.lookups.append(host)
        raise socket.gaierror(f"tests: no network (lookup of {host!r})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(time, "sleep", waits.sleeps.append)
    return waits


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model hub switched off as for a process started with ``HF_HUB_OFFLINE=1``: huggingface_hub reads
    the variable once, at import, so setting it in a test is not enough (the hub's first request of a
    process, for its agent registry, would still go out, for up to 3 s)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
