"""The prepared GPU check (bench/gpu_check.py) runs on the CPU with the tiny model, so it cannot rot between GPU
sessions: the real daemon, the real trainer, every variant, the dashboard capture and the figures table."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.e2e
def test_gpu_check_runs_on_the_cpu_with_the_tiny_model(tmp_path: Path, realdata: Path) -> None:
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu", "--tiny", "--steps", "2", "--out",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [r["outcome"] for r in rows] == ["completed"] * 5
    assert any(r["label"].startswith("tiny LoRA bf16, padded") and r["padding_share"] > 0.05 for r in rows)
    flat = next(r for r in rows if "padding-free" in r["label"])
    assert flat["padding_share"] == 0 and flat["useful_tokens_per_s"] > 0
    assert "| run | outcome | useful tok/s | computed tok/s | padding | peak GPU mem | MFU |" in proc.stdout
    system = (tmp_path / "tui_system.txt").read_text()  # the dashboard, rendered headless
    assert "no NVIDIA GPU" in system and "CPU" in system
