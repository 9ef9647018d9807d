"""`overnight serve` at its edges: a second server on a taken port, a body cut short, a value that would write a second
control line, another drop's rejection, a stop with a log stream open. A real server (a subprocess) and httpx."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from daemon.core.home import Home
from daemon.engine.store import Store
from daemon.web import verdict
from tests.conftest import REPO, budget, overnight, wait_until
from tests.test_serve import ServeProcess, serve_proc  # noqa: F401 - the fixture

pytestmark = pytest.mark.e2e

BOUNDARY = "b0undary"
HEAD = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"dataset\"; filename=\"big.txt\"\r\n"
        f"Content-Type: text/plain\r\n\r\n").encode()
TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


def _inbox(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "inbox").iterdir() if p.name != "rejected")


def test_a_second_server_on_a_taken_port_is_refused_and_the_first_keeps_its_upload(home, serve_proc):  # noqa: F811
    first = serve_proc()
    halfway = threading.Event()
    go_on = threading.Event()

    def body():
        yield HEAD + b"some text\n" * 1000
        halfway.set()
        go_on.wait(60)
        yield b"the rest\n" * 1000 + TAIL

    answers: list[httpx.Response] = []
    upload = threading.Thread(target=lambda: answers.append(first.client().post(
        "/api/datasets", params={"wait": 0}, content=body(), headers=MULTIPART)))
    upload.start()
    try:
        assert halfway.wait(30)
        wait_until(lambda: any(p.name.startswith(".overnight-upload-") for p in (home / "inbox").iterdir()),
                   budget(30), 0.05, "the upload on its way in")
        second = subprocess.run([sys.executable, "-m", "daemon", "serve", "--home", str(home), "--port",
                                 str(first.port)], cwd=REPO, capture_output=True, text=True, timeout=budget(60))
    finally:
        go_on.set()
        upload.join(60)
    assert second.returncode == 1, second.stdout + second.stderr
    assert f"cannot listen on 127.0.0.1:{first.port}" in second.stderr and "--port" in second.stderr
    assert "serving" not in second.stdout  # it never said it served
    assert answers[0].status_code == 202, answers[0].text  # the first server's upload came in whole (no daemon yet)
    assert _inbox(home) == ["big.txt"]
    assert (home / "inbox" / "big.txt").read_bytes() == b"some text\n" * 1000 + b"the rest\n" * 1000


def test_a_body_cut_before_its_closing_boundary_is_not_a_drop(home, serve_proc):  # noqa: F811
    api = serve_proc().client()

    def body():  # chunked: nothing tells the server the body is short but the missing closing boundary
        yield HEAD + b"half a file\n"

    answer = api.post("/api/datasets", params={"wait": 0}, content=body(), headers=MULTIPART)
    assert answer.status_code == 400 and "closing multipart boundary" in answer.json()["error"], answer.text
    assert _inbox(home) == []


def test_a_priority_value_is_one_integer_and_writes_one_line(home, serve_proc):  # noqa: F811
    api = serve_proc().client()
    for value in ("5\nother -7", "²", "high", ""):
        answer = api.post("/api/runs/somerun/priority", params={"value": value, "wait": 0})
        assert answer.status_code == 400 and "?value=N" in answer.json()["error"], (value, answer.text)
    assert [p.name for p in (home / "control").iterdir() if p.is_file()] == []  # nothing written


def test_a_rejected_upload_gets_its_own_error_not_a_drop_named_alike(home):
    """Two drops rejected at once, one's name inside the other's (k1.jsonl, xk1.jsonl): each gets its own text."""
    h = Home.resolve(str(home), create=True)
    h.rejected.mkdir(parents=True, exist_ok=True)
    since = time.time()
    for name, error in (("k1", "k1.jsonl, line 1: 'text' must be a string"),
                        ("xk1", "xk1.jsonl, line 1: the record matches no accepted schema")):
        (h.rejected / f"{name}.jsonl").write_text("{}\n")
        (h.rejected / f"{name}.error.txt").write_text(
            f"{error}\n\nRejected files (moved to {h.rejected}): {name}.jsonl\nAfter fixing, drop it again.\n")
        time.sleep(0.01)  # xk1's error is the newer one
    placed = verdict.Placed([h.inbox / "k1.jsonl"], (h.rejected / "k1.jsonl").stat().st_ino, since)
    found = placed.look(h)
    assert found.state == verdict.REJECTED and found.error.startswith("k1.jsonl, line 1: 'text'"), found
    # a name holding ", " (the .error.txt lists the files moved joined by ", "), with its sidecar
    for f in ("my data, v2.jsonl", "my data, v2.toml"):
        (h.rejected / f).write_text("x\n")
    (h.rejected / "my-data-v2.error.txt").write_text(f"my data, v2.jsonl, line 1: bad\n\nRejected files (moved to "
                                                     f"{h.rejected}): my data, v2.toml, my data, v2.jsonl\n")
    placed = verdict.Placed([h.inbox / "my data, v2.jsonl"], (h.rejected / "my data, v2.jsonl").stat().st_ino, since)
    found = placed.look(h)
    assert found.state == verdict.REJECTED and found.error.startswith("my data, v2.jsonl, line 1"), found
    assert found.rejected == [str(h.rejected / "my data, v2.jsonl"), str(h.rejected / "my data, v2.toml")]


def test_a_stop_ends_open_log_streams_and_the_server(home, tiny_model, daemon_proc, serve_proc):  # noqa: F811
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    overnight("stop", home=home, check=True)  # the queue held: the run stays queued, its log stream open
    daemon_proc()
    server = serve_proc()
    api = server.client()
    queued = api.post("/api/datasets", params={"wait": budget(60)},
                      files={"dataset": ("held.jsonl", '{"prompt": "a", "completion": "b"}\n' * 8)})
    assert queued.status_code == 201, queued.text
    run_id = queued.json()["runs"][0]["id"]
    opened = threading.Event()

    def follow() -> None:
        with api.stream("GET", f"/api/runs/{run_id}/log/stream", timeout=budget(120)) as stream:
            opened.set()
            with contextlib.suppress(httpx.RemoteProtocolError):  # cut by the server's stop (a browser reconnects)
                for _ in stream.iter_lines():
                    pass

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(budget(30))
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(budget(30))  # not held by the stream: it gets a few seconds to end, then the server exits
    assert server.proc.returncode == 0
    assert (home / "serve.log").read_text().rstrip().endswith("stopped")
    reader.join(budget(30))
    assert not reader.is_alive()
    assert os.path.exists(home / "control" / "stop")  # the queue is still held: the stop was the server's alone


def test_an_api_path_or_method_that_does_not_exist_is_answered_in_json_with_the_fix(home, serve_proc):  # noqa: F811
    api = serve_proc().client()
    for answer, status in ((api.get("/api/nothing/here"), 404), (api.post("/api/models/rev/-1/activate"), 404),
                           (api.put("/api/runs"), 405)):
        assert answer.status_code == status and "Fix: see GET /api/openapi.json" in answer.json()["error"], answer.text


def test_the_schema_declares_every_path_parameter_and_a_response(home, serve_proc):  # noqa: F811
    """What openapi-spec-validator found missing: each {param} of a path declared, every operation answering."""
    schema = serve_proc().client().get("/api/openapi.json").json()
    assert all(path.startswith("/api/") for path in schema["paths"])  # the dashboard's page is no endpoint
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            declared = {p["name"] for p in op["parameters"] if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
            assert op["responses"], (method, path)
    command = schema["paths"]["/api/runs/{run}/{kind}"]["post"]
    assert "value" in {p["name"] for p in command["parameters"]}


# --- what an audit of the server found -----------------------------------------------------------------------------
def _run(home: Path, rid: str, name: str, state: str = "completed", group: str | None = None) -> Path:
    """A run row as the daemon leaves it, with its folder and a two-line console.log."""
    d = home / "runs" / rid
    d.mkdir(parents=True)
    (d / "console.log").write_text("first line\nsecond line\n")
    store = Store(home / "overnight.db")
    try:
        store.insert_run({"id": rid, "name": name, "dataset": f"{name}.jsonl", "state": state, "priority": 0,
                          "seq": store.next_seq(), "run_dir": str(d), "base_model": "tiny", "group_id": group})
    finally:
        store.close()
    return d


def _a_daemon_that_answers_nothing(home: Path) -> None:
    """overnight.lock naming this test's process: to the server a daemon runs, but nothing takes a drop or answers."""
    me = psutil.Process()
    (home / "overnight.lock").write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))


