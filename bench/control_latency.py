"""Control reaction latency: control file written -> state visible in the DB, p50/p95 over N trials.

    python bench/control_latency.py [--trials 20]

Starts the real daemon on a temporary home with the embedded tiny model, drops a long run, then repeatedly
writes control/pause (until the DB says `paused`) and removes it (until the DB says `training`); then the way the
CLI and the dashboard steer: `control.send` writes control/pause.ID (then resume.ID) and waits for the answer that
carries its id. Target from the issue: p95 <= max(one training step, 1 s). The median step time of the same run is
printed beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.core import control  # noqa: E402
from daemon.core.home import Home  # noqa: E402
from daemon.core.queries import Reader  # noqa: E402
from daemon.client.tinymodel import ensure_tiny_model  # noqa: E402


def wait(pred, timeout: float = 60.0, interval: float = 0.02) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if pred():
            return time.perf_counter() - t0
        time.sleep(interval)
    raise TimeoutError("no reaction")


_readers: dict[Path, Reader] = {}


def state(db: Path) -> str | None:
    """The active run's state, through one persistent read-only connection (as a dashboard holds one)."""
    r = _readers.setdefault(db, Reader(db))
    rows = r.runs(("training", "paused", "preparing"))
    return rows[0]["state"] if rows else None


def answered(home: Path, kind: str) -> float:
    """Seconds from control.send (the CLI's and the dashboard's writer) to the daemon's answer carrying its id."""
    t0 = time.perf_counter()
    ticket = control.send(Home(home), kind)
    if not ticket.wait(Home(home), 60, poll=0.02):
        raise TimeoutError(f"no answer to {ticket.path.name}")
    return time.perf_counter() - t0


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model = ensure_tiny_model(home / "models")
        (home / "overnight.toml").write_text(f'base_model = "{model}"\n')
        (home / "inbox").mkdir()
        rows = [json.dumps({"prompt": f"count {i}:", "completion": str(i + 1)}) for i in range(500)]
        (home / "bench.toml").write_text("max_steps = 100000\nbatch_size = 8\nmax_length = 32\nprobe_count = 0\n"
                                         "log_every = 1\nsave_every = 100000\neval_fraction = 0.0\n")
        (home / "bench.jsonl").write_text("\n".join(rows) + "\n")
        daemon = subprocess.Popen([sys.executable, "-m", "daemon", "daemon", "--home", str(home), "--quiet",
                                   "--settle", "0.2"], cwd=Path(__file__).resolve().parents[1])
        try:
            time.sleep(1)
            os.rename(home / "bench.toml", home / "inbox" / "bench.toml")
            os.rename(home / "bench.jsonl", home / "inbox" / "bench.jsonl")
            db = home / "overnight.db"
            wait(lambda: db.exists() and state(db) == "training", 120)
            time.sleep(2)
            pause, resume = [], []
            for _ in range(args.trials):
                (home / "control" / "pause").touch()
                pause.append(wait(lambda: state(db) == "paused"))
                (home / "control" / "pause").unlink()
                resume.append(wait(lambda: state(db) == "training"))
                time.sleep(0.5)
            sent_pause, sent_resume = [], []
            for _ in range(args.trials):
                sent_pause.append(answered(home, "pause"))
                wait(lambda: state(db) == "paused")
                sent_resume.append(answered(home, "resume"))
                wait(lambda: state(db) == "training")
                time.sleep(0.5)
            run_dir = next(p for p in (home / "runs").iterdir() if not p.name.startswith("."))
            times = [json.loads(x)["time"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(120)
    from datetime import datetime
    ts = [datetime.fromisoformat(t).timestamp() for t in times]
    step = statistics.median(b - a for a, b in zip(ts, ts[1:]) if b - a < 1.0)
    target = max(step, 1.0)
    for name, xs in (("pause", pause), ("resume", resume), ("pause.ID", sent_pause), ("resume.ID", sent_resume)):
        p50, p95 = quantile(xs, 0.5), quantile(xs, 0.95)
        print(f"{name:9s} latency over {len(xs)} trials: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms "
              f"(target p95 <= {target * 1000:.0f} ms: {'met' if p95 <= target else 'MISSED'})")
    print(f"median training step: {step * 1000:.0f} ms")


if __name__ == "__main__":
    main()
