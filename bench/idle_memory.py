"""The idle daemon's memory: start `overnight daemon` on a fresh home, wait, read its RSS, stop it.

    python bench/idle_memory.py              # 3 repeats, 5 s each
    python bench/idle_memory.py --wait 10 --repeats 5
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pyarrow", "pandas", "numpy", "datasets", "torch", "transformers")


def idle_rss(wait: float) -> float:
    """MB resident in one daemon process after `wait` seconds on an empty home."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "daemon", "--home", str(Path(tmp) / "home")],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(wait)
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited early with {proc.returncode}")
            return psutil.Process(proc.pid).memory_info().rss / 1e6
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def heavy_imports() -> list[str]:
    """The heavy libraries `import daemon.client.cli` pulls in (what the daemon holds before any dataset arrives)."""
    code = f"import sys, daemon.client.cli; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wait", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rss = [idle_rss(args.wait) for _ in range(args.repeats)]
    print(f"idle daemon RSS after {args.wait:g} s: " + ", ".join(f"{r:.1f}" for r in rss) + " MB"
          f" (min {min(rss):.1f}, max {max(rss):.1f})")
    print(f"heavy modules imported at start: {' '.join(heavy_imports()) or 'none'}")


if __name__ == "__main__":
    main()
