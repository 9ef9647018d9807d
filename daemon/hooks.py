"""Owner hooks ([hooks] in overnight.toml): argument lists run without a shell, each on its own thread.

`on_complete` / `on_fail` run when a run ends, in the run folder, output in the run's `hooks.log`.
`on_reject` runs when a drop is rejected, in the home, output in the home's `hooks.log` (a rejected file has no
run folder).
"""
from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from daemon.log import log
from daemon.rundir import RunFolder
from daemon.timefmt import log_line

HOOK_TIMEOUT_S = 6 * 3600


def run_hooks(event: str, hooks: dict[str, list[str]], run: dict[str, Any]) -> threading.Thread | None:
    """Start the hook for a run's end (`on_complete` / `on_fail`) in a thread; output to the run's hooks.log."""
    argv = hooks.get(event)
    if not argv:
        return None
    folder = RunFolder(run["run_dir"])
    env = {"OVERNIGHT_RUN_ID": run["id"], "OVERNIGHT_RUN_DIR": str(folder.root),
           "OVERNIGHT_ADAPTER": str(folder.adapter), "OVERNIGHT_STATE": run["state"],
           "OVERNIGHT_MODEL_NAME": run["name"]}
    return _start(event, argv, env, cwd=folder.root, log_path=folder.hooks_log, subject=run["id"])


def run_reject_hook(hooks: dict[str, list[str]], file: Path, error: str, error_file: Path,
                    home: Path) -> threading.Thread | None:
    """Start `on_reject` for a rejected drop: OVERNIGHT_FILE (its path now, in inbox/rejected/), OVERNIGHT_ERROR
    (the error text), OVERNIGHT_ERROR_FILE (NAME.error.txt); runs in the home, output to the home's hooks.log."""
    argv = hooks.get("on_reject")
    if not argv:
        return None
    env = {"OVERNIGHT_FILE": str(file), "OVERNIGHT_ERROR": error, "OVERNIGHT_ERROR_FILE": str(error_file),
           "OVERNIGHT_HOME": str(home)}
    return _start("on_reject", argv, env, cwd=home, log_path=home / "hooks.log", subject=file.name)


def _start(event: str, argv: list[str], extra_env: dict[str, str], cwd: Path, log_path: Path,
           subject: str) -> threading.Thread:
    """Run `argv` on a thread (an rsync must not stall the daemon), appending its output to `log_path`."""
    env = {**os.environ, **extra_env}

    def _run() -> None:
        rc: int | str
        try:
            with open(log_path, "a", encoding="utf-8") as out:
                out.write(log_line(f"{event} ({subject}): {argv}"))
                out.flush()
                try:
                    rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, cwd=cwd, timeout=HOOK_TIMEOUT_S).returncode
                except (OSError, subprocess.TimeoutExpired) as e:
                    rc = f"error: {e}"
                out.write(log_line(f"{event} exit: {rc}"))
        except OSError as e:  # the log itself cannot be written (disk full?): say so in overnight.log
            rc = f"error: {e}"
        log.info(f"hook {event} for {subject} finished: {rc} (see {log_path})")

    t = threading.Thread(target=_run, name=f"hook-{event}-{subject}", daemon=False)
    t.start()
    return t
