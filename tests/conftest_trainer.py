"""Helpers for the trainer tests: the embedded tiny model, run folders laid out as the daemon lays them out,
and driving `python -m daemon.trainer RUN_DIR` the way daemon/engine/runner.py does (stdin pipe, console.log).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from daemon.core.fsutil import sha256_file
from daemon.client.tinymodel import ensure_tiny_model

WORDS = ("apple banana cherry dog cat bird fish tree river sea moon sun red blue green small big old new "
         "happy sad fast slow").split()


def tiny_model(base_temp: Path, arch: str = "qwen2") -> Path:
    """The tiny model, built once per test session (ensure_tiny_model reuses a finished build)."""
    return ensure_tiny_model(base_temp / "models", arch=arch)


def reversal_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """prompt/completion records: reverse four words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = rng.sample(WORDS, 4)
        out.append({"prompt": "reverse: " + " ".join(w) + "\n", "completion": " ".join(reversed(w))})
    return out


def chat_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """messages records: a system turn, a question, and the assistant's answer."""
    return [{"messages": [{"role": "system", "content": "You reverse words."},
                          {"role": "user", "content": r["prompt"].strip()},
                          {"role": "assistant", "content": r["completion"]}]}
            for r in reversal_records(n, seed)]


def text_lines(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))) + "." for _ in range(n)]


def make_run(root: Path, model: Path | str, *, dataset_name: str, content: str, schema: str, records: int,
             fmt: str = "jsonl", options: dict[str, Any] | None = None, probes: str | None = None) -> Path:
    """A run folder as the daemon's intake leaves it: dataset/, config.json, stats.json."""
    run = root / "runs" / f"test-{dataset_name.split('.')[0]}"
    (run / "dataset").mkdir(parents=True)
    (run / "dataset" / dataset_name).write_text(content, encoding="utf-8")
    opts = {"base_model": str(model), "max_steps": 6, "batch_size": 4, "learning_rate": 3e-3, "max_length": 64,
            "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "log_every": 1, "save_every": 3, "seed": 7,
            "eval_fraction": 0.1, "probe_count": 0, "keep_checkpoints": 2, **(options or {})}
    probes_rel = None
    if probes is not None:
        probes_rel = f"dataset/{dataset_name.split('.')[0]}.probes.jsonl"
        (run / probes_rel).write_text(probes, encoding="utf-8")
    config = {"run_id": run.name, "options": opts, "sources": {k: "sidecar" for k in opts},
              "dataset": {"path": f"dataset/{dataset_name}", "format": fmt, "schema": schema,
                          "sha256": sha256_file(run / "dataset" / dataset_name)},
              "probes": probes_rel}
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (run / "stats.json").write_text(json.dumps({"records": records, "schema": schema, "format": fmt}),
                                    encoding="utf-8")
    return run


def jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def start(run: Path) -> subprocess.Popen:
    """Start the trainer like the daemon does: commands on stdin, stdout+stderr appended to console.log.

    One torch thread: the tiny model gains nothing from more, and on a busy 2-core machine competing OpenMP
    threads make steps many times slower.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(run / "console.log", "ab") as console:
        return subprocess.Popen([sys.executable, "-m", "daemon.trainer", str(run)], stdin=subprocess.PIPE,
                                stdout=console, stderr=subprocess.STDOUT, cwd=run, env=env)


def send(proc: subprocess.Popen, command: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(f"{command}\n".encode())
    proc.stdin.flush()


def finish(proc: subprocess.Popen, timeout: float = 180) -> int:
    """Wait for the trainer to exit on its own, then close its stdin (closing it earlier would mean stop)."""
    rc = proc.wait(timeout)
    if proc.stdin:
        proc.stdin.close()
    return rc


def train(run: Path, timeout: float = 180) -> int:
    """Run the trainer to its end with stdin held open (EOF would mean stop)."""
    return finish(start(run), timeout)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"trainer exited (code {proc.returncode}) before: {what}")
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for: {what}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def metrics(run: Path) -> list[dict[str, Any]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(run) if "loss" in m}
