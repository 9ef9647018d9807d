"""The dashboard's speed figures that the tests only bound by an order of magnitude (tests/test_tui.py,
tests/test_tui_tmux.py): tailing and searching a million-line console.log, the loss chart of 100k metric records
(read, then cached), the headless app showing that log's tail, and the idle CPU of `python -m tui` in an 80×24
terminal (a pseudo-terminal: no tmux needed).

    python bench/tui_speed.py [--repeats 5] [--idle-seconds 10] [--skip-idle]
"""
from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import pty
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.tui_fixtures import TRAINING, build_home, metrics_records, write_big_log  # noqa: E402
from tui.homedata import LOG_LINES, LogTail, MetricsTail, grep_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def show(what: str, times: list[float], unit: str = "ms") -> None:
    scale = 1000 if unit == "ms" else 1
    print(f"{what:<52} best {min(times) * scale:9.2f} {unit}   median {statistics.median(times) * scale:9.2f} {unit}")


def data_layer(tmp: Path, repeats: int) -> None:
    log = tmp / "console.log"
    write_big_log(log, 1_000_000)
    show("tail a 1M-line console.log (LogTail.poll)", timed(lambda: LogTail(log).poll(), repeats))
    show("search it (grep_file, 1M lines)", timed(lambda: grep_file(log, "STEP 99999 ", limit=50), repeats))
    metrics = tmp / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in metrics_records(100_000, 100_000, eval_every=1000)))
    fresh, cached = [], []
    for _ in range(repeats):
        tail = MetricsTail(metrics)
        fresh += timed(lambda: tail.chart(buckets=160), 1)
        cached += timed(lambda: tail.chart(buckets=160), 1)
    show("chart of 100k metric records, first read", fresh)
    show("the same chart again, nothing new (cached)", cached)
    print(f"{'cached / first read':<52} {statistics.median(fresh) / statistics.median(cached):,.0f}x faster")


def app_open(tmp: Path, repeats: int) -> None:
    from tests.tui_fixtures import NO_GPU, FixedTelemetry
    from tui.app import OvernightApp

    big = tmp / "big.log"
    write_big_log(big, 1_000_000)
    times = []
    for i in range(repeats):
        fx = build_home(tmp / f"home{i}")
        console = fx.home.runs / TRAINING / "console.log"
        console.unlink()
        os.symlink(big, console)

        async def main() -> float:
            app = OvernightApp(fx.root, telemetry=FixedTelemetry(NO_GPU), refresh_s=0.25)
            t0 = time.perf_counter()
            async with app.run_test(size=(80, 24)) as pilot:
                from textual.widgets import Log
                while True:
                    try:
                        if app.query_one("#log-view", Log).line_count == LOG_LINES:
                            return time.perf_counter() - t0
                    except Exception:  # noqa: BLE001 - not mounted yet
                        pass
                    await pilot.pause(0.02)

        times.append(asyncio.run(main()))
    show("headless dashboard: start to the 1M-line log's tail", times, "s")


def idle_cpu(tmp: Path, settle: float, seconds: float) -> None:
    import psutil

    fx = build_home(tmp / "idle-home")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "tui", "--home", str(fx.root)], cwd=REPO, stdin=slave,
                            stdout=slave, stderr=slave, env={**os.environ, "TERM": "xterm-256color"},
                            start_new_session=True)
    os.close(slave)
    drained = threading.Thread(target=_drain, args=(master,), daemon=True)  # a full pty would block the app
    drained.start()
    try:
        time.sleep(settle)
        p = psutil.Process(proc.pid)
        before, t0 = p.cpu_times(), time.monotonic()
        time.sleep(seconds)
        after, elapsed = p.cpu_times(), time.monotonic() - t0
        used = (after.user + after.system) - (before.user + before.system)
        print(f"{'idle dashboard (python -m tui, 80x24 pty)':<52} {100 * used / elapsed:5.2f}% of a core over "
              f"{elapsed:.0f} s; RSS {p.memory_info().rss / 2**20:.0f} MB")
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(master)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--idle-settle", type=float, default=5.0, help="seconds after start before measuring idle CPU")
    p.add_argument("--idle-seconds", type=float, default=10.0)
    p.add_argument("--skip-idle", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tui-speed-") as d:
        tmp = Path(d)
        data_layer(tmp, args.repeats)
        app_open(tmp, max(1, args.repeats // 2))
        if not args.skip_idle:
            idle_cpu(tmp, args.idle_settle, args.idle_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
