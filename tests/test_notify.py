"""[notify] (apprise) and the on_reject hook: validation with clear errors, and the real daemon telling a local
JSON webhook about a rejected drop, a failed run and a completed run."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daemon.core.options import OptionsError, load_home_toml, load_sidecar
from tests.conftest import drop, overnight, wait_until

FAST = "max_steps = 3\nbatch_size = 2\nmax_length = 48\nlog_every = 1\nsave_every = 2\nprobe_count = 2\n" \
       "probe_max_new_tokens = 4\neval_fraction = 0.1\n"


class Webhook:
    """A JSON webhook on 127.0.0.1 (an ephemeral port) collecting what apprise's json:// posts; it serves for at most
    `lifetime` seconds and stops by itself."""

    def __init__(self, lifetime: float = 300) -> None:
        self.posts: list[dict] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                posts.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 0.2
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/"
        self._stop = threading.Event()
        deadline = time.monotonic() + lifetime

        def serve() -> None:
            while not self._stop.is_set() and time.monotonic() < deadline:
                self.server.handle_request()
            self.server.server_close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def about(self, text: str) -> list[dict]:
        return [p for p in self.posts if text in p.get("title", "") + p.get("message", "")]

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(5)


@pytest.fixture
def webhook():
    w = Webhook()
    yield w
    w.stop()


def refused_url() -> str:
    """A json:// URL on a local port nobody listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"json://127.0.0.1:{port}/"


# --- validation -------------------------------------------------------------------------------------------------
def write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


@pytest.mark.parametrize("table, expected", [
    ('[notify]\nurls = ["ntfys://my-topic"]\non = ["failed", "finished"]\n',
     ["'finished'", "failed, completed, rejected, stalled, disk_low", "Fix:"]),
    ('[notify]\nurls = ["ntfys://my-topic", "nosuchservice://x"]\n', ["urls[1]", "nosuchservice://x", "Fix:"]),
    ('[notify]\nurls = []\n', ["urls", "non-empty list", "Fix:"]),
    ('[notify]\nurls = ["ntfy://"]\n', ["urls[0]", "names no topic", "ntfys://my-topic"]),
    ('[notify]\nurl = ["ntfys://my-topic"]\n', ["'url'", "did you mean 'urls'", "allowed keys: urls, on"]),
    ('[notify]\nurls = ["ntfys://t"]\non = "failed, completed"\n', ["'failed, completed'", "allowed:"]),
    ('[notfy]\nurls = ["ntfys://t"]\n', ["'notfy'", "Did you mean [notify]"]),
    ('[hooks]\non_rejected = ["true"]\n', ["'on_rejected'", "on_complete, on_fail, on_reject", "Fix:"]),
    ('[hooks]\non_reject = "echo rejected"\n', ["on_reject", "list of strings", "Fix:"]),
])
def test_bad_notify_and_hooks_tables_name_the_key_the_allowed_values_and_the_fix(tmp_path, table, expected):
    with pytest.raises(OptionsError) as e:
        load_home_toml(write(tmp_path / "overnight.toml", table))
    assert str(e.value).startswith(str(tmp_path / "overnight.toml"))
    for text in expected:
        assert text in str(e.value)


def test_notify_is_owner_only_and_a_good_table_loads(tmp_path):
    good = '[notify]\nurls = ["ntfys://my-topic", "json://127.0.0.1:8080/hook"]\non = ["failed", "rejected"]\n'
    assert load_home_toml(write(tmp_path / "overnight.toml", good))["notify"]["on"] == ["failed", "rejected"]
    with pytest.raises(OptionsError, match="only be set by the machine owner"):
        load_sidecar(write(tmp_path / "d.toml", good))


def test_check_overnight_toml_reports_a_bad_notify_url_and_passes_a_good_one(home):
    (home / "overnight.toml").write_text('[notify]\nurls = ["mailto://me:hunter2@example.com", "bogus://x"]\n')
    res = overnight("check", str(home / "overnight.toml"), home=home)
    assert res.returncode == 1
    assert "[notify] urls[1] = 'bogus://x'" in res.stdout and "Fix:" in res.stdout
    (home / "overnight.toml").write_text('[notify]\nurls = ["mailto://me:hunter2@example.com"]\non = ["failed"]\n'
                                         '[hooks]\non_reject = ["true"]\n')
    res = overnight("check", str(home / "overnight.toml"), home=home)
    assert res.returncode == 0, res.stdout
    assert "notify: mailto://me:****@example.com on failed" in res.stdout and "hunter2" not in res.stdout
    assert "hooks: on_reject" in res.stdout


