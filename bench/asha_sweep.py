"""ASHA against the full grid: a 16-configuration learning-rate × rank sweep on the tiny model, both in one run.

    python bench/asha_sweep.py [--steps 60] [--eta 3] [--rungs 2]

Each sweep goes through the real daemon (`overnight daemon --once` on a fresh home): the grid trains all 16 runs to
the end; the same sidecar with `prune = "asha"` stops each trial at its rungs, goes on with the best 1/eta and prunes
the rest. Prints, for each: wall time of the daemon, the trainers' own training time (every attempt's console footer:
"N/M steps in X s", model loading excluded), trainer starts, and the best eval loss of a completed run; then the
ratios (the goal: ASHA's best within 2% of the grid's, in ≤ 40% of its training time).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.client.tinymodel import ensure_tiny_model  # noqa: E402

LRS = [3e-5, 1e-4, 3e-4, 1e-3]
RANKS = [2, 4, 8, 16]
FOOTER = re.compile(r"=== end: [^;]*; (\d+)/\d+ steps in ([\d.]+) s")  # each attempt's: its last step, its seconds


def dataset() -> str:
    """Additions the tiny model learns to answer within a few dozen steps, at different speeds per learning rate."""
    return "".join(json.dumps({"prompt": f"{a} plus {b} is", "completion": f" {a + b}"}) + "\n"
                   for a in range(20) for b in range(20))


def sweep(root: Path, model: Path, steps: int, asha: str) -> dict:
    home = root / ("asha" if asha else "grid")
    for d in ("inbox", "control", "runs"):
        (home / d).mkdir(parents=True)
    (home / "overnight.toml").write_text(f'base_model = "{model}"\nmax_sweep_runs = 16\n')
    (home / "inbox" / "add.toml").write_text(
        f"learning_rate = {LRS}\nlora_r = {RANKS}\nmax_steps = {steps}\nbatch_size = 8\nmax_length = 64\n"
        f"eval_fraction = 0.1\nlog_every = 5\nsave_every = {steps}\nprobe_count = 0\nseed = 3\n{asha}")
    (home / "inbox" / "add.jsonl").write_text(dataset())
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "daemon", "daemon", "--once", "--settle", "0.1", "--quiet", "--home",
                    str(home)], cwd=REPO, check=True)
    wall = time.perf_counter() - t0
    runs = json.loads(subprocess.run([sys.executable, "-m", "daemon", "runs", "--json", "--home", str(home)],
                                     cwd=REPO, check=True, capture_output=True, text=True).stdout)
    consoles = [(home / "runs" / r["id"] / "console.log").read_text() for r in runs]
    ends = [m for c in consoles for m in FOOTER.findall(c)]
    train = sum(float(seconds) for _, seconds in ends)
    steps = sum(r["step"] or 0 for r in runs)  # each run's last step: the steps trained, resumed ones counted once
    starts = sum(c.count("overnight: starting trainer") for c in consoles)
    done = [r for r in runs if r["state"] == "completed"]
    best = min(done, key=lambda r: r["eval_loss"])
    return {"wall": wall, "train": train, "steps": steps, "starts": starts, "best": best["eval_loss"], "best_id": best["id"],
            "states": {s: sum(r["state"] == s for r in runs) for s in {r["state"] for r in runs}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--rungs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = ensure_tiny_model(root / "models")
        grid = sweep(root, model, args.steps, "")
        asha = sweep(root, model, args.steps, f'prune = "asha"\neta = {args.eta}\nprune_rungs = {args.rungs}\n')
    for name, r in (("grid", grid), ("asha", asha)):
        print(f"{name}: wall {r['wall']:.0f} s, training {r['train']:.0f} s ({r['steps']} steps), "
              f"{r['starts']} trainer starts, "
              f"best eval loss {r['best']:.4f} ({r['best_id']}), runs {r['states']}")
    print(f"ASHA / grid: training time {asha['train'] / grid['train']:.2f}×, steps {asha['steps'] / grid['steps']:.2f}×, "
          f"wall {asha['wall'] / grid['wall']:.2f}×, "
          f"best eval loss {asha['best'] / grid['best']:.4f}× (goal: ≤ 0.40× training time, best within 2%)")


if __name__ == "__main__":
    main()