def _first_screen(ws) -> None:
    """The dashboard process's first output: it runs (and draws) behind the socket."""
    try:
        ws.recv(timeout=budget(30))
    except TimeoutError:
        raise AssertionError("the dashboard process sent nothing: does `python -m daemon tui` run under textual-serve "
                             "(its stdin and stdout are pipes, TEXTUAL_DRIVER names the web driver)?") from None


def _output(server: ServeProcess) -> str:
    """Everything the server printed (stdout and stderr), once it is stopped."""
    server.stop()
    return server.proc.stdout.read()


def test_a_mistake_outside_serve_in_overnight_toml_leaves_the_server_up_and_status_shows_it(home, serve_proc):  # noqa: F811
    (home / "overnight.toml").write_text("learning_rat = 1\n")
    server = serve_proc()
    problem = server.client().get("/api/status").json()["problem"]
    assert "learning_rat" in problem
    assert problem == json.loads(overnight("status", "--json", home=home, check=True).stdout)["problem"]
    assert "warning" not in _output(server)
    (home / "overnight.toml").write_text("learning_rate = = 1\n[serve]\nhost = \"0.0.0.0\"\n")  # not TOML at all
    server = serve_proc()  # the defaults (loopback), never the host the broken file may have meant
    assert "not valid TOML" in server.client().get("/api/status").json()["problem"]
    assert re.search(r"warning: .*not valid TOML.*listens where --host/--port or the defaults say", _output(server))
    (home / "overnight.toml").write_text("learning_rat = 1\n[serve]\nport = 70000\n")  # a bad [serve]: refused
    res = overnight("serve", home=home, timeout=60)
    assert res.returncode == 1 and "[serve] port = 70000" in res.stderr and "learning_rat" not in res.stderr


