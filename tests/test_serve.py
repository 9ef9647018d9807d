"""`overnight serve` against a real daemon: a dataset uploaded over HTTP trains on the tiny model, and what the API
answers (log, metrics, evolution, runs, models) equals the run's files and the CLI's --json; a bad upload gets the
daemon's error text and lands in inbox/rejected/ byte-identical; a command through the API is acknowledged as the
CLI's is. A real server (`overnight serve`, a subprocess on 127.0.0.1) and a real HTTP client (httpx)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from daemon.core.queries import Reader
from tests.conftest import REPO, budget, overnight, wait_until

pytestmark = pytest.mark.e2e

# long enough (as conftest's REFERENCE_STEPS) that a pause sent at its first steps lands before it ends
FAST = "max_steps = 60\nbatch_size = 2\nmax_length = 48\nlog_every = 1\nsave_every = 20\nprobe_every = 20\n" \
       "probe_max_new_tokens = 4\neval_fraction = 0.1\nname = \"adder\"\n"
DATASET = "\n".join(json.dumps({"prompt": f"add {i} 1:", "completion": str(i + 1)}) for i in range(20)) + "\n"
PROBES = "\n".join(json.dumps({"prompt": f"add {i} 1:", "reference": str(i + 1)}) for i in (40, 41, 42)) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`overnight serve --home H --port P [args]` in the background, up once it answers."""

    def __init__(self, home: Path, *args: str, token: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "daemon", "serve", "--home", str(home), "--port",
                                      str(self.port), *args], cwd=REPO, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        headers = {"Authorization": f"Bearer {token}"} if token else {}

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"overnight serve exited {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                return httpx.get(f"{self.url}/api/openapi.json", headers=headers, timeout=2).status_code < 500
            except httpx.TransportError:
                return False
        wait_until(up, budget(60), 0.2, "overnight serve to answer")

    def client(self, token: str | None = None, timeout: float = 120) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def serve_proc(home: Path):
    procs: list[ServeProcess] = []

    def start(*args: str, token: str | None = None) -> ServeProcess:
        p = ServeProcess(home, *args, token=token)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


def _events(stream: httpx.Response) -> tuple[list[str], str | None]:
    """The data lines of a server-sent event stream, up to its `end` event (and that event's data)."""
    lines: list[str] = []
    event = None
    for raw in stream.iter_lines():
        if raw.startswith("event: "):
            event = raw[7:]
        elif raw.startswith("data: "):
            if event == "end":
                return lines, raw[6:]
            lines.append(raw[6:])
        elif raw == "":
            event = None
    return lines, None


