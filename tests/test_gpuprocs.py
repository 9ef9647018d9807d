"""Who holds each GPU (tui/gpuprocs.py) and the header's summary, from NVML answers recorded as NVML's structures:
the pure mapping first, then the whole path from NVML calls (a fake pynvml) and real processes to the rows."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tests.nvml_fake import GIB, NOT_AVAILABLE, FakeGpu, fake_pynvml
from tui.gpuprocs import GpuProcess, Holder, gpu_summary, map_gpu_processes, short_gpu_name, used_memory
from tui.telemetry import GpuStat, LiveTelemetry
from tui.widgets.system import render_telemetry

# a torchrun run: launcher 500 (the DB's pid), workers 501 (GPU 0) and 502 (GPU 1); a single-GPU run 600 on
# GPU 2; 900: someone else's job on GPU 0; 950: Xorg (graphics) on GPU 1, memory not available
PARENTS = {501: 500, 502: 500, 500: 1, 600: 1, 900: 880, 880: 1, 950: 1}
NAMES = {900: "python3", 950: "Xorg", 880: "bash"}
RUNS = [{"id": "ddp-run", "state": "training", "pid": 500, "gpu_set": "0,1"},
        {"id": "one-gpu", "state": "paused", "pid": 600, "gpu_set": "2"},
        {"id": "starting", "state": "preparing", "pid": 700, "gpu_set": "3"},
        {"id": "old", "state": "completed", "pid": 900, "gpu_set": "0"}]  # ended: its PID is someone else's now


def gpu(index: int, name: str = "NVIDIA H100 80GB HBM3", util: float | None = 50.0, used: int = 10 * GIB,
        total: int = 80 * GIB, error: str | None = None) -> GpuStat:
    return GpuStat(index=index, name=name, util_percent=util, mem_used=used, mem_total=total, temperature_c=None,
                   power_w=None, power_limit_w=None, error=error)


def test_processes_are_matched_to_runs_through_their_ancestors() -> None:
    procs = {0: [(501, 20 * GIB), (900, None)], 1: [(502, 21 * GIB), (950, NOT_AVAILABLE)],
             2: [GpuProcess(600, 5 * GIB)], 3: []}
    uses = map_gpu_processes([gpu(i) for i in range(5)], procs, RUNS, PARENTS.get, NAMES.get)
    assert [u.index for u in uses] == [0, 1, 2, 3, 4]
    assert uses[0].holders == (Holder(501, "ddp-run", None, 20 * GIB), Holder(900, None, "python3", None))
    assert uses[1].holders == (Holder(502, "ddp-run", None, 21 * GIB), Holder(950, None, "Xorg", None))
    assert uses[2].holders == (Holder(600, "one-gpu", None, 5 * GIB),) and uses[2].waiting == ()
    assert uses[3].holders == () and uses[3].assigned == ("starting",) == uses[3].waiting  # loading its model
    assert uses[4].holders == () == uses[4].assigned
    assert uses[0].holders[1].label() == "python3 (not overnight)" and uses[0].holders[0].label() == "ddp-run"


def test_one_process_listed_twice_is_one_holder_and_odd_answers_do_not_raise() -> None:
    def parent(pid: int) -> int | None:
        if pid == 13:
            raise ProcessLookupError(pid)  # gone between NVML's answer and psutil's
        return {11: 12, 12: 11}.get(pid)  # a cycle (PID reuse): no owner, no endless loop

    uses = map_gpu_processes([0], {0: [(10, 1 * GIB), (10, None), (10, 2 * GIB), (11, 5), (13, -1)]},
                             [{"id": "r", "state": "training", "pid": 99, "gpu_set": None}], parent,
                             lambda pid: 1 // 0)
    assert uses[0].holders == (Holder(10, None, None, 3 * GIB), Holder(11, None, None, 5), Holder(13, None, None, None))
    assert used_memory(None) is None and used_memory(NOT_AVAILABLE) is None and used_memory(7) == 7


def test_header_summary() -> None:
    assert [short_gpu_name(n) for n in ("NVIDIA H100 80GB HBM3", "Tesla V100-SXM2-16GB", "NVIDIA A100-SXM4-80GB",
                                        "NVIDIA GeForce RTX 4090", "NVIDIA RTX 6000 Ada Generation", "Tesla T4",
                                        "NVIDIA L40S", "NVIDIA H100 NVL")] == \
        ["H100", "V100", "A100", "RTX 4090", "RTX 6000", "T4", "L40S", "H100"]
    two = [gpu(0, util=90.0, used=30 * GIB), gpu(1, util=84.0, used=31 * GIB)]
    assert gpu_summary(two, None) == "GPU 2×H100 87% · 61/160 GB"
    assert gpu_summary(two, None, compact=True) == "2×H100 87% 61/160G"
    assert gpu_summary([], "no NVIDIA GPU (NVML unavailable: ...)") == "no GPU (CPU)"
    mixed = [gpu(0, util=None), gpu(1, "NVIDIA A100-SXM4-40GB", util=None, total=40 * GIB), gpu(2, error="lost")]
    assert gpu_summary(mixed, None) == "GPU 1×H100+1×A100 +1✗ -% · 20/120 GB"
    assert len(gpu_summary([gpu(i) for i in range(8)], None)) <= 30


@pytest.fixture
def torchrun_like():
    """A real launcher with two worker children (as torchrun starts them); yields (launcher, [worker PIDs])."""
    code = ("import subprocess, sys, time\n"
            "ws = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']) for _ in range(2)]\n"
            "print(' '.join(str(w.pid) for w in ws), flush=True)\n"
            "time.sleep(120)\n")
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in launcher.stdout.readline().split()]
    yield launcher.pid, workers
    for pid in workers:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    launcher.kill()
    launcher.wait()


def test_from_nvml_calls_to_rows(monkeypatch: pytest.MonkeyPatch, torchrun_like) -> None:
    """The fake pynvml answers with NVML's structures for two GPUs: the workers of a real launcher process (the
    run's recorded PID) on GPUs 0 and 1, this test's own process as a job of no run (memory not available), and a
    graphics process with the raw NOT_AVAILABLE value. LiveTelemetry reads it, psutil finds the ancestry."""
    launcher, (w0, w1) = torchrun_like
    me = os.getpid()
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([
        FakeGpu(util=90, used=30 * GIB, compute=[(w0, 20 * GIB), (me, None)]),
        FakeGpu(util=84, used=31 * GIB, compute=[(w1, 21 * GIB)], graphics=[(4_000_000, None)])]))
    live = LiveTelemetry(Path("/"))
    t = live.sample()
    live.close()
    assert [p.used_memory for g in t.gpus for p in g.processes] == [20 * GIB, None, 21 * GIB, None]
    assert t.parent_of(w0) == launcher == t.parent_of(w1) and t.name_of(me)
    runs = [{"id": "ddp-20260514-020000", "state": "training", "pid": launcher, "gpu_set": [0, 1]}]
    uses = map_gpu_processes(t.gpus, t.procs_by_gpu(), runs, t.parent_of, t.name_of)
    assert [(h.pid, h.run_id, h.used_memory) for u in uses for h in u.holders] == \
        [(w0, "ddp-20260514-020000", 20 * GIB), (me, None, None), (w1, "ddp-20260514-020000", 21 * GIB),
         (4_000_000, None, None)]
    assert gpu_summary(t.gpus, t.gpu_error) == "GPU 2×H100 87% · 61/160 GB"

    console = Console(width=80, record=True)
    console.print(render_telemetry(t, 80, runs=runs))
    rows = [line.split() for line in console.export_text().splitlines()]
    head = rows.index(["on", "the", "GPU", "PID", "memory"])
    assert rows[head + 1:head + 5] == [["GPU0", "ddp-20260514-020000", str(w0), "20.0G"],
                                       [t.name_of(me), "(not", "overnight)", str(me), "-"],
                                       ["GPU1", "ddp-20260514-020000", str(w1), "21.0G"],
                                       ["not", "overnight", "4000000", "-"]]
