"""bench/real_size.py (``make realsize``, the paper's systems at real size on the CPU) works before anyone spends an
hour on it: with ``--tiny`` it takes the same code path (each system in a process of its own, the feature cache's
fill and its reuse) on the tiny models. Its 2-rank torchrun system is left out here: in one CI run of four its rank 1
hung after rank 0 had finished (an open finding, in the issue notes); sertool's own DDP runs are tested in
tests/test_ddp.py."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ["wavlm-gender", "mmwhisper-fill", "mmwhisper-cached"]


def _suite(out: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "real_size.py"), "--tiny", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_the_real_size_suite_runs_every_system_at_tiny_size_and_keeps_its_figures(tmp_path):
    done = _suite(tmp_path, "--only", ",".join(SYSTEMS))
    results = json.loads((tmp_path / "realsize.json").read_text())
    systems = results["systems"]
    assert list(systems) == SYSTEMS
    for system, figures in systems.items():
        assert figures["steps"] == 2, system
        assert 0 < figures["wall_s"] <= figures["process_s"], system
        assert figures["planned_peak_bytes"] > 0 and figures["peak_rss_bytes"] > 0, system
        assert f"| {system} | 2 |" in done.stdout
    # The high-water mark at each report: never falling, the run's own at its end. Step 2 ends with the validation,
    # reported first.
    marks = systems["wavlm-gender"]["marks"]
    assert [mark["phase"] for mark in marks] == ["set-up", "step 1", "validation", "step 2", "the rest (last.pt)"]
    peaks = [mark["peak_rss_bytes"] for mark in marks]
    assert peaks == sorted(peaks) and peaks[-1] == systems["wavlm-gender"]["peak_rss_bytes"]
    # The fill computed every utterance's frames (24 Train and 8 Development clips) and wrote them; the next run
    # read them all from the cache.
    fill, cached = systems["mmwhisper-fill"]["fill"], systems["mmwhisper-cached"]["fill"]
    assert "0 of 32 utterances' frames were cached" in fill["line"] and fill["seconds"] > 0
    assert systems["mmwhisper-fill"]["feature_cache_bytes"] > 0
    assert "32 of 32 utterances' frames were cached" in cached["line"]
    # A second run measures nothing again unless told to: the figures stay as they were.
    again = _suite(tmp_path, "--only", "wavlm-gender")
    assert "running" not in again.stdout
    assert json.loads((tmp_path / "realsize.json").read_text())["systems"] == systems