def test_a_priority_for_a_sweeps_group_or_shared_name_sets_every_run_of_it(home, serve_proc):  # noqa: F811
    """As `overnight priority GROUP N` (tests/test_exit_codes.py): the same rule, daemon/core/priority.py."""
    runs = [f"sw-lr{i}-20260101-000000" for i in (1, 2)]
    for rid in runs:
        _run(home, rid, "sw", state="queued", group="sw-20260101-000000")
    api = serve_proc().client()
    for ref, value in (("sw-20260101-000000", 5), ("sw", -2)):
        answer = api.post(f"/api/runs/{ref}/priority", params={"value": value, "wait": 0})
        assert answer.status_code == 202, answer.text
        assert Path(answer.json()["wrote"]).read_text() == "".join(f"{rid} {value}\n" for rid in runs)
    assert api.post("/api/runs/nothing/priority", params={"value": 1, "wait": 0}).status_code == 404


def test_an_inbox_or_control_folder_removed_by_hand_is_made_again(home, serve_proc):  # noqa: F811
    api = serve_proc().client()
    shutil.rmtree(home / "inbox")
    shutil.rmtree(home / "control")
    paused = api.post("/api/pause", params={"wait": 0})
    assert paused.status_code == 202 and Path(paused.json()["wrote"]).parent == home / "control", paused.text
    uploaded = api.post("/api/datasets", params={"wait": 0}, files={"dataset": ("d.jsonl", '{"text": "a"}\n')})
    assert uploaded.status_code == 202 and (home / "inbox" / "d.jsonl").exists(), uploaded.text
    (home / "control").rename(home / "control-aside")
    (home / "control").write_text("a file where a folder belongs")
    refused = api.post("/api/pause", params={"wait": 0})
    assert refused.status_code == 503 and "Fix" in refused.json()["error"], refused.text


