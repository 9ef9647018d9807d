"""The prepared GPU check (bench/gpu_check.py) runs on the CPU with the tiny model, so it cannot rot between GPU
sessions: the real daemon, the real trainer, every row, both baselines on the run's own tokens, the dashboard
capture and the figures table."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.e2e
def test_gpu_check_runs_on_the_cpu_with_the_tiny_model(tmp_path: Path, realdata: Path) -> None:
    few = ["--records", "8", "--records-big", "6", "--records-qlora", "6"]  # one step a row: the plumbing is the test
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu", "--tiny", *few, "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {r["slug"]: r for r in report["rows"]}
    assert list(rows) == ["lora-0.5b", "lora-0.5b-noliger", "qlora-8b-24g", "lora-8b"]
    assert all(r["overnight"]["outcome"] == "completed" and r["overnight"]["oom_retries"] == 0 for r in rows.values())
    baselines = [b for r in rows.values() for b in r["baselines"]]
    assert [b["kind"] for b in baselines] == ["trainer", "trl", "trl"]
    for r in rows.values():  # the baselines trained exactly the tokens overnight trained
        for b in r["baselines"]:
            assert b["outcome"] == "completed" and b["useful_tokens"] == r["overnight"]["useful_tokens"] > 0
            assert b["speedup"] > 0
    assert rows["lora-0.5b-noliger"]["overnight"]["plan"]  # the trainer's batching/checkpointing lines
    assert "| row | trainer | outcome | useful tok/s | computed tok/s | MFU | peak GPU mem |" in proc.stdout
    assert "Goals not judged" in (tmp_path / "gpu_check.md").read_text()
    system = (tmp_path / "tui_system.txt").read_text()  # the dashboard, rendered headless
    assert "no NVIDIA GPU" in system and "CPU" in system


def test_gpu_check_without_a_gpu_or_cpu_refuses_before_building_an_8b_model(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "no CUDA GPU is visible here" in proc.stderr and "--cpu --tiny" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing built, nothing written
