"""Steering a running appliance: control files and CLI against the real daemon, trainer and tiny model."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from daemon.core.queries import Reader
from tests.conftest import REFERENCE_STEPS, DaemonProcess, budget, overnight, wait_until

pytestmark = pytest.mark.e2e

STEPS = REFERENCE_STEPS  # every interrupted run of this length is compared with the session's reference_run
WORDS = ["apple", "stone", "river", "green", "music", "horse", "bread", "moon"]


def write_dataset(tmp: Path, name: str, steps: int, **extra: object) -> list[Path]:
    """A small prompt/completion task and a sidecar: log every step, checkpoint every 5, no probes."""
    import random
    rng = random.Random(0)
    rows = []
    for _ in range(200):
        w = [rng.choice(WORDS) for _ in range(3)]
        rows.append(json.dumps({"prompt": "reverse: " + " ".join(w) + "\n", "completion": " ".join(w[::-1])}))
    data = tmp / f"{name}.jsonl"
    data.write_text("\n".join(rows) + "\n")
    opts = {"max_steps": steps, "batch_size": 4, "max_length": 32, "lora_r": 8, "lora_alpha": 16,
            "learning_rate": 3e-3, "log_every": 1, "save_every": 5, "probe_count": 0, "eval_fraction": 0.0,
            "seed": 7, **extra}
    side = tmp / f"{name}.toml"
    side.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in opts.items()))
    return [side, data]


def test_the_shared_reference_is_this_files_drop(tmp_path):
    """reference_run trains bench/kill_loop.py's drop: the runs compared with it must be the same bytes."""
    from bench import kill_loop
    ours = write_dataset(tmp_path, "ref", STEPS)
    theirs = kill_loop.write_drop(tmp_path / "bench", "ref", STEPS)
    assert [f.read_bytes() for f in ours] == [f.read_bytes() for f in theirs]


def drop_all(files: list[Path], inbox: Path) -> None:
    for f in files:  # sidecar first, then the dataset, each by rename
        os.rename(f, inbox / f.name)


def run_of(home: Path, name: str) -> dict | None:
    r = Reader(home / "overnight.db")
    try:
        return r.find_run(name)
    finally:
        r.close()


def _events(home: Path) -> list[dict]:
    r = Reader(home / "overnight.db")
    try:
        return r.control_events()
    finally:
        r.close()


def state(home: Path, name: str) -> str | None:
    run = run_of(home, name)
    return run and run["state"]