def test_a_bad_notify_table_is_the_daemons_problem_and_drops_wait(home, daemon_proc, tmp_path):
    (home / "overnight.toml").write_text('[notify]\nurls = ["ntfys://t"]\non = ["failed", "explode"]\n')
    (home / "control" / "stop").write_text("")
    daemon_proc()
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    drop(tmp_path / "a.jsonl", home / "inbox")
    problem = wait_until(lambda: json.loads(overnight("status", "--json", home=home).stdout)["problem"], 30,
                         what="the problem in status")
    assert "'explode'" in problem and "failed, completed, rejected, stalled, disk_low" in problem
    out = overnight("status", home=home).stdout
    assert "PROBLEM:" in out and "[notify]" in out
    assert (home / "inbox" / "a.jsonl").exists()


# --- the daemon tells the owner -----------------------------------------------------------------------------------
def test_on_reject_hook_gets_the_file_and_the_error(home, daemon_proc, tmp_path):
    (home / "overnight.toml").write_text(
        '[hooks]\non_reject = ["sh", "-c", "echo \\"$OVERNIGHT_FILE|$OVERNIGHT_ERROR\\" > out.txt"]\n')
    (home / "control" / "stop").write_text("")
    daemon_proc()
    (tmp_path / "broken.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "oops"\n')
    drop(tmp_path / "broken.jsonl", home / "inbox")
    out = wait_until(lambda: (home / "out.txt").exists() and (home / "out.txt").read_text(), 30, what="the hook")
    file, error = out.split("|", 1)
    assert file == str(home.resolve() / "inbox" / "rejected" / "broken.jsonl") and Path(file).exists()
    assert error.strip() == (home / "inbox" / "rejected" / "broken.error.txt").read_text().split("\n\n")[0]
    assert "line 2" in error
    hooks_log = wait_until(lambda: "on_reject exit: 0" in (home / "hooks.log").read_text() and
                           (home / "hooks.log").read_text(), 10, what="the hook's exit in hooks.log")
    assert "broken.jsonl" in hooks_log
    assert "hook on_reject for broken.jsonl finished: 0" in (home / "overnight.log").read_text()


@pytest.mark.e2e
def test_the_owner_is_told_of_a_rejection_a_failure_and_a_completion(home, tiny_model, daemon_proc, tmp_path,
                                                                     webhook):
    """One daemon: a rejected drop, a failed run, a completed run reach the webhook; a notifier whose port
    refuses connections is logged and changes nothing."""
    dead = refused_url()
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n[notify]\nurls = ["{webhook.url}", "{dead}"]\n')
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen2"}')  # passes intake (a config and a weights file)…
    (broken / "model.safetensors").write_bytes(b"not weights")  # …and fails when the trainer loads it
    (home / "control" / "stop").write_text("")  # hold the queue until every drop is in
    d = daemon_proc()
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "oops"\n')
    (tmp_path / "fails.toml").write_text(FAST + f'base_model = "{broken}"\n')
    (tmp_path / "fails.jsonl").write_text('{"text": "hello there"}\n' * 10)
    (tmp_path / "good.toml").write_text(FAST + "priority = -1\n")
    (tmp_path / "good.jsonl").write_text('{"text": "hello there"}\n' * 10)
    for name in ("bad.jsonl", "fails.toml", "fails.jsonl", "good.toml", "good.jsonl"):
        drop(tmp_path / name, home / "inbox")
    wait_until(lambda: len(json.loads(overnight("runs", "--json", home=home).stdout)) == 2, 30, what="two runs")
    overnight("resume", home=home, check=True)

    rejected = wait_until(lambda: webhook.about("bad.jsonl"), 60, what="the rejection posted")[0]
    error_text = (home / "inbox" / "rejected" / "bad.error.txt").read_text().split("\n\n")[0]
    assert "rejected" in rejected["title"] and error_text in rejected["message"] and "line 2" in error_text
    assert str(home.resolve() / "inbox" / "rejected") in rejected["message"]

    runs = {r["dataset"]: r for r in json.loads(overnight("runs", "--json", home=home).stdout)}
    failed_id, good_id = runs["fails.jsonl"]["id"], runs["good.jsonl"]["id"]
    failed = wait_until(lambda: webhook.about(failed_id), 180, what="the failure posted")[0]
    run = {r["id"]: r for r in json.loads(overnight("runs", "--json", home=home).stdout)}[failed_id]
    assert run["state"] == "failed" and failed["type"] == "failure"
    assert run["reason"] in failed["message"] and f"overnight resume {failed_id}" in failed["message"]

    completed = wait_until(lambda: webhook.about(good_id), 300, what="the completion posted")[0]
    good = {r["id"]: r for r in json.loads(overnight("runs", "--json", home=home).stdout)}[good_id]
    assert good["state"] == "completed" and completed["type"] == "success"
    assert "model good version 1" in completed["message"] and "final loss" in completed["message"]
    assert f"Adapter: {Path(good['run_dir']) / 'adapter'}" in completed["message"]
    assert (Path(good["run_dir"]) / "adapter" / "adapter_model.safetensors").exists()

    log = (home / "overnight.log").read_text()
    for event, subject in (("rejected", "bad.jsonl"), ("failed", failed_id), ("completed", good_id)):
        assert f"notify: could not deliver '{event}' for {subject} to {dead}: " in log
        assert f"notify: sent '{event}' for {subject} to {webhook.url}" in log
    assert "Connection refused" in log
    assert d.proc.poll() is None and json.loads(overnight("status", "--json", home=home).stdout)["daemon"]
    config = json.loads((Path(good["run_dir"]) / "config.json").read_text())
    assert webhook.url not in json.dumps(config)  # notification URLs (they may hold tokens) stay in overnight.toml
    assert d.stop() == 0


def test_a_failure_resuming_cannot_mend_says_the_fix_instead_of_resume(tmp_path):
    from daemon.engine.notify import failed_message

    run = {"id": "x-1", "run_dir": str(tmp_path / "x-1"), "dataset": "x.jsonl", "base_model": "m"}
    _, body = failed_message(run, "x.jsonl: changed since it was validated … Fix: drop the finished file again", tmp_path)
    assert "Next: drop the dataset again, as the Fix says" in body and "overnight resume" not in body
    _, body = failed_message(run, "CUDA out of memory. Fix: lower batch_size", tmp_path)
    assert f"Next: fix the cause, then resume with: overnight resume x-1 --home {tmp_path}" in body


def test_a_queue_that_waits_for_disk_space_is_told_once(home, tiny_model, daemon_proc, tmp_path, webhook):
    """The disk check before a start holds the queue (min_free_gb): the owner asleep is told, once."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmin_free_gb = 1000000\n'
                                         f'[notify]\nurls = ["{webhook.url}"]\n')
    daemon_proc()
    (tmp_path / "big.jsonl").write_text('{"text": "hello there"}\n' * 10)
    drop(tmp_path / "big.jsonl", home / "inbox")
    told = wait_until(lambda: webhook.about("queue waits, disk low"), 60, what="disk_low posted")
    assert "min_free_gb = 1000000 in overnight.toml" in told[0]["message"] and told[0]["type"] == "warning"
    time.sleep(3)  # the daemon's next passes find the same shortage: nothing more is sent
    assert len(webhook.about("queue waits, disk low")) == 1


def test_a_receiver_that_never_answers_is_said_as_a_timeout_not_only_a_connection_error():
    import socket

    import apprise

    from daemon.core.notifytable import apprise_log, failure_reason

    with socket.socket() as silent:  # accepts (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        plugin = apprise.Apprise.instantiate(f"json://127.0.0.1:{silent.getsockname()[1]}/hook?rto=0.5")
        with apprise_log() as lines:
            assert not plugin.notify(body="x", title="t")
    assert "no answer within 0.5 s" in failure_reason(lines)
