"""Homes for the dashboard tests: DB rows written through the daemon's own Store, run folders with real files.

Times are fixed (2026-05-14 night) so snapshot pictures do not change from one day to the next; the curves and
evolution records are computed (the evolution fields through daemon.core.evolution's own scoring), not typed in.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path

from daemon.core.evolution import is_exact, similarity
from daemon.core.home import Home
from daemon.engine.store import Store
from tui.gpuprocs import GpuProcess
from tui.telemetry import GpuStat, ProcInfo, SystemStat, Telemetry

BASE = dt.datetime(2026, 5, 14, 1, 0, 0)
TRAINING = "reverse-words-20260514-020000"
QUEUED_HIGH = "chat-support-20260514-021500"
QUEUED_LOW = "poems-20260514-022000"
COMPLETED = "alpaca-small-20260514-010000"
FAILED = "sharegpt-mix-20260514-003000"
STOPPED = "notes-20260513-230000"
BASE_MODEL = "/models/tiny-qwen2"


def at(minutes: float) -> dt.datetime:
    """A fixed moment, `minutes` after BASE."""
    return BASE + dt.timedelta(minutes=minutes)


def iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="seconds")


def log_stamp(t: dt.datetime) -> str:
    return t.strftime("[%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}]"


def loss_at(step: int, start: float = 6.2, floor: float = 0.6, tau: float = 60.0) -> float:
    """A training-loss curve shape: exponential decay towards a floor, with a small deterministic wobble."""
    return floor + (start - floor) * math.exp(-step / tau) + 0.05 * math.sin(step * 0.7)


def lr_at(step: int, total: int, peak: float = 3e-3, warmup: int = 10) -> float:
    """Linear warm-up then linear decay (the Trainer's default schedule with warm-up)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (total - step) / (total - warmup))


def metrics_records(steps: int, total: int, eval_every: int = 40, start: dt.datetime = BASE) -> list[dict]:
    """metrics.jsonl records as the trainer writes them: one per step, eval-only records every `eval_every`."""
    out = []
    for s in range(1, steps + 1):
        t = start + dt.timedelta(seconds=2 * s)
        out.append({"step": s, "loss": round(loss_at(s), 4), "lr": lr_at(s, total), "grad_norm": round(1.5 / s ** 0.3, 4),
                    "tokens_per_s": 2300.0 + 10 * math.sin(s), "epoch": round(s / 100, 3), "time": iso(t)})
        if s % eval_every == 0:
            out.append({"step": s, "eval_loss": round(loss_at(s) + 0.15, 4), "epoch": round(s / 100, 3),
                        "time": iso(t)})
    return out


PROBES = [("reverse: alpha beta gamma", "gamma beta alpha"), ("reverse: one two three four", "four three two one"),
          ("reverse: red green blue", "blue green red"), ("reverse: sun moon star sky", "sky star moon sun")]
# what the model answered at snapshots 0, 40, 80, 120: learned early, learned late, learned then forgotten, never
ANSWERS = {0: ["alpha alpha", "one one", "red red red", "sun"],
           40: ["gamma beta alpha", "four two one", "blue green red", "sky sun"],
           80: ["gamma beta alpha", "four three two one", "blue green red", "sky moon sun"],
           120: ["gamma beta alpha", "four three two one", "blue red", "sky moon star"]}


def evolution_records() -> list[dict]:
    """evolution.jsonl records: per snapshot per probe, scored by daemon.core.evolution like the trainer does."""
    out = []
    for step, answers in ANSWERS.items():
        for i, ((prompt, reference), generation) in enumerate(zip(PROBES, answers)):
            out.append({"step": step, "probe": i, "prompt": prompt, "reference": reference, "generation": generation,
                        "loss": round(3.0 * (1 - similarity(generation, reference)) + 0.1, 4),
                        "exact": is_exact(generation, reference), "similarity": round(similarity(generation, reference), 4)})
    return out


def console_lines(run_id: str, steps: int, total: int, start: dt.datetime) -> list[str]:
    """console.log as the trainer writes it: a header, one line per logged step, control acknowledgements."""
    lines = [f"{log_stamp(start)} overnight trainer: run {run_id}",
             f"{log_stamp(start)} model {BASE_MODEL} · dataset dataset/{run_id.rsplit('-', 2)[0]}.jsonl · device cpu",
             f"{log_stamp(start)} command: python -m daemon.trainer runs/{run_id}"]
    for s in range(1, steps + 1):
        t = start + dt.timedelta(seconds=2 * s)
        lines.append(f"{log_stamp(t)} step {s}/{total} loss {loss_at(s):.4f} lr {lr_at(s, total):.2e} "
                     f"tok/s {2300 + 10 * math.sin(s):.0f}")
    return lines


def write_run_folder(home: Home, run_id: str, steps: int, total: int, state: str, start: dt.datetime,
                     evolution: bool = True, footer: str | None = None) -> Path:
    """A run folder with console.log, metrics.jsonl, evolution.jsonl, progress.json and metadata.json."""
    d = home.runs / run_id
    (d / "dataset").mkdir(parents=True, exist_ok=True)
    lines = console_lines(run_id, steps, total, start)
    if footer:
        lines.append(f"{log_stamp(start + dt.timedelta(seconds=2 * steps + 1))} {footer}")
    (d / "console.log").write_text("\n".join(lines) + "\n")
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics_records(steps, total, start=start)))
    if evolution:
        records = [r for r in evolution_records() if r["step"] <= steps]
        (d / "evolution.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (d / "progress.json").write_text(json.dumps({"state": state, "step": steps, "max_steps": total,
                                                 "epoch": steps / 100, "pid": 4242, "device": "cpu",
                                                 "device_name": "cpu", "updated": iso(start)}))
    (d / "metadata.json").write_text(json.dumps({"run_id": run_id, "status": state, "base_model": BASE_MODEL}))
    return d


