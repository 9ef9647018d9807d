"""`overnight serve` under load: 300 runs in the DB, N concurrent clients polling `GET /api/runs` while a run trains.
Prints the p50/p95/max latency and the run's median step time in the phases without, with, and again without the
clients (the same run, so the ratio is against its own baseline). Loopback only, bounded (--seconds per phase).

    python bench/api_load.py [--clients 50] [--interval 1.0] [--seconds 20] [--runs 300]

The issue's target: p95 <= 50 ms, the step time unchanged within noise. `--interval 0` polls back to back (the
worst case, on a CPU-trained run: the server and the trainer share the cores).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.client.tinymodel import ensure_tiny_model  # noqa: E402
from daemon.core.home import Home  # noqa: E402
from daemon.core.queries import Reader  # noqa: E402
from daemon.engine.store import Store  # noqa: E402


def history(h: Home, n: int) -> None:
    """`n` finished runs in the DB, written (before the daemon starts) by the daemon's own store."""
    store = Store(h.db)
    for i in range(n):
        store.insert_run({"id": f"old-{i:04d}-20260101-000000", "name": f"old-{i:04d}", "dataset": f"old-{i}.jsonl",
                          "format": "jsonl", "schema": "text", "records": 100, "base_model": "tiny",
                          "state": "completed", "priority": 0, "seq": i + 1, "run_dir": str(h.runs / f"old-{i:04d}"),
                          "max_steps": 100, "step": 100, "loss": 1.0 + i / 1000})
    store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


async def load(url: str, clients: int, interval: float, seconds: float, runs: int) -> list[float]:
    """`clients` pollers of GET /api/runs for `seconds`; each request's latency in seconds."""
    latencies: list[float] = []
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
        async def poller() -> None:
            await asyncio.sleep(random.uniform(0, interval))  # each page polls at its own phase
            while time.monotonic() < end:
                t0 = time.perf_counter()
                r = await http.get("/api/runs")
                latencies.append(time.perf_counter() - t0)
                assert r.status_code == 200 and len(r.content) > 1000 * runs // 10  # not parsed: the client's CPU
                await asyncio.sleep(interval)
        await asyncio.gather(*(poller() for _ in range(clients)))
    return latencies


def step_times(run_dir: Path, start: float, end: float) -> list[float]:
    """Seconds between consecutive logged steps whose time falls in [start, end) (wall clock)."""
    ts = [datetime.fromisoformat(json.loads(x)["time"]).timestamp()
          for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    return [b - a for a, b in zip(ts, ts[1:]) if start <= a and b < end]


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds each client waits between its requests")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        h = Home(Path(tmp) / "home")
        h.create()
        model = ensure_tiny_model(Path(tmp) / "models")
        (h.root / "overnight.toml").write_text(f'base_model = "{model}"\n')
        history(h, args.runs - 1)
        port = free_port()
        # one thread for the CPU trainer (as the test suite runs it): the server and the clients get the other cores
        procs = [subprocess.Popen([sys.executable, "-m", "daemon", "daemon", "--home", str(h.root), "--quiet",
                                   "--settle", "0.2"], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}),
                 subprocess.Popen([sys.executable, "-m", "daemon", "serve", "--home", str(h.root), "--port", str(port)],
                                  cwd=REPO, stdout=subprocess.DEVNULL)]
        url = f"http://127.0.0.1:{port}"
        try:
            rows = [json.dumps({"prompt": f"count {i}:", "completion": str(i + 1)}) for i in range(500)]
            (h.root / "bench.toml").write_text("max_steps = 100000\nbatch_size = 8\nmax_length = 32\nprobe_count = 0\n"
                                               "log_every = 1\nsave_every = 100000\neval_fraction = 0.0\n")
            (h.root / "bench.jsonl").write_text("\n".join(rows) + "\n")
            os.rename(h.root / "bench.toml", h.inbox / "bench.toml")
            os.rename(h.root / "bench.jsonl", h.inbox / "bench.jsonl")

            def training() -> bool:
                rd = Reader(h.db)
                try:
                    return any(r["state"] == "training" and (r["step"] or 0) > 5 for r in rd.runs(("training",)))
                finally:
                    rd.close()
            wait(training, 300, "the run to train")
            wait(lambda: httpx.get(f"{url}/api/status").status_code == 200, 60, "the server")
            assert len(httpx.get(f"{url}/api/runs").json()) == args.runs
            run_dir = next(p for p in h.runs.iterdir() if p.name.startswith("bench-"))
            t0 = time.time()
            time.sleep(args.seconds)
            t1 = time.time()
            server, own = psutil.Process(procs[1].pid), time.process_time()
            cpu0 = sum(server.cpu_times()[:2])
            latencies = asyncio.run(load(url, args.clients, args.interval, args.seconds, args.runs))
            server_cpu, clients_cpu = sum(server.cpu_times()[:2]) - cpu0, time.process_time() - own
            t2 = time.time()
            time.sleep(args.seconds)
            t3 = time.time()
            quiet = step_times(run_dir, t0, t1) + step_times(run_dir, t2, t3)
            loaded = step_times(run_dir, t1, t2)
        finally:
            for p in reversed(procs):
                p.send_signal(signal.SIGTERM)
                p.wait(180)
    print(f"{args.runs} runs in the DB, {args.clients} clients polling GET /api/runs every {args.interval:g} s for "
          f"{args.seconds:g} s: {len(latencies)} requests, latency p50 {quantile(latencies, 0.5) * 1000:.1f} ms, "
          f"p95 {quantile(latencies, 0.95) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms "
          f"(target p95 <= 50 ms: {'met' if quantile(latencies, 0.95) <= 0.05 else 'MISSED'})")
    print(f"CPU during the load: the server {server_cpu:.2f} s ({server_cpu / len(latencies) * 1000:.2f} ms a request, "
          f"{server_cpu / args.seconds:.0%} of a core), the clients (this process) {clients_cpu:.2f} s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    q, w = statistics.median(quiet), statistics.median(loaded)
    print(f"the training run's median step: {q * 1000:.1f} ms without the clients ({len(quiet)} steps), "
          f"{w * 1000:.1f} ms with them ({len(loaded)} steps): {w / q:.3f}x")


if __name__ == "__main__":
    main()
