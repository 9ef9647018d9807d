"""What evolution snapshots cost: the demo task on the tiny model, trained with and without them.

    python bench/evolution_cost.py [--repeats 2] [--max-steps 300] [--probe-every 0]

Runs the real trainer (`python -m daemon.trainer`) on run folders laid out as the daemon's intake does, in
interleaved pairs (without, with, without, with, …: the host's noise is ±15-20% run to run). "With" uses the
demo's probe file at the default interval (`probe_every = 0`: automatic); "without" has no probe file and
`probe_count = 0`, so no probes at all. Prints the training time of each run (result.json's train_seconds: the
Trainer's own loop, startup excluded), the overhead of the medians, and the time the snapshots themselves took
as logged by the callback (the precise figure; the difference of medians carries the host's noise).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.client.demodata import write_demo_files  # noqa: E402
from daemon.core.evolution import analyze, load_records  # noqa: E402
from daemon.core.options import resolve  # noqa: E402
from daemon.client.tinymodel import ensure_tiny_model  # noqa: E402

SNAPSHOT_LINE = re.compile(r"evolution @ step (\d+):.*, ([0-9.]+) s$")


def make_run(root: Path, model: Path, with_probes: bool, overrides: dict) -> Path:
    """A run folder for the demo task: config.json, stats.json and dataset/ as intake writes them."""
    run = root
    dataset, probes, sidecar = write_demo_files(run / "dataset")
    side = {**tomllib.loads(sidecar.read_text(encoding="utf-8")), **overrides}
    if not with_probes:
        probes.unlink()
        side["probe_count"] = 0
    options = resolve({"base_model": str(model)}, side)
    config = {"run_id": run.name, **options.to_config(),
              "dataset": {"path": f"dataset/{dataset.name}", "format": "jsonl", "schema": "prompt_completion"},
              "probes": f"dataset/{probes.name}" if with_probes else None}
    (run / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (run / "stats.json").write_text(json.dumps({"records": len(dataset.read_text().splitlines())}))
    return run


def train(run: Path) -> dict:
    """Run the trainer on `run`; its train_seconds, snapshot seconds and what the probes showed."""
    log = run / "console.log"
    with open(log, "w", encoding="utf-8") as out:
        rc = subprocess.run([sys.executable, "-m", "daemon.trainer", str(run), "--ignore-stdin"], cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT).returncode
    result = json.loads((run / "result.json").read_text(encoding="utf-8"))
    if rc != 0 or result["outcome"] != "completed":
        raise SystemExit(f"trainer failed on {run} (exit {rc}): {result.get('reason')}\n{log.read_text()[-2000:]}")
    snaps = [float(m.group(2)) for line in log.read_text(encoding="utf-8").splitlines()
             if (m := SNAPSHOT_LINE.search(line))]
    report = analyze(load_records(run / "evolution.jsonl"))
    return {"train_s": result["train_seconds"], "snap_s": sum(snaps), "snapshots": len(snaps), "each": snaps,
            "summary": report.summary if report.probes else "-"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs (default 2)")
    parser.add_argument("--max-steps", type=int, default=None, help="override the demo's max_steps")
    parser.add_argument("--probe-every", type=int, default=0, help="snapshot interval (default 0: automatic)")
    args = parser.parse_args()
    overrides = {"probe_every": args.probe_every, "save_every": 10**6}  # checkpoints are not what we measure
    if args.max_steps:
        overrides["max_steps"] = args.max_steps
    with tempfile.TemporaryDirectory(prefix="overnight-evolution-cost-") as tmp:
        model = ensure_tiny_model(Path(tmp) / "models")
        rows: dict[str, list[dict]] = {"without": [], "with": []}
        for i in range(args.repeats):
            for kind in ("without", "with"):
                run = make_run(Path(tmp) / "runs" / f"{kind}-{i}", model, kind == "with", overrides)
                row = train(run)
                rows[kind].append(row)
                each = " + ".join(f"{x:.2f}" for x in row["each"])
                print(f"{kind:>7} #{i + 1}: train {row['train_s']:6.1f} s, {row['snapshots']:2d} snapshots "
                      f"{row['snap_s']:5.2f} s{f' ({each})' if each else ''}  probes: {row['summary']}", flush=True)
    base = statistics.median(r["train_s"] for r in rows["without"])
    watched = statistics.median(r["train_s"] for r in rows["with"])
    share = statistics.median(r["snap_s"] / r["train_s"] for r in rows["with"])
    print(f"median training time: without {base:.1f} s, with {watched:.1f} s "
          f"-> overhead {100 * (watched - base) / base:+.1f}% (difference of medians, host noise included)")
    print(f"snapshot time as logged: {100 * share:.1f}% of the training time (median over {args.repeats} runs; "
          f"the SPEC's budget is 5%)")


if __name__ == "__main__":
    main()
