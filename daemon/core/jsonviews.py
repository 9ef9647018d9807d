"""The JSON documents that `overnight … --json` prints and `overnight serve` answers with: one builder each, so that
the CLI and the HTTP API never disagree on a shape."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon.core import control, morning
from daemon.core.evolution import load_records, run_report
from daemon.core.home import Home, daemon_alive
from daemon.core.queries import Reader
from daemon.core.rundir import RunFolder
from daemon.core.states import LIVE, State


def status(h: Home, rd: Reader, since_h: float) -> dict[str, Any]:
    """`overnight status --json`: the daemon, the live runs, the last commands, what needs the owner."""
    alive = daemon_alive(h)
    problem = morning.problem(h, rd.daemon() if alive else None, alive)
    since = morning.cutoff(since_h)
    return {"home": str(h.root), "daemon": alive, "problem": problem, "counts": rd.counts(), "runs": rd.runs(LIVE),
            "control_events": rd.control_events(5), "since_hours": since_h,
            "failed": [vars(f) for f in morning.failed_runs(rd.runs((State.FAILED,)), since)],
            "rejected": [vars(d) for d in morning.rejected_drops(h, since)],
            "held": morning.held(control.held(h, "stop"), problem), "paused": sorted(control.paused(h)),
            "waiting": morning.waiting_files(h)}


def evolution(run: dict[str, Any]) -> dict[str, Any]:
    """`overnight evolution RUN --json`: what the model answered on each probe over time (run: a DB row)."""
    report = run_report(Path(run["run_dir"]), load_records(RunFolder(run["run_dir"]).evolution))
    return {"run": run["id"], **report.to_dict()}
