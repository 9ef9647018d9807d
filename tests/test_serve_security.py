"""`overnight serve`'s rules: tokens with two scopes (no token, a wrong one, or a read token on a write: 401/403 and
nothing changes), no non-loopback address without tokens, uploads capped (413 before anything is kept), names that
are paths refused, the dashboard behind the steer token. A real server subprocess and a real HTTP client."""
from __future__ import annotations

import json
import os
import stat
import sys
import subprocess
from pathlib import Path

import httpx

from tests.conftest import REPO, overnight
from tests.test_serve import ServeProcess, serve_proc  # noqa: F401 - the fixture

DATASET = '{"text": "hello there"}\n' * 10


def _tokens(home: Path) -> dict[str, str]:
    return json.loads((home / "serve-tokens.json").read_text())


def _inbox(home: Path) -> list[str]:
    """Everything in the inbox but the rejected/ folder, hidden files included."""
    return sorted(p.name for p in (home / "inbox").iterdir() if p.name != "rejected")


def test_tokens_are_created_once_kept_private_and_required(home, serve_proc):  # noqa: F811
    first = serve_proc("--token", token="unused-until-read")  # 401 is "up" too
    tokens = _tokens(home)
    assert stat.S_IMODE((home / "serve-tokens.json").stat().st_mode) == 0o600
    first.stop()
    printed = first.proc.stdout.read()
    assert tokens["steer"] in printed and tokens["read"] in printed
    again = serve_proc("--token")
    again.stop()
    assert tokens["steer"] not in again.proc.stdout.read()  # printed once, when created
    assert _tokens(home) == tokens

    server = serve_proc()  # the tokens stay required while the home has them, --token or not
    control_before = sorted(p.name for p in (home / "control").iterdir())
    for token, code in ((None, 401), ("wrong", 401), (tokens["read"], 200), (tokens["steer"], 200)):
        assert server.client(token).get("/api/runs").status_code == code, token
    for token, code in ((None, 401), ("wrong", 401), (tokens["read"], 403)):
        api = server.client(token)
        answer = api.post("/api/datasets", files={"dataset": ("d.jsonl", DATASET)})
        assert answer.status_code == code and "Fix" in answer.json()["error"]
        assert api.post("/api/pause").status_code == code
        assert api.post("/api/models/m/1/activate").status_code == code
        assert api.delete("/api/models/m/1").status_code == code
    assert _inbox(home) == [] and sorted(p.name for p in (home / "control").iterdir()) == control_before
    steered = server.client(tokens["steer"]).post("/api/pause", params={"wait": 0})
    assert steered.status_code == 202 and "no daemon is running" in steered.json()["note"]
    assert [p.name.split(".")[0] for p in (home / "control").glob("pause.*")] == ["pause"]
    log = (home / "serve.log").read_text()  # every write, done or refused, with the client's address
    assert "127.0.0.1:" in log and "POST /api/datasets refused (403)" in log and "pause : " not in log
    assert "POST /api/pause refused (401)" in log and "pause: no daemon is running" in log

    # the dashboard: the steer token once in the URL becomes a same-site cookie; a read token does not open it
    browser = httpx.Client(base_url=server.url)
    assert browser.get("/dashboard/").status_code == 401
    assert browser.get("/dashboard/", params={"token": tokens["read"]}).status_code == 403
    opened = browser.get("/dashboard/", params={"token": tokens["steer"]})
    assert opened.status_code == 303 and "samesite=strict" in opened.headers["set-cookie"].lower()
    assert "httponly" in opened.headers["set-cookie"].lower()
    page = browser.get("/dashboard/")
    assert page.status_code == 200 and "/dashboard/ws" in page.text
    assert "googleapis" not in page.text and "css/xterm.css" in page.text  # nothing fetched from outside
    assert browser.get("/api/runs").status_code == 401  # the API never takes the cookie
    assert browser.get("/api/runs", headers={"Origin": "http://evil.example"}).status_code == 401


def test_a_non_loopback_address_without_a_token_refuses_to_start(home):
    res = overnight("serve", "--host", "0.0.0.0", "--port", "1", home=home, timeout=60)
    assert res.returncode == 1 and "Fix: overnight serve --token" in res.stderr
    assert not (home / "serve-tokens.json").exists()
    (home / "overnight.toml").write_text('[serve]\nhost = "0.0.0.0"\n')  # the same from overnight.toml
    res = overnight("serve", home=home, timeout=60)
    assert res.returncode == 1 and "not a loopback address" in res.stderr
    (home / "overnight.toml").write_text('[serve]\nport = 70000\n')
    res = overnight("serve", home=home, timeout=60)
    assert res.returncode == 1 and "[serve] port = 70000" in res.stderr and "Fix:" in res.stderr