def test_a_log_offset_past_the_end_is_the_end(home, serve_proc):  # noqa: F811
    size = len(b"first line\nsecond line\n")
    _run(home, "r-20260101-000000", "r")
    server = serve_proc()
    api = server.client()
    page = api.get("/api/runs/r/log", params={"offset": "999999999999999999"})
    assert page.status_code == 200 and page.json()["text"] == "", page.text
    assert page.json()["offset"] == page.json()["next_offset"] == size  # where it read from: the end
    for how in ({"params": {"offset": "999999999999999999"}}, {"headers": {"Last-Event-ID": "999999999999999999"}}):
        with api.stream("GET", "/api/runs/r/log/stream", timeout=budget(30), **how) as stream:
            assert stream.status_code == 200
            assert list(stream.iter_lines())[:3] == ["event: end", f"id: {size}", "data: ended"]
    assert "Traceback" not in _output(server)


def test_ordinary_events_are_serve_log_lines_not_tracebacks(home, serve_proc):  # noqa: F811
    """A dashboard tab closed, a message no page sends, a client gone mid-upload, a stop with a log stream open."""
    _run(home, "q-20260101-000000", "q", state="queued")  # its log stream stays open: the run has not ended
    server = serve_proc()
    ws_url = f"ws://127.0.0.1:{server.port}/dashboard/ws?width=80&height=24"
    with ws_connect(ws_url) as ws:
        _first_screen(ws)
    with ws_connect(ws_url) as ws:
        ws.send(json.dumps(["stdin", 5]))
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                ws.recv(timeout=budget(30))
    with socket.create_connection(("127.0.0.1", server.port)) as s:  # the client goes away halfway through its body
        s.sendall(b"POST /api/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                  b"Content-Type: multipart/form-data; boundary=" + BOUNDARY.encode() + b"\r\n\r\n" + HEAD + b"x" * 500)
        time.sleep(0.5)
    log = home / "serve.log"
    wait_until(lambda: "went away before the body ended" in log.read_text(), budget(30), 0.1, "the cut upload")
    wait_until(lambda: log.read_text().count("dashboard: ") == 4, budget(30), 0.1, "both dashboards closed")
    assert "dashboard: ended: a message it cannot read (TypeError: stdin carries text, not int)" in log.read_text()
    assert _inbox(home) == []
    opened = threading.Event()

    def follow() -> None:
        with contextlib.suppress(httpx.TransportError), \
                server.client().stream("GET", "/api/runs/q/log/stream", timeout=budget(60)) as stream:
            opened.set()
            for _ in stream.iter_lines():
                pass

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(budget(30))
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(budget(30)) == 0
    out = server.proc.stdout.read()
    assert "Traceback" not in out and "Cancel" not in out and "Error" not in out, out


def test_a_dashboard_process_ends_when_its_server_is_killed(home, serve_proc):  # noqa: F811
    server = serve_proc()
    with ws_connect(f"ws://127.0.0.1:{server.port}/dashboard/ws?width=80&height=24") as ws:
        _first_screen(ws)
        children = psutil.Process(server.proc.pid).children(recursive=True)
        assert [c for c in children if "tui" in c.cmdline()], [c.cmdline() for c in children]
        server.proc.kill()  # kill -9: nothing of the server runs to stop them
        server.proc.wait()

        def gone() -> bool:
            return all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)
        wait_until(gone, budget(30), 0.1, "the dashboard process to end with its server")