@dataclass
class FixtureHome:
    """A prepared home and the ids of its runs."""

    root: Path
    home: Home

    @property
    def db(self) -> Path:
        return self.home.db


def _insert(store: Store, home: Home, run_id: str, seq: int, state: str, created: dt.datetime, **fields: object) -> None:
    name = run_id.rsplit("-", 2)[0]
    store.insert_run({"id": run_id, "name": name, "group_id": run_id, "dataset": f"dataset/{name}.jsonl",
                      "format": "jsonl", "schema": "prompt_completion", "records": 512, "base_model": BASE_MODEL,
                      "state": state, "priority": fields.pop("priority", 0), "seq": seq,
                      "run_dir": str(home.runs / run_id), **fields})
    store.db.execute("UPDATE runs SET created = ?, updated = ? WHERE id = ?", [iso(created), iso(created), run_id])
    store.db.execute("UPDATE transitions SET time = ? WHERE run_id = ?", [iso(created), run_id])


def build_home(root: Path) -> FixtureHome:
    """A home with one training run, two queued, and a history (completed, failed, stopped) plus models."""
    home = Home.resolve(root, create=True)
    store = Store(home.db)
    try:
        _insert(store, home, STOPPED, 1, "stopped", at(-120), step=40, max_steps=200, loss=loss_at(40),
                started=iso(at(-119)), finished=iso(at(-110)), reason="stopped by the user (control/stop)")
        _insert(store, home, FAILED, 2, "failed", at(-30), step=57, max_steps=400, loss=None,
                started=iso(at(-29)), finished=iso(at(-25)),
                reason="loss became nan at step 57; last good checkpoint step-50 kept")
        _insert(store, home, COMPLETED, 3, "completed", at(0), step=300, max_steps=300, loss=loss_at(300),
                eval_loss=loss_at(300) + 0.15, tokens_per_s=2310.0, started=iso(at(1)), finished=iso(at(12)))
        _insert(store, home, TRAINING, 4, "training", at(60), step=120, max_steps=300, epoch=1.2, loss=loss_at(120),
                eval_loss=loss_at(120) + 0.15, tokens_per_s=2345.0, eta_s=361.0, started=iso(at(61)), pid=4242)
        _insert(store, home, QUEUED_HIGH, 5, "queued", at(75), priority=5)
        _insert(store, home, QUEUED_LOW, 6, "queued", at(80))
        store.db.execute("UPDATE runs SET updated = ?", [iso(at(90))])

        write_run_folder(home, STOPPED, 40, 200, "stopped", at(-119), evolution=False,
                         footer="run ended: stopped (exit code 0)")
        write_run_folder(home, FAILED, 57, 400, "failed", at(-29), evolution=False,
                         footer="run ended: failed (exit code 1): loss became nan at step 57")
        write_run_folder(home, COMPLETED, 300, 300, "completed", at(1), footer="run ended: completed (exit code 0)")
        write_run_folder(home, TRAINING, 120, 300, "training", at(61))

        for version, loss, parent in ((1, 0.95, None), (2, loss_at(300), "alpaca-small:1")):
            store.add_model({"name": "alpaca-small", "run_id": COMPLETED, "base_model": BASE_MODEL,
                             "metrics": {"final_loss": loss, "eval_loss": loss + 0.15, "step": 300},
                             "adapter_path": str(home.runs / COMPLETED / "adapter"), "parent": parent})
        store.db.execute("UPDATE models SET created = ?", [iso(at(12))])
        store.control_event("priority", QUEUED_HIGH, "control/priority", "applied",
                            f"priority {QUEUED_HIGH}: 0 -> 5")
        store.db.execute("UPDATE control_events SET time = ?", [iso(at(85))])
    finally:
        store.close()
    return FixtureHome(root=home.root, home=home)


def write_big_log(path: Path, lines: int) -> None:
    """A console.log of `lines` timestamped lines (written in blocks: fast even for a million lines)."""
    with open(path, "w") as f:
        block = []
        for i in range(1, lines + 1):
            block.append(f"[2026-05-14 02:00:00.000] step {i} loss {loss_at(i % 500):.4f}\n")
            if len(block) == 10000:
                f.write("".join(block))
                block = []
        f.write("".join(block))


