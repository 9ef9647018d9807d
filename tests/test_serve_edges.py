"""`overnight serve` at its edges: a second server on a taken port, a body cut short, a value that would write a second
control line, another drop's rejection, a stop with a log stream open. A real server (a subprocess) and httpx."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from daemon.core.home import Home
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