def test_an_upload_trains_and_the_api_reads_back_the_files_and_the_cli(home, tiny_model, daemon_proc, serve_proc):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    daemon_proc()
    api = serve_proc().client()

    answer = api.post("/api/datasets", params={"wait": budget(60)},
                      files={"dataset": ("adder.jsonl", DATASET), "sidecar": ("whatever.toml", FAST),
                             "probes": ("mine.jsonl", PROBES)})
    assert answer.status_code == 201, answer.text
    queued = answer.json()
    assert queued["state"] == "queued" and len(queued["runs"]) == 1
    run_id = queued["runs"][0]["id"]
    run_dir = Path(queued["runs"][0]["run_dir"])
    assert (run_dir / "dataset" / "adder.jsonl").read_text() == DATASET
    assert (run_dir / "dataset" / "adder.toml").read_text() == FAST  # the sidecar took the dataset's name
    assert (run_dir / "dataset" / "adder.probes.jsonl").read_text() == PROBES  # and so did the probes
    assert not [p for p in (home / "inbox").iterdir() if p.name != "rejected"]  # no upload folder left behind

    # steered while it trains: a pause through the API, acknowledged with the daemon's answers to that command (what
    # the CLI prints), then a resume by the CLI
    wait_until(lambda: api.get(f"/api/runs/{run_id}").json()["state"] == "training", budget(120), 0.1, "training")
    paused = api.post(f"/api/runs/{run_id}/pause", params={"wait": budget(30)})
    assert paused.status_code == 200, paused.text
    answers = paused.json()["answers"]
    assert [e["status"] for e in answers] == ["applied"] and all(e["target"] == run_id for e in answers)
    assert answers == Reader(home / "overnight.db").control_events_of(paused.json()["command_id"])
    wait_until(lambda: api.get(f"/api/runs/{run_id}").json()["state"] == "paused", budget(60), 0.1, "paused")
    resumed = overnight("resume", run_id, "--wait", str(budget(30)), home=home, check=True).stdout
    assert "applied: " in resumed

    # the console log followed live from the start, while the run trains, to its end
    with api.stream("GET", f"/api/runs/{run_id}/log/stream", params={"offset": 0}, timeout=budget(300)) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        streamed, end = _events(stream)
    assert end == "ended"
    run = api.get(f"/api/runs/{run_id}").json()
    assert run["state"] == "completed", run

    console = (run_dir / "console.log").read_text()
    assert streamed == console.splitlines()
    page = api.get(f"/api/runs/{run_id}/log", params={"offset": 0}).json()
    assert page["text"] == console and page["next_offset"] == len(console.encode())
    middle = len(console.splitlines(keepends=True)[0].encode())
    assert api.get(f"/api/runs/{run_id}/log", params={"offset": middle}).json()["text"] == \
        console.encode()[middle:].decode()

    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert api.get(f"/api/runs/{run_id}/metrics").json() == metrics and {m["step"] for m in metrics} >= {1, 60}
    evolution = api.get(f"/api/runs/{run_id}/evolution").json()
    assert evolution == json.loads(overnight("evolution", run_id, "--json", home=home, check=True).stdout)
    assert [p["prompt"] for p in evolution["probes"]] == ["add 40 1:", "add 41 1:", "add 42 1:"]
    assert evolution["snapshots"]
    assert api.get("/api/runs").json() == json.loads(overnight("runs", "--json", home=home, check=True).stdout)
    models = api.get("/api/models").json()
    assert models == json.loads(overnight("models", "--json", home=home, check=True).stdout)
    assert [(m["name"], m["version"]) for m in models] == [("adder", 1)]
    status = api.get("/api/status").json()
    assert status["daemon"]["pid"] and status["counts"] == {"completed": 1}
    assert set(status) == set(json.loads(overnight("status", "--json", home=home, check=True).stdout))
    assert api.get("/api/queue").json()["runs"] == []
    assert "system" in api.get("/api/system").json()

    # a command through the API is acknowledged as the CLI's: the same answer for the same command
    by_api = api.post("/api/models/adder/1/activate", params={"wait": budget(30)})
    assert by_api.status_code == 200, by_api.text
    acked = by_api.json()
    assert acked["acknowledged"] and [e["status"] for e in acked["answers"]] == ["applied"]
    cli = overnight("activate", "adder", "1", "--wait", str(budget(30)), home=home, check=True).stdout
    assert [f"{e['status']}: {e['message']}" for e in acked["answers"]] == cli.splitlines()[1:]
    refused = api.post(f"/api/runs/{run_id}/priority", params={"value": "x"})
    assert refused.status_code == 400 and "Fix:" in refused.json()["error"]
    assert api.post("/api/runs/no-such-run/pause").status_code == 404
    log = (home / "serve.log").read_text()
    assert "127.0.0.1:" in log and "upload: adder.toml, adder.probes.jsonl, adder.jsonl" in log and "activate adder 1: applied" in log
    assert "upload:" not in (home / "overnight.log").read_text()  # the daemon's log is the daemon's alone

    # a drop the daemon rejects: its error text in the answer, the file byte-identical in inbox/rejected/
    bad = b'{"colour": "blue"}\n{"colour": "red"}\n'
    answer = api.post("/api/datasets", params={"wait": budget(60)},
                      files={"dataset": ("bad.jsonl", bad), "sidecar": ("bad.toml", "max_steps = 5\n")})
    assert answer.status_code == 422, answer.text
    rejected = answer.json()
    errors = list((home / "inbox" / "rejected").glob("bad*.error.txt"))
    assert len(errors) == 1 and rejected["error"] == errors[0].read_text()
    assert "Fix" in rejected["error"] or "fix" in rejected["error"]
    assert (home / "inbox" / "rejected" / "bad.jsonl").read_bytes() == bad
    assert rejected["rejected"] == [str(home / "inbox" / "rejected" / n) for n in ("bad.jsonl", "bad.toml")]


def test_the_server_loads_no_textual_and_no_torch():
    """The dashboard runs as its own process (textual-serve): the server itself stays light."""
    code = ("import sys, daemon.web.app, daemon.web.server, tui.telemetry; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'textual', 'torch', 'transformers'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


def test_the_server_takes_from_the_dashboard_only_its_telemetry():
    """The web floor may import tui/ (tests/test_layers.py), but only the Textual-free telemetry (psutil, NVML)."""
    from tests.test_layers import _imported_names
    names = {n for f in (REPO / "daemon" / "web").glob("*.py") for n in _imported_names(f) if n.startswith("tui")}
    assert names <= {"tui.telemetry", "tui.telemetry.LiveTelemetry"}, names
