"""What the end-of-run eval report costs: the demo task on the tiny model, a parent run then a child continued from it.

    python bench/eval_cost.py [--max-steps 200] [--records 100]

Runs the real trainer (`python -m daemon.trainer`) twice on run folders laid out as the daemon's intake does: the
parent trains the demo task; the child continues from the parent's adapter (`init_adapter`, copied in as intake
copies it) with an eval file of `--records` records beside it. The child's report is the full one: the new version,
its parent (a second adapter) and the base each answer every eval record and the parent's probes, and each gets its
loss on the shipped general-text sample. Prints the report's seconds (eval_report.json's `seconds`, measured by the
trainer around the whole report) against the child's training time (result.json's train_seconds) and against a
20-minute run, the share the issue sets a goal for (at most 5%).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.client.demodata import LIST_LENGTH, WORDS, make_answer, make_prompt, write_demo_files  # noqa: E402
from daemon.client.tinymodel import ensure_tiny_model  # noqa: E402
from daemon.core.options import resolve  # noqa: E402

TWENTY_MINUTES = 20 * 60


def make_run(run: Path, model: Path, overrides: dict, parent: Path | None = None, records: int = 0) -> Path:
    """A run folder for the demo task (config.json, stats.json, dataset/); continued from `parent`'s adapter and
    with an eval file of `records` reversal records when asked."""
    dataset, probes, sidecar = write_demo_files(run / "dataset")
    side = {**tomllib.loads(sidecar.read_text(encoding="utf-8")), **overrides}
    config = {"run_id": run.name, **resolve({"base_model": str(model)}, side).to_config(),
              "dataset": {"path": f"dataset/{dataset.name}", "format": "jsonl", "schema": "prompt_completion"},
              "probes": f"dataset/{probes.name}"}
    if parent is not None:
        shutil.copytree(parent / "adapter", run / "init_adapter")
        config["init_adapter"] = {"parent": parent.name, "source": str(parent / "adapter"), "path": "init_adapter"}
    if records:
        rng = random.Random(7)
        lines = [[rng.choice(WORDS) for _ in range(LIST_LENGTH)] for _ in range(records)]
        (run / "dataset" / "reverse.eval.jsonl").write_text("".join(
            json.dumps({"prompt": make_prompt(w), "reference": make_answer(w).strip()}) + "\n" for w in lines))
        config["eval_file"] = "dataset/reverse.eval.jsonl"
    (run / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (run / "stats.json").write_text(json.dumps({"records": len(dataset.read_text().splitlines())}))
    return run


def train(run: Path) -> tuple[dict, dict]:
    """Run the trainer on `run`; its result.json and eval_report.json."""
    log = run / "console.log"
    with open(log, "w", encoding="utf-8") as out:
        rc = subprocess.run([sys.executable, "-m", "daemon.trainer", str(run), "--ignore-stdin"], cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT).returncode
    result = json.loads((run / "result.json").read_text(encoding="utf-8"))
    if rc != 0 or result["outcome"] != "completed" or not (run / "eval_report.json").exists():
        raise SystemExit(f"trainer failed on {run} (exit {rc}): {result.get('reason')}\n{log.read_text()[-2000:]}")
    return result, json.loads((run / "eval_report.json").read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=200, help="steps of each run (default: the demo's 200)")
    parser.add_argument("--records", type=int, default=100, help="eval records (default 100)")
    args = parser.parse_args()
    overrides = {"max_steps": args.max_steps, "save_every": 10**6}  # checkpoints are not what we measure
    with tempfile.TemporaryDirectory(prefix="overnight-eval-cost-") as tmp:
        root = Path(tmp)
        model = ensure_tiny_model(root / "models")
        parent = make_run(root / "runs" / "parent", model, overrides)
        train(parent)
        child = make_run(root / "runs" / "child", model, overrides, parent=parent, records=args.records)
        result, report = train(child)
    seconds, trained = report["seconds"], result["train_seconds"]
    scores = report["eval"]["scores"]
    print(f"device: {result.get('device_name') or result.get('device')}")
    print(f"child run: {result['step']} steps, {trained:.1f} s of training")
    print(f"eval report: {report['eval']['records']} eval records and {report['probes']['asked']} parent probes "
          f"answered by {', '.join(scores)}; forgetting sample {report['forgetting']['tokens']} tokens, "
          f"{seconds:.2f} s")
    print(f"report / this run's training: {seconds / trained:.1%}")
    print(f"report / a 20-minute run: {seconds / TWENTY_MINUTES:.2%} (goal: at most 5%)")


if __name__ == "__main__":
    main()