def test_an_abandoned_upload_stops_waiting_for_the_verdict(home, serve_proc):  # noqa: F811
    _a_daemon_that_answers_nothing(home)
    api = serve_proc().client(timeout=1.5)
    began = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):  # the client gives up long before the 600 s it asked for
        api.post("/api/datasets", params={"wait": 600}, files={"dataset": ("late.jsonl", '{"text": "a"}\n')})
    log = home / "serve.log"
    wait_until(lambda: "went away before the daemon's verdict on late.jsonl" in log.read_text(), budget(30), 0.1,
               "the server to stop waiting")
    assert time.monotonic() - began < budget(30)
    assert _inbox(home) == ["late.jsonl"]  # the drop stays for the daemon, as one `overnight add` put there


def test_a_capped_wait_is_said_as_it_was(home, monkeypatch):
    """The in-process app (the wait cap shortened): a note names the seconds waited, not the seconds asked."""
    from starlette.testclient import TestClient

    from daemon.web import app as webapp, steer
    monkeypatch.setattr(steer, "MAX_WAIT_S", 0.3)
    _a_daemon_that_answers_nothing(home)
    with TestClient(webapp.build(Home.resolve(str(home)), None), base_url="http://127.0.0.1") as api:
        answer = api.post("/api/pause", params={"wait": 300})
    assert answer.status_code == 202 and "not acknowledged yet (waited 0.3 s)" in answer.json()["note"], answer.text


def test_status_codes_say_what_went_wrong(home, serve_proc):  # noqa: F811
    _run(home, "r-20260101-000000", "r")
    api = serve_proc().client()
    missing = api.post("/api/models/nomodel/3/activate", params={"wait": 0})
    assert missing.status_code == 404 and "GET /api/models" in missing.json()["error"], missing.text
    for path in ("/api/status", "/api/runs", "/api/runs/r/log", "/api/queue"):
        answer = api.post(path)
        assert answer.status_code == 405 and answer.headers["allow"] == "GET, HEAD", (path, answer.text)
        assert "Fix: see GET /api/openapi.json" in answer.json()["error"]
    assert api.post("/api/nothing").status_code == 404
    unnamed = api.post("/api/datasets", headers=MULTIPART, content=HEAD.replace(b'"big.txt"', b'""') + b"a\n" + TAIL)
    assert unnamed.status_code == 400 and "no file name" in unnamed.json()["error"], unnamed.text
    assert "dataset=@mydata.jsonl" in unnamed.json()["error"]
    assert _inbox(home) == [] and [p for p in (home / "control").iterdir() if p.is_file()] == []


def test_http_users_get_fixes_in_http_terms(home, serve_proc):  # noqa: F811
    _run(home, "r-20260101-000000", "r")
    _run(home, "r-20260102-000000", "r")
    api = serve_proc().client()
    for ref in ("nothing", "r"):  # none, and two
        for answer in (api.get(f"/api/runs/{ref}"), api.post(f"/api/runs/{ref}/pause", params={"wait": 0})):
            assert answer.status_code == 404 and "Fix: GET /api/runs lists the runs" in answer.json()["error"]
    assert "r-20260101-000000" in api.get("/api/runs/r").json()["error"]  # the candidates, as before


def test_an_eval_file_comes_along_with_its_dataset(home, serve_proc):  # noqa: F811
    api = serve_proc().client()
    records = '{"prompt": "2+2=", "completion": "4"}\n'
    answer = api.post("/api/datasets", params={"wait": 0},
                      files={"dataset": ("mine.jsonl", '{"text": "a"}\n'), "eval": ("held-out.jsonl", records)})
    assert answer.status_code == 202, answer.text
    assert [Path(f).name for f in answer.json()["files"]] == ["mine.eval.jsonl", "mine.jsonl"]
    assert (home / "inbox" / "mine.eval.jsonl").read_text() == records  # the dataset's name, as `overnight add` has
