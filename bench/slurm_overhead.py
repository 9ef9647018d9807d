"""What the Slurm executor costs a run against the local executor, on the same machine.

    python bench/slurm_overhead.py                 # 2 rounds of one 60-step run per executor, the tiny model
    python bench/slurm_overhead.py --steps 100 --rounds 3

Needs a running Slurm cluster (tests/slurm/start.sh starts a single-node one, as root). Each round drops the same
run (kill_loop's reverse-three-words drop, the embedded tiny model, the CPU, one thread) into a fresh home served by
the real daemon, once with the local executor and once with `[executor] kind = "slurm"`, alternating, and reads:
- start-up: from the drop's rename into the inbox to the first training step in metrics.jsonl (the intake, the
  submission and the job's start, the trainer's imports and model load);
- launch: the executor's own part of it, from the daemon's "starting trainer" line in console.log to the trainer's
  first line (sbatch, Slurm's scheduling and the job's start; a fork and exec for the local executor);
- per step: the median time between consecutive steps in metrics.jsonl (steps 2..N, so the first step's warm-up
  is left out);
- total: from the drop to the run's completed state.
Prints one line per run and the medians per executor, and the difference (Slurm minus local).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import kill_loop  # noqa: E402


def _seconds(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp).timestamp()


def _stamp(log: str, text: str) -> float:
    """The time of the first console.log line holding `text` (`[YYYY-mm-dd HH:MM:SS.mmm] ...`)."""
    line = next(ln for ln in log.splitlines() if text in ln)
    return dt.datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S.%f").timestamp()


def one_run(root: Path, model: Path, kind: str, steps: int, partition: str) -> dict[str, float]:
    home = kill_loop.Home(root, model)
    if kind == "slurm":
        toml = root / "overnight.toml"
        toml.write_text(toml.read_text() + f'[executor]\nkind = "slurm"\npartition = "{partition}"\n')
    home.start_daemon()
    try:
        files = kill_loop.write_drop(root / ".staging" / "bench", "bench", steps)
        dropped = time.time()
        home.drop(files)
        run = kill_loop.wait_for(lambda: (r := home.run("bench")) and r["state"] in ("completed", "failed") and r,
                                 600, "the run to end", interval=0.1)
        ended = time.time()
    finally:
        home.stop_daemon()
    if run["state"] != "completed":
        raise SystemExit(f"the {kind} run ended {run['state']}: {run['reason']}")
    records = [r for r in kill_loop.jsonl(Path(run["run_dir"]) / "metrics.jsonl") if r.get("loss") is not None]
    times = [_seconds(r["time"]) for r in records]
    log = (Path(run["run_dir"]) / "console.log").read_text(errors="replace")
    launch = _stamp(log, "overnight: starting trainer"), _stamp(log, "=== overnight trainer:")
    return {"startup_s": times[0] - dropped, "launch_s": launch[1] - launch[0],
            "step_s": statistics.median(b - a for a, b in zip(times[1:], times[2:])),
            "total_s": ended - dropped, "job": run.get("job_id") or "-"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--partition", default="debug")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    from daemon.client.tinymodel import ensure_tiny_model
    from daemon.engine.executors import slurmctl

    missing = slurmctl.available()
    if missing:
        raise SystemExit(missing)
    base = Path(tempfile.mkdtemp(prefix="slurm-overhead-"))
    model = ensure_tiny_model(base / "models")
    found: dict[str, list[dict[str, float]]] = {"local": [], "slurm": []}
    try:
        for i in range(args.rounds):
            for kind in ("local", "slurm") if i % 2 == 0 else ("slurm", "local"):
                r = one_run(base / f"{kind}-{i}", model, kind, args.steps, args.partition)
                found[kind].append(r)
                print(f"round {i + 1} {kind:5s}: start-up {r['startup_s']:.2f} s (launch {r['launch_s']:.2f} s), "
                      f"per step {1000 * r['step_s']:.1f} ms, drop to completed {r['total_s']:.2f} s (job {r['job']})",
                      flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    med = {k: {f: statistics.median(r[f] for r in rs) for f in ("startup_s", "launch_s", "step_s", "total_s")}
           for k, rs in found.items()}
    print(f"median of {args.rounds} ({args.steps} steps, tiny model, CPU, one thread):")
    for kind in ("local", "slurm"):
        m = med[kind]
        print(f"  {kind:5s}: start-up {m['startup_s']:.2f} s (launch {m['launch_s']:.2f} s), "
              f"per step {1000 * m['step_s']:.1f} ms, total {m['total_s']:.2f} s")
    d = {f: med["slurm"][f] - med["local"][f] for f in ("startup_s", "launch_s", "step_s", "total_s")}
    print(f"  slurm - local: start-up {d['startup_s']:+.2f} s (launch {d['launch_s']:+.2f} s), "
          f"per step {1000 * d['step_s']:+.1f} ms, total {d['total_s']:+.2f} s")
    if args.json:
        print(json.dumps({"runs": found, "median": med, "difference": d}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