class FixedTelemetry:
    """A telemetry source returning one fixed sample (tests must not depend on this machine's numbers)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry
        self.samples = 0

    def sample(self) -> Telemetry:
        self.samples += 1
        return self.telemetry

    def close(self) -> None:
        pass


SYSTEM = SystemStat(cpu_percent=37.0, cpu_count=16, load_1m=2.5, ram_used=48 << 30, ram_total=128 << 30,
                    disk_used=400 << 30, disk_total=1000 << 30, disk_path="/data/overnight")
NO_GPU = Telemetry(gpus=(), gpu_error="no NVIDIA GPU (NVML unavailable: NVML Shared Library Not Found)",
                   system=SYSTEM)
ONE_GPU = Telemetry(gpus=(GpuStat(index=0, name="NVIDIA H100 80GB HBM3", util_percent=87.0, mem_used=41 << 30,
                                  mem_total=80 << 30, temperature_c=64.0, power_w=512.0, power_limit_w=700.0),),
                    gpu_error=None, system=SYSTEM)


SWEEP_GROUP = "support-20260514-023000"
# a finished 2×2 sweep (learning_rate × lora_r): three completed, one failed; the best eval loss is lr1e-4-r16's
SWEEP = [("support-lr1e-4-r8-20260514-023000", "completed", 1.3012),
         ("support-lr1e-4-r16-20260514-023000", "completed", 1.2121),
         ("support-lr3e-4-r8-20260514-023000", "failed", None),
         ("support-lr3e-4-r16-20260514-023000", "completed", 1.2544)]
SWEEP_BEST = SWEEP[1][0]


def add_sweep(fx: FixtureHome) -> None:
    """A finished sweep of four runs in one group (seq 7-10: the newest history)."""
    store = Store(fx.home.db)
    try:
        for i, (run_id, state, eval_loss) in enumerate(SWEEP):
            start = at(95 + 5 * i)
            _insert(store, fx.home, run_id, 7 + i, state, at(90), group_id=SWEEP_GROUP, step=60, max_steps=60,
                    loss=None if eval_loss is None else eval_loss - 0.1, eval_loss=eval_loss, tokens_per_s=2300.0 + i,
                    started=iso(start), finished=iso(start + dt.timedelta(minutes=4)),
                    reason="loss became nan at step 31" if state == "failed" else None)
            store.db.execute("UPDATE runs SET name = 'support' WHERE id = ?", [run_id])
            write_run_folder(fx.home, run_id, 60, 60, state, start, footer=f"run ended: {state}")
        store.db.execute("UPDATE runs SET updated = ?", [iso(at(120))])
    finally:
        store.close()


SECOND = "summaries-20260514-021000"  # a second training run, on GPU 1, above TRAINING (GPU 0) in priority


def add_second_trainer(fx: FixtureHome) -> None:
    """Two runs training at once, each on its GPU (gpus_per_run = 1): TRAINING (priority 0, PID 4242) on GPU 0
    and SECOND (priority 1000, PID 5353) on GPU 1."""
    store = Store(fx.home.db)
    try:
        _insert(store, fx.home, SECOND, 7, "training", at(70), priority=1000, step=30, max_steps=200, epoch=0.3,
                loss=loss_at(30), tokens_per_s=2280.0, eta_s=1200.0, started=iso(at(71)), pid=5353)
        write_run_folder(fx.home, SECOND, 30, 200, "training", at(71))
        store.set_gpu_set(TRAINING, [0])
        store.set_gpu_set(SECOND, [1])
    finally:
        store.close()


# the box of add_second_trainer: two H100s, TRAINING's trainer on GPU 0, SECOND's on GPU 1 beside someone else's job
TWO_GPUS = Telemetry(
    gpus=tuple(GpuStat(index=i, name="NVIDIA H100 80GB HBM3", util_percent=util, mem_used=used << 30,
                       mem_total=80 << 30, temperature_c=60.0 + i, power_w=500.0 + i, power_limit_w=700.0,
                       processes=procs)
               for i, util, used, procs in ((0, 90.0, 30, (GpuProcess(4242, 20 << 30),)),
                                            (1, 84.0, 31, (GpuProcess(5353, 21 << 30), GpuProcess(7777, None))))),
    gpu_error=None, system=SYSTEM,
    procs=(ProcInfo(4242, 1, "python"), ProcInfo(5353, 1, "python"), ProcInfo(7777, 7700, "python3"),
           ProcInfo(7700, 1, "bash")))


def newest_command(control: Path, kind: str) -> Path | None:
    """The newest control/KIND.ID the dashboard (or the CLI) wrote, None when there is none."""
    files = sorted(control.glob(f"{kind}.*"), key=lambda p: p.stat().st_mtime_ns)
    return files[-1] if files else None


def written(control: Path, kind: str) -> str | None:
    """The text of the newest control/KIND.ID."""
    path = newest_command(control, kind)
    return path.read_text() if path else None


def acknowledge(home: Home, kind: str, target: str | None, message: str) -> None:
    """What the daemon records when it applies the newest control/KIND.ID: an answer carrying its id."""
    store = Store(home.db)
    store.control_event(kind, target, f"control/{kind}", "applied", message,
                        command_id=newest_command(home.control, kind).name.split(".", 1)[1])
    store.close()
