"""A run on a Slurm node: its trainer reports its own GPUs in progress.json (this machine's NVML cannot see them),
and the dashboard's log header shows them."""
from __future__ import annotations

import json
import sys

import pytest

from daemon.trainer import gpustats
from tests.nvml_fake import GIB, FakeGpu, fake_pynvml


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([FakeGpu(util=10, used=2 * GIB),
                                                            FakeGpu(name="NVIDIA A100", util=87, used=41 * GIB)]))
    monkeypatch.setattr(gpustats, "_nvml", None)  # initialised anew from the fake


def test_the_trainer_reports_the_gpus_it_was_given(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert gpustats.sample() == [{"index": "1", "name": "NVIDIA A100", "util_percent": 87, "mem_used": 41 * GIB,
                                  "mem_total": 80 * GIB}]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert [g["index"] for g in gpustats.sample()] == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7,GPU-1234")  # not there, or not this process's to query: left out
    assert gpustats.sample() == []


def test_without_nvml_there_are_no_figures_and_no_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` fails
    monkeypatch.setattr(gpustats, "_nvml", None)
    assert gpustats.sample() == []


def test_the_dashboard_shows_a_remote_runs_gpus_from_its_progress(tmp_path):
    from tests.test_tui import app_for, drive, loaded, static_text, until
    from tests.tui_fixtures import TRAINING, build_home

    fx = build_home(tmp_path / "home")
    progress = fx.home.runs / TRAINING / "progress.json"
    data = json.loads(progress.read_text())
    data.update(job_id="4711", node="gpu-node-3", gpus=[{"index": "0", "name": "NVIDIA A100", "util_percent": 87,
                                                         "mem_used": 41 * GIB, "mem_total": 80 * GIB}])
    progress.write_text(json.dumps(data))
    app = app_for(fx.root)

    async def body(pilot) -> None:
        await loaded(pilot)
        await until(pilot, lambda: "node gpu-node-3: GPU0 87% 41.0G/80.0G" in static_text(app, "#log-head"),
                    what="the node's GPU figures in the log header")
    drive(app, body, size=(160, 30))