def test_oversize_uploads_and_path_names_are_refused_before_anything_is_kept(home, serve_proc):  # noqa: F811
    api = serve_proc().client()
    (home / "overnight.toml").write_text("max_upload_mb = 0.01\n")  # about 10 kB; live: no restart
    big = "x" * 20_000
    answer = api.post("/api/datasets", files={"dataset": ("big.jsonl", big)})
    assert answer.status_code == 413 and "max_upload_mb" in answer.json()["error"]

    def chunks():  # no Content-Length: the server counts while it streams
        for _ in range(20):
            yield b"--b\r\nContent-Disposition: form-data; name=\"dataset\"; filename=\"big.jsonl\"\r\n\r\n" \
                if _ == 0 else b"y" * 1000
    answer = api.post("/api/datasets", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 413
    for name in ("../escape.jsonl", "/etc/escape.jsonl", "..", ".hidden.jsonl", "sub/dir.jsonl", "notes.exe"):
        answer = api.post("/api/datasets", files={"dataset": (name, DATASET)})
        assert answer.status_code == 400 and "Fix" in answer.json()["error"], (name, answer.text)
    assert api.post("/api/datasets", files={"sidecar": ("x.toml", "max_steps = 1\n")}).status_code == 400
    assert _inbox(home) == [] and not (home / "escape.jsonl").exists() and not (home.parent / "escape.jsonl").exists()
    assert not list(home.rglob("*escape*"))
    # a file the client names like one already waiting in the inbox: refused, the waiting one untouched
    (home / "inbox" / "taken.jsonl").write_text("mine\n")
    answer = api.post("/api/datasets", files={"dataset": ("taken.jsonl", DATASET)}, params={"wait": 0})
    assert answer.status_code == 409 and (home / "inbox" / "taken.jsonl").read_text() == "mine\n"
    accepted = api.post("/api/datasets", files={"dataset": ("ok.jsonl", DATASET)}, params={"wait": 0})
    assert accepted.status_code == 202 and (home / "inbox" / "ok.jsonl").read_text() == DATASET
    assert sorted(_inbox(home)) == ["ok.jsonl", "taken.jsonl"]


def test_cross_origin_requests_get_no_cors_headers(home, serve_proc):  # noqa: F811
    api = serve_proc().client()
    schema = api.get("/api/openapi.json").json()
    assert schema["openapi"].startswith("3.") and "post" in schema["paths"]["/api/datasets"]
    assert {"/api/runs", "/api/runs/{run}/log/stream", "/api/queue", "/api/system"} <= set(schema["paths"])
    root = api.get("/api/", follow_redirects=True)  # the API address `overnight serve` prints leads to the schema
    assert root.status_code == 200 and root.json() == schema
    answer = api.options("/api/runs", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in api.get("/api/runs", headers={"Origin": "http://evil.example"}).headers
    # without tokens: a form another site's page posts, or a name rebound to 127.0.0.1, is refused; nothing written
    for headers in ({"Origin": "http://evil.example"}, {"Host": "evil.example"}):
        assert api.post("/api/pause", headers=headers).status_code == 403
        answer = api.post("/api/datasets", headers=headers, files={"dataset": ("d.jsonl", DATASET)})
        assert answer.status_code == 403 and "Fix" in answer.json()["error"]
    assert api.get("/api/runs", headers={"Host": "evil.example"}).status_code == 403
    assert api.get("/api/runs", headers={"Host": "localhost"}).status_code == 200
    assert _inbox(home) == [] and not list((home / "control").glob("pause*"))
    code = "import daemon.web.server as s; print(s.is_loopback('127.0.0.1'), s.is_loopback('::1'), " \
           "s.is_loopback('0.0.0.0'), s.is_loopback('example.com'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.split() == ["True", "True", "False", "False"]


def test_service_install_serve_writes_the_servers_own_unit(home, tmp_path):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    run = lambda *a: subprocess.run([sys.executable, "-m", "daemon", "service", *a, "--user", "--home", str(home)],  # noqa: E731
                                    capture_output=True, text=True, cwd=REPO, env=env)
    res = run("install", "--serve")
    assert res.returncode == 0, res.stderr
    units = list((tmp_path / "config" / "systemd" / "user").iterdir())
    assert [u.name.startswith("overnight-serve-") for u in units] == [True]
    text = units[0].read_text()
    assert f"serve --home {home}" in text and "daemon --home" not in text
    assert run("install").returncode == 0  # the daemon's unit beside it, under its own name
    assert len(list((tmp_path / "config" / "systemd" / "user").iterdir())) == 2
    assert run("uninstall", "--serve").returncode == 0 and not units[0].exists()


def test_tokens_created_while_a_server_runs_are_required_from_its_next_request(home, serve_proc):  # noqa: F811
    server = serve_proc()  # no tokens yet: loopback only, no token asked
    assert server.client().get("/api/runs").status_code == 200
    res = overnight("serve", "--token", "--port", str(server.port), home=home, timeout=60)
    assert res.returncode == 1 and "cannot listen" in res.stderr  # the port is the first server's: nothing made
    assert not (home / "serve-tokens.json").exists() and server.client().get("/api/runs").status_code == 200
    serve_proc("--token", token="unused").stop()  # another server, on a port of its own, creates them
    tokens = _tokens(home)
    assert server.client().get("/api/runs").status_code == 401
    assert server.client(tokens["read"]).get("/api/runs").status_code == 200
    (home / "serve-tokens.json").unlink()  # gone: the tokens read before stay in force, never an open server
    assert server.client().get("/api/runs").status_code == 401


def test_a_token_file_others_may_read_or_with_weak_tokens_is_refused(home):
    f = home / "serve-tokens.json"
    for content, mode, said in (({"read": "r" * 20, "steer": "s" * 20}, 0o644, "others may read it (mode 644)"),
                                ({"read": None, "steer": None}, 0o600, "two different strings of 16 characters"),
                                ({"read": "a" * 20, "steer": "a" * 20}, 0o600, "two different strings")):
        f.write_text(json.dumps(content))
        f.chmod(mode)
        res = overnight("serve", "--host", "0.0.0.0", "--port", "1", home=home, timeout=60)
        assert res.returncode == 1 and said in res.stderr and "Fix: " in res.stderr, res.stderr


def test_a_token_file_that_goes_bad_under_a_tokenless_server_holds_it_shut_until_mended(home, serve_proc):  # noqa: F811
    server = serve_proc()
    f = home / "serve-tokens.json"
    f.write_text(json.dumps({"read": "r" * 20, "steer": "s" * 20}))
    f.chmod(0o644)  # others may read it: refused, and nothing is answered while it is so
    for _ in range(2):
        answer = server.client().get("/api/runs")
        assert answer.status_code == 503 and "chmod 600" in answer.json()["error"], answer.text
    f.chmod(0o600)  # the fix the error gives: the tokens take effect
    assert server.client().get("/api/runs").status_code == 401
    assert server.client("r" * 20).get("/api/runs").status_code == 200


def test_another_sites_malformed_cookie_does_not_hide_the_dashboards_token(home, serve_proc):  # noqa: F811
    server = serve_proc("--token", token="unused")
    steer = _tokens(home)["steer"]
    browser = httpx.Client(base_url=server.url)
    refused = browser.get("/dashboard/")  # no cookie yet: said how a browser user gets one
    assert refused.status_code == 401 and "Fix: open /dashboard/?token=STEER_TOKEN" in refused.text, refused.text
    for cookie in (f"overnight_token={steer}; other=a b", f'other="unclosed; overnight_token={steer}'):
        page = browser.get("/dashboard/", headers={"Cookie": cookie})
        assert page.status_code == 200 and "/dashboard/ws" in page.text, (cookie, page.text)
    assert browser.get("/dashboard/", headers={"Cookie": "other=a b; overnight_token=wrong"}).status_code == 401


def test_a_path_cannot_forge_a_serve_log_line(home, serve_proc):  # noqa: F811
    api = serve_proc().client()
    forged = "[2026-01-01 00:00:00] 127.0.0.1:1: upload: forged.jsonl into inbox"
    evil = {"Origin": "http://evil.example"}
    assert api.post(f"/api/pause%0A{forged}", headers=evil).status_code == 403  # refused by the token check
    assert api.post(f"/api/runs/x%0D%0A{forged}%1B%5B2J/pause").status_code == 404  # refused by the API
    lines = (home / "serve.log").read_text().splitlines()
    assert not [line for line in lines if line.startswith("[2026-01-01")], lines
    assert len([line for line in lines if "refused" in line and "forged.jsonl" in line]) == 2, lines
    assert "\\n[2026-01-01" in lines[-2] and "\\r\\n[2026-01-01" in lines[-1] and "\\x1b[2J" in lines[-1], lines


def test_no_page_may_show_the_server_in_a_frame(home, serve_proc):  # noqa: F811
    api = serve_proc().client()
    for answer in (api.get("/dashboard/"), api.get("/"), api.get("/api/runs"), api.get("/api/nothing"),
                   api.post("/api/pause", headers={"Origin": "http://evil.example"})):
        assert answer.headers["x-frame-options"] == "DENY", answer.request.url
        assert answer.headers["content-security-policy"] == "frame-ancestors 'none'", answer.request.url
