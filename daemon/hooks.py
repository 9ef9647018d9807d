"""Owner hooks ([hooks] in overnight.toml): argument lists run without a shell when a run ends."""
from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Any

from daemon.log import log
from daemon.timefmt import log_line


def run_hooks(event: str, hooks: dict[str, list[str]], run: dict[str, Any]) -> threading.Thread | None:
    """Start the hook for `event` in a thread (an rsync must not stall the daemon); output to hooks.log."""
    argv = hooks.get(event)
    if not argv:
        return None
    run_dir = Path(run["run_dir"])
    env = {**os.environ, "OVERNIGHT_RUN_ID": run["id"], "OVERNIGHT_RUN_DIR": str(run_dir),
           "OVERNIGHT_ADAPTER": str(run_dir / "adapter"), "OVERNIGHT_STATE": run["state"],
           "OVERNIGHT_MODEL_NAME": run["name"]}

    def _run() -> None:
        with open(run_dir / "hooks.log", "a", encoding="utf-8") as out:
            out.write(log_line(f"{event}: {argv}"))
            out.flush()
            try:
                rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=run_dir,
                                    timeout=6 * 3600).returncode
            except (OSError, subprocess.TimeoutExpired) as e:
                rc = f"error: {e}"
            out.write(log_line(f"{event} exit: {rc}"))
        log.info(f"hook {event} for {run['id']} finished: {rc} (see {run_dir / 'hooks.log'})")

    t = threading.Thread(target=_run, name=f"hook-{run['id']}", daemon=False)
    t.start()
    return t