def losses(home: Path, name: str) -> dict[int, float]:
    run = run_of(home, name)
    recs = [json.loads(x) for x in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    out = {r["step"]: r["loss"] for r in recs if r.get("loss") is not None}
    assert len(out) == len([r for r in recs if r.get("loss") is not None]), "a step was recorded twice"
    return out


def progress_step(home: Path, name: str) -> int:
    run = run_of(home, name)
    p = Path(run["run_dir"]) / "progress.json" if run else None
    return (json.loads(p.read_text()).get("step") or 0) if p and p.exists() else 0


@pytest.fixture
def model_home(home, tiny_model):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    return home


def test_pause_resume_skip_by_file_and_cli(model_home, daemon_proc, tmp_path):
    home = model_home
    daemon_proc()
    drop_all(write_dataset(tmp_path, "long", 5000), home / "inbox")
    drop_all(write_dataset(tmp_path, "next", 6), home / "inbox")
    wait_until(lambda: state(home, "long") == "training" and progress_step(home, "long") >= 2, 90, what="training")

    (home / "control" / "pause").touch()
    wait_until(lambda: state(home, "long") == "paused", 15, what="paused")
    frozen = progress_step(home, "long")
    time.sleep(3)
    assert progress_step(home, "long") == frozen
    (home / "control" / "pause").unlink()
    wait_until(lambda: state(home, "long") == "training" and progress_step(home, "long") > frozen, 15, what="resumed")

    out = overnight("pause", "--wait", "60", home=home, check=True).stdout
    assert "applied" in out and "pause" in out
    wait_until(lambda: state(home, "long") == "paused", 15, what="paused by CLI")
    overnight("resume", home=home, check=True)
    wait_until(lambda: state(home, "long") == "training", 15, what="resumed by CLI")

    overnight("skip", home=home, check=True)
    wait_until(lambda: state(home, "long") == "skipped", 30, what="skipped")
    run = run_of(home, "long")
    assert list((Path(run["run_dir"]) / "checkpoints").glob("step-*")), "skip checkpoints first"
    wait_until(lambda: state(home, "next") == "completed", 90, what="the queue goes on")
    console = (Path(run["run_dir"]) / "console.log").read_text()
    assert "control: pause" in console and "control: skip" in console
    assert "=== end: skipped (skip requested), exit code 0" in console  # the footer says how the run ended
    assert "command received: stop" not in console
    assert any("-skip." in p.name for p in (home / "control" / "done").iterdir())  # the CLI's skip.ID
    status = json.loads(overnight("status", "--json", home=home, check=True).stdout)
    assert {e["command"] for e in status["control_events"]} >= {"skip", "resume"}


def test_stop_resume_and_preemption_give_the_uninterrupted_losses(model_home, daemon_proc, tmp_path,
                                                                   reference_run):
    home = model_home
    reference = reference_run.losses
    daemon_proc()

    drop_all(write_dataset(tmp_path, "stopme", STEPS), home / "inbox")
    wait_until(lambda: progress_step(home, "stopme") >= 8, 90, what="stopme training")
    rid = run_of(home, "stopme")["id"]
    (home / "control" / "stop").write_text(rid + "\n")
    wait_until(lambda: state(home, "stopme") == "stopped", 30, what="stopped")
    assert not (home / "control" / "stop").exists()  # a stop naming a run is consumed
    overnight("resume", rid, home=home, check=True)
    wait_until(lambda: state(home, "stopme") == "completed", 120, what="resumed run completes")
    assert losses(home, "stopme") == reference

    drop_all(write_dataset(tmp_path, "low", STEPS), home / "inbox")
    wait_until(lambda: progress_step(home, "low") >= 8, 90, what="low training")
    # The tiny model finishes 30 steps in seconds: hold "low" mid-run (a pause naming it) so that the
    # preemption below always finds it unfinished. A paused run is preempted like a training one.
    low_id = run_of(home, "low")["id"]
    (home / "control" / "pause").write_text(low_id + "\n")
    wait_until(lambda: state(home, "low") == "paused", 30, what="low paused")
    drop_all(write_dataset(tmp_path, "urgent", 6), home / "inbox")
    wait_until(lambda: state(home, "urgent") == "queued", 30)
    overnight("priority", "urgent", "10", home=home, check=True)
    wait_until(lambda: state(home, "low") == "queued", 30, what="low preempted")
    # a pause naming low holds only low: urgent trains to its end while control/pause still exists
    wait_until(lambda: state(home, "urgent") == "completed", 120, what="urgent completes under low's pause")
    (home / "control" / "pause").unlink()
    wait_until(lambda: state(home, "low") == "completed", 120, what="low resumes and completes")
    assert losses(home, "low") == reference
    low = run_of(home, "low")
    assert low["attempts"] == 1  # it resumed from the checkpoint its preemption wrote: a new series
    low_console = (Path(low["run_dir"]) / "console.log").read_text()
    assert "=== end: queued again, to resume from its last checkpoint (preempt requested)" in low_console
    r = Reader(home / "overnight.db")
    assert [t["to_state"] for t in r.transitions(low["id"])].count("queued") == 2


def test_sigterm_and_kill9_recover_with_identical_losses(model_home, tmp_path, reference_run):
    home = model_home
    reference = reference_run.losses
    d = DaemonProcess(home)

    drop_all(write_dataset(tmp_path, "term", STEPS), home / "inbox")
    wait_until(lambda: progress_step(home, "term") >= 6, 90, what="term training")
    assert d.stop(signal.SIGTERM) == 0
    assert state(home, "term") == "queued"
    d = DaemonProcess(home)
    wait_until(lambda: state(home, "term") == "completed", 120, what="term completes after restart")
    assert losses(home, "term") == reference

    drop_all(write_dataset(tmp_path, "crash", STEPS), home / "inbox")
    wait_until(lambda: progress_step(home, "crash") >= 12, 90, what="crash training")
    d.proc.kill()
    d.proc.wait()
    d = DaemonProcess(home)  # waits for the orphaned trainer to checkpoint, then resumes
    wait_until(lambda: state(home, "crash") == "completed", 180, what="crash completes after kill -9")
    assert losses(home, "crash") == reference

    drop_all(write_dataset(tmp_path, "oom", STEPS), home / "inbox")
    wait_until(lambda: progress_step(home, "oom") >= 12, 90, what="oom training")
    os.kill(run_of(home, "oom")["pid"], signal.SIGKILL)
    wait_until(lambda: state(home, "oom") == "completed", 180, what="trainer kill -9: resumed and completed")
    assert losses(home, "oom") == reference
    assert "SIGKILL" in (Path(run_of(home, "oom")["run_dir"]) / "console.log").read_text()
    assert d.stop() == 0


def test_garbage_and_unknown_targets_are_rejected(model_home, daemon_proc):
    home = model_home
    daemon_proc()
    (home / "control" / "launch-rockets").write_text("now")
    (home / "control" / "priority").write_text("no-such-run 5\n")
    rej = home / "control" / "rejected"
    wait_until(lambda: len(list(rej.glob("*.error.txt"))) == 2, 15, what="two rejections")
    texts = " ".join(p.read_text() for p in rej.glob("*.error.txt"))
    assert "unknown control file" in texts and "no-such-run" in texts
    # the daemon moves a rejected file first and records the rejection after
    wait_until(lambda: len(_events(home)) >= 2, 15, what="two rejections recorded")
    assert [e["status"] for e in _events(home)] == ["rejected", "rejected"]
    out = overnight("pause", "--wait", "60", home=home, check=True).stdout  # nothing runs: still acknowledged, and held
    assert "applied" in out and "no job is running" in out and (home / "control" / "pause").exists()


def test_a_held_control_file_and_a_waiting_sidecar_leave_the_daemon_idle(home, daemon_proc):
    """Files the daemon reads on every pass (control/stop held, a sidecar waiting) must not keep waking it."""
    import psutil

    (home / "control" / "stop").touch()
    (home / "control" / "pause").touch()
    (home / "inbox" / "later.toml").write_text("learning_rate = 1e-4\n")
    d = daemon_proc()
    # measured once the daemon has answered all three files: its start-up work is done, what is left is the loop
    wait_until(lambda: "waits for its dataset" in (home / "overnight.log").read_text(), 15, what="sidecar waits")
    wait_until(lambda: {e["command"] for e in _events(home)} >= {"stop", "pause"}, 15, what="stop and pause held")
    proc = psutil.Process(d.proc.pid)
    before = sum(proc.cpu_times()[:2])
    time.sleep(4)  # a loop woken by its own reads of these files would spin through all of it
    busy = sum(proc.cpu_times()[:2]) - before
    assert busy < budget(0.8), f"an idle daemon used {busy:.2f} s of CPU in 4 s"
