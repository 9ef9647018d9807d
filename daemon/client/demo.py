"""`overnight demo`: the whole loop on the embedded tiny model, on a laptop CPU, in a few minutes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from daemon.core.home import Home, daemon_alive
from daemon.core.queries import Reader
from daemon.core.render import fmt_loss
from daemon.core.rundir import RunFolder
from daemon.core.states import ENDED


def prepare(home: Home, say: Callable[[str], None] = print, steps: int | None = None) -> str:
    """Build the tiny model (once, cached in the home) and drop the demo task into the inbox; returns its name.

    `steps`: the run's max_steps instead of the demo's 200."""
    from daemon.client.demodata import write_demo_files
    from daemon.client.tinymodel import ensure_tiny_model
    t0 = time.monotonic()
    model = ensure_tiny_model(home.cache / "models")
    say(f"tiny model ready: {model} ({time.monotonic() - t0:.1f} s)")
    name = f"reverse-{time.strftime('%H%M%S')}"
    with tempfile.TemporaryDirectory(dir=home.root, prefix=".demo-") as tmp:
        options = {"base_model": str(model), **({"max_steps": steps} if steps else {})}
        files = write_demo_files(Path(tmp), name=name, options=options)
        # Companions first, the dataset last: the daemon finds it complete with its sidecar and probes.
        for p in sorted(files, key=lambda p: p.suffix == ".jsonl" and not p.name.endswith(".probes.jsonl")):
            os.rename(p, home.inbox / p.name)
    say(f"dropped {name}.jsonl (+ {name}.toml, {name}.probes.jsonl) into {home.inbox}")
    return name


def start_daemon(home: Home) -> subprocess.Popen | None:
    """Start a daemon for the demo unless one already serves this home."""
    if daemon_alive(home):
        return None
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "daemon", "--home", str(home.root), "--quiet",
                             "--settle", "1"],  # the demo drops by rename: complete at once
                            stdin=subprocess.DEVNULL)
    end = time.monotonic() + 30
    while not daemon_alive(home) and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.1)
    return proc


def follow(home: Home, name: str, say: Callable[[str], None] = print, timeout: float = 3600) -> dict | None:
    """Print progress lines until the demo run ends; returns its final DB row."""
    from daemon.core.evolution import analyze, load_records
    end = time.monotonic() + timeout
    last = ""
    while time.monotonic() < end:
        reader = Reader(home.db)
        run = reader.find_run(name)
        reader.close()
        if run:
            evo = analyze(load_records(RunFolder(run["run_dir"]).evolution)).summary
            line = (f"{run['id']}: {run['state']}  step {run['step'] or 0}/{run['max_steps'] or '?'}  "
                    f"loss {fmt_loss(run['loss'])}  probes: {evo}")
            if line != last:
                say(line)
                last = line
            if run["state"] in ENDED:
                return run
        time.sleep(1)
    return None


def stop_daemon(proc: subprocess.Popen | None) -> None:
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(300)
