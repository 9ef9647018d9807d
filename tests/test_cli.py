"""The CLI as a user types it: check, add, logs, runs, models, evolution, status without a daemon."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.engine.store import Store
from tests.conftest import REPO, overnight


def _run(home: Path, rid: str, **columns: Any) -> Path:
    """A run row as the daemon leaves it, with its folder."""
    d = home / "runs" / rid
    d.mkdir(parents=True)
    store = Store(home / "overnight.db")
    store.insert_run({"id": rid, "name": rid.split("-")[0], "state": "completed", "seq": store.next_seq(),
                      "run_dir": str(d), **columns})
    store.close()
    return d


def test_check_ok_prints_format_schema_counts_and_lengths(home, tiny_model, tmp_path):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    f = tmp_path / "qa.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n' * 5)
    res = overnight("check", str(f), home=home)
    assert res.returncode == 0, res.stdout
    assert "format: jsonl" in res.stdout and "schema: prompt_completion" in res.stdout and "records: 5" in res.stdout
    assert "characters per example" in res.stdout
    # the base model's tokenizer is known: lengths as the run trains them (one chat exchange), not of the text
    assert "tokens per example as trained (tiny-qwen2 tokenizer, chat template): min 16," in res.stdout
    assert "max_length 1024: no record is cut" in res.stdout
    data = json.loads(overnight("check", "--json", str(f), home=home).stdout)[0]
    assert data["ok"] and data["report"]["records"] == 5
    assert data["as_trained"] == {"tokens": {"min": 16, "mean": 16.0, "p50": 16, "p95": 16, "max": 16},
                                  "truncated": 0, "dropped": 0}


def test_check_counts_the_records_max_length_cuts_and_drops(home, tiny_model, tmp_path):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmax_length = 16\n')
    f = tmp_path / "long.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n'  # fits
                 '{"prompt": "a", "completion": "' + "b " * 30 + '"}\n'  # cut, part of the answer left
                 '{"prompt": "' + "a " * 30 + '", "completion": "b"}\n')  # cut before its answer: dropped
    res = overnight("check", str(f), home=home)
    assert res.returncode == 0 and "max_length 16: 2 record(s) cut, 1 of them dropped" in res.stdout, res.stdout


def test_check_error_exit_1_with_line_and_field(home, tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                 '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}\n')
    res = overnight("check", str(f), home=home)
    assert res.returncode == 1
    assert "line 2" in res.stdout and "messages[1].role" in res.stdout and "Fix:" in res.stdout
    [verdict] = json.loads(overnight("check", "--json", str(f), home=home).stdout)
    [problem] = verdict["problems"]
    assert not verdict["ok"] and problem["place"] == "chat.jsonl, line 2, field 'messages[1].role'"
    assert problem["fix"].startswith("use one of the expected roles") and problem["message"] == verdict["error"]


def test_check_without_base_model_says_the_data_is_good_and_what_a_drop_needs(home, tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"text": "x"}\n')
    res = overnight("check", str(f), home=home)  # no overnight.toml: as outside any home
    assert res.returncode == 0, res.stdout
    assert res.stdout.startswith(f"{f}: OK") and "records: 1" in res.stdout and "ERROR" not in res.stdout
    assert "a drop also needs a base model: set base_model in overnight.toml or the sidecar t.toml" in res.stdout
    [verdict] = json.loads(overnight("check", "--json", str(f), home=home).stdout)
    assert verdict["ok"] and not verdict["problems"] and "base model" in verdict["needs"][0]


def test_check_sidecar_beside_dataset_and_alone(home, tiny_model, tmp_path):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "t.toml").write_text("lora_rank = 8\n")
    res = overnight("check", str(tmp_path / "t.jsonl"), home=home)
    assert res.returncode == 1 and "unknown option 'lora_rank'" in res.stdout and "lora_r" in res.stdout
    res = overnight("check", str(tmp_path / "t.toml"), home=home)
    assert res.returncode == 1 and "unknown option 'lora_rank'" in res.stdout
    (tmp_path / "t.toml").write_text('base_model = "/no/such/model"\n')
    res = overnight("check", str(tmp_path / "t.toml"), home=home)
    assert res.returncode == 1 and "/no/such/model" in res.stdout and "was not found" in res.stdout


def test_check_without_base_model_still_refuses_a_record_the_named_template_refuses(home, tmp_path):
    (tmp_path / "r.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "a"}, {
        "role": "user", "content": "b"}, {"role": "assistant", "content": "c"}]}) + "\n")
    (tmp_path / "r.toml").write_text('chat_template = "gemma"\n')
    res = overnight("check", str(tmp_path / "r.jsonl"), home=home)
    assert res.returncode == 1 and "record 1: the chat template refuses this conversation" in res.stdout, res.stdout
    assert "a drop also needs a base model" in res.stdout


def test_check_a_symlink_notes_the_daemon_refuses_links(home, tiny_model, tmp_path):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "l.jsonl").symlink_to(tmp_path / "t.jsonl")
    res = overnight("check", str(tmp_path / "l.jsonl"), home=home)
    assert res.returncode == 0 and "symbolic link" in res.stdout and "overnight add" in res.stdout
    (home / "inbox" / "l.jsonl").symlink_to(tmp_path / "t.jsonl")
    res = overnight("check", str(home / "inbox" / "l.jsonl"), home=home)
    assert res.returncode == 1 and "symbolic link" in res.stdout


def test_add_copies_sidecar_first_and_keeps_the_original(home, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "d.toml").write_text("lora_r = 4\n")
    res = overnight("add", str(tmp_path / "d.jsonl"), home=home, check=True)
    assert res.stdout.index("d.toml") < res.stdout.index("d.jsonl ->")
    assert (home / "inbox" / "d.jsonl").read_text() == (tmp_path / "d.jsonl").read_text()
    assert (home / "inbox" / "d.toml").exists() and (tmp_path / "d.jsonl").exists()
    again = overnight("add", str(tmp_path / "d.jsonl"), home=home)
    assert again.returncode != 0 and "already exists" in again.stderr
    side = overnight("add", str(tmp_path / "d.toml"), home=home)
    assert side.returncode != 0 and "--sidecar" in side.stderr


def test_add_takes_an_eval_file_by_any_name_and_a_missing_file_is_a_bad_file(home, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "held-out.jsonl").write_text('{"prompt": "a", "reference": "b"}\n')
    res = overnight("add", str(tmp_path / "d.jsonl"), "--eval", str(tmp_path / "held-out.jsonl"), home=home, check=True)
    assert (home / "inbox" / "d.eval.jsonl").read_text() == (tmp_path / "held-out.jsonl").read_text()
    assert res.stdout.index("d.eval.jsonl") < res.stdout.index("d.jsonl ->")  # before its dataset
    for args in ([str(tmp_path / "none.jsonl")], [str(tmp_path / "d.jsonl"), "--eval", str(tmp_path / "no.jsonl")]):
        missing = overnight("add", *args, home=home)  # exit 1 as check says a bad file, not click's usage error 2
        assert missing.returncode == 1 and "does not exist" in missing.stderr and "nothing was added" in missing.stderr


def test_add_that_clashes_moves_nothing_so_no_sidecar_joins_the_earlier_drop(home, tmp_path):
    (home / "inbox" / "d.jsonl").write_text('{"text": "earlier"}\n')
    (tmp_path / "d.jsonl").write_text('{"text": "later"}\n')
    (tmp_path / "opts.toml").write_text("lora_r = 4\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "expected": "b"}\n')
    res = overnight("add", str(tmp_path / "d.jsonl"), "--sidecar", str(tmp_path / "opts.toml"), "--probes",
                    str(tmp_path / "p.jsonl"), home=home)
    assert res.returncode == 1 and "d.jsonl already exists" in res.stderr and "nothing was added" in res.stderr
    assert sorted(p.name for p in (home / "inbox").iterdir()) == ["d.jsonl", "rejected"]  # no sidecar, no temp file
    assert (home / "inbox" / "d.jsonl").read_text() == '{"text": "earlier"}\n'
    (home / "inbox" / "d.toml").write_text("lora_r = 8\n")  # any destination taken: still nothing moves
    (home / "inbox" / "d.jsonl").unlink()
    res = overnight("add", str(tmp_path / "d.jsonl"), "--sidecar", str(tmp_path / "opts.toml"), home=home)
    assert res.returncode == 1 and "d.toml already exists" in res.stderr
    assert sorted(p.name for p in (home / "inbox").iterdir()) == ["d.toml", "rejected"]


def test_status_without_daemon_says_how_to_start_one(home):
    res = overnight("status", home=home, check=True)
    assert f"daemon: not running (start it with: overnight daemon --home {home})" in res.stdout  # not the cwd's home
    assert json.loads(overnight("status", "--json", home=home, check=True).stdout)["daemon"] is None


def test_logs_whole_last_n_and_unknown_run(home):
    (_run(home, "talk-20260101-000000") / "console.log").write_text("".join(f"line {i}\n" for i in range(1, 6)))
    assert overnight("logs", "talk", home=home, check=True).stdout.splitlines() == [f"line {i}" for i in range(1, 6)]
    assert overnight("logs", "talk", "-n", "2", home=home, check=True).stdout.splitlines() == ["line 4", "line 5"]
    res = overnight("logs", "nope", home=home)
    assert res.returncode != 0 and "no run matches 'nope'" in res.stderr


def _lines_of(proc: subprocess.Popen) -> queue.Queue:
    """The process's stdout lines, read on a thread so that a test can wait with a timeout."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_logs_follow_prints_lines_as_they_are_appended_until_the_run_ends(home):
    log = _run(home, "talk-20260101-000000", state="training") / "console.log"
    log.write_text("old 1\nold 2\n")
    proc = subprocess.Popen([sys.executable, "-m", "daemon", "logs", "talk", "-f", "-n", "1", "--home", str(home)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = _lines_of(proc)
        assert lines.get(timeout=60) == "old 2"
        time.sleep(0.5)  # the follower starts from the end it finds, just after printing the tail
        with log.open("a") as f:
            f.write("new 1\nnew 2\n")
        assert [lines.get(timeout=10), lines.get(timeout=10)] == ["new 1", "new 2"]
        assert proc.poll() is None  # -f keeps following while the run goes on
        with log.open("a") as f:  # the footer lands, then the daemon records the end: the follower ends with it
            f.write("=== end: completed ===\n")
        store = Store(home / "overnight.db")
        store.set_state("talk-20260101-000000", "completed")
        store.close()
        assert lines.get(timeout=10) == "=== end: completed ==="
        assert proc.wait(10) == 0
        assert "talk-20260101-000000 completed: nothing more to follow" in proc.stderr.read()
    finally:
        proc.terminate()
        proc.wait(10)


def test_runs_and_models_write_losses_and_times_as_the_dashboard_does(home):
    _run(home, "talk-20260101-000000", loss=1.234567, eval_loss=12.34567, step=50, max_steps=200, state="training",
         eta_s=361.0, base_model="/m/tiny")
    table = overnight("runs", home=home, check=True).stdout.splitlines()
    assert table[0].split() == ["RUN", "STATE", "GPU", "PRIO", "STEP", "LOSS", "EVAL", "ETA", "MODEL"]
    # no daemon: the row is what it last recorded, no ETA counting down (fmt_duration says 6m01s while one runs)
    assert table[1].split() == ["talk-20260101-000000", "training", "CPU", "0", "50/200", "1.235", "12.35", "-",
                                "tiny"]
    store = Store(home / "overnight.db")
    store.add_model({"name": "talk", "run_id": "talk-20260101-000000", "base_model": "/m/tiny",
                     "metrics": {"final_loss": 0.0123456}})
    store.close()
    assert overnight("models", home=home, check=True).stdout.strip() == \
        "* talk v1  run talk-20260101-000000  base tiny  loss 0.01235"


def _evolution(run_dir: Path) -> None:
    """Two probes over two snapshots: probe 0 learned at step 60, probe 1 never."""
    records = [(0, 0, "apple", 6.2913), (60, 0, "river stone apple", 3.8), (0, 1, "x", 6.5), (60, 1, "y", 4.1)]
    (run_dir / "evolution.jsonl").write_text("".join(json.dumps(
        {"step": step, "probe": probe, "prompt": f"reverse: probe {probe}", "reference": "river stone apple",
         "generation": gen, "loss": loss, "exact": gen == "river stone apple", "similarity": 0.2}) + "\n"
        for step, probe, gen, loss in records))


def test_evolution_text_and_json(home):
    _evolution(_run(home, "rev-20260101-000000"))
    text = overnight("evolution", "rev", home=home, check=True).stdout
    assert text.startswith("rev-20260101-000000 (completed)\n")
    assert "probe 0  LEARNED  (learned at step 60)" in text and "probe 1  NOT LEARNED" in text
    assert '"river stone apple"' in text and text.rstrip().endswith("1/2 learned, 2 snapshots, latest step 60")
    data = json.loads(overnight("evolution", "rev", "--json", home=home, check=True).stdout)
    assert data["run"] == "rev-20260101-000000" and (data["learned"], data["total"]) == (1, 2)
    assert data["probes"][0]["events"] == [{"event": "learned", "step": 60}]
    none = overnight("evolution", "nope", home=home)
    assert none.returncode != 0 and "no run matches 'nope'" in none.stderr


def test_steering_without_daemon_writes_the_file_and_says_so(home):
    res = overnight("pause", home=home, check=True)
    assert list((home / "control").glob("pause.*")) and "no daemon is running" in res.stdout


@pytest.mark.parametrize(("name", "fix"), [(".notes.jsonl", "notes.jsonl"), ("build.error.txt", "build.txt"),
                                           ("data.jsonl.part", "data.jsonl"), ("x.tmp", "x.jsonl")])
def test_add_refuses_a_name_the_inbox_would_never_take(home, tmp_path, name, fix):
    """A hidden file or an .error.txt would sit in the inbox forever, taken by nothing: add says so instead."""
    src = tmp_path / name
    src.write_text('{"prompt": "a", "completion": "b"}\n')
    res = overnight("add", str(src), home=home)
    assert res.returncode == 1 and "the inbox never takes this name" in res.stderr and f"e.g. {fix}" in res.stderr
    assert [p.name for p in (home / "inbox").iterdir()] == ["rejected"]
    checked = overnight("check", str(src), home=home).stdout  # check says it too
    assert "the inbox never takes this name" in checked and f"drop it as {fix}" in checked


def test_a_command_that_cannot_be_written_is_one_line_and_leaves_no_temp_file(home, monkeypatch):
    """A full disk: `overnight pause` printed a traceback and left control/.pause.….tmp behind."""
    import errno

    from click.testing import CliRunner

    from daemon.client.cli import main
    from daemon.core import control

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(control.os, "replace", full)
    res = CliRunner().invoke(main, ["pause", "--home", str(home)])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert "(No space left on device): the command was not sent. Fix: free space" in res.output, res.output
    assert [p.name for p in (home / "control").iterdir() if p.is_file()] == []
