"""bench/gpu_check.py, the script a short GPU loan runs, works before the loan: its CPU dry run takes the same
code path (training steps under autocast with GradScaler logic, checkpointing, FLOP counting, agreement)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--steps", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(row["dtype"], row["gradient_checkpointing"]) for row in report["training"]] == [
        ("bfloat16", False), ("bfloat16", True)]
    assert all(row["largest_batch_step_s"] > 0 and row["largest_batch_gflop"] > 0 for row in report["training"])
    # The dry run's quarter of max_batch_s, or min_batch_items (8) of its longest clips (11 s / 4) where more.
    assert report["largest_batch_padded_s"] <= max(64.0 / 4, 8 * 11.0 / 4)
    assert min(report["batches"]) >= 8  # training's min_batch_items
    agreement = report["agreement"]["bfloat16"]
    assert agreement["max_abs_difference"] < 0.25 and min(agreement["ccc_with_fp32"]) > 0.9
    assert "| bfloat16 | yes |" in done.stdout
