"""The daemon's view of a trainer: the ETA it shows in status and the dashboard, and which stop request stands."""
from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from daemon.engine import runner
from daemon.engine.executors.local import LocalJob
from daemon.engine.runner import TrainerProcess


def test_eta_counts_only_the_pace_of_training_steps(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clock = [100.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    t = TrainerProcess("r", tmp_path, job=None)  # type: ignore[arg-type]
    assert t._eta(168, 2000, training=False) is None  # loading the model after a resume: no pace yet
    clock[0] += 30  # setup time must not count as step time
    assert t._eta(168, 2000, training=True) is None
    clock[0] += 40
    assert t._eta(170, 2000, training=True) is None  # the first steps' one-off costs (probes, warm-up) are no pace
    clock[0] += 8
    assert t._eta(178, 2000, training=True) == pytest.approx(1822.0)  # 1 s a step, 1822 steps left
    assert t._eta(178, 2000, training=False) is None  # paused
    clock[0] += 600
    assert t._eta(178, 2000, training=True) is None  # the pause is not step time either
    clock[0] += 2
    assert t._eta(180, 2000, training=True) is None
    clock[0] += 2
    assert t._eta(182, 2000, training=True) == pytest.approx(1818.0)


# The rule written out pair by pair (not re-derived): the first request stands, except that a user's stop or skip
# outranks a preemption or a shutdown.
STANDS = {
    (None, "stop"): "stop", (None, "skip"): "skip", (None, "preempt"): "preempt", (None, "shutdown"): "shutdown",
    ("stop", "stop"): "stop", ("stop", "skip"): "stop", ("stop", "preempt"): "stop", ("stop", "shutdown"): "stop",
    ("skip", "stop"): "skip", ("skip", "skip"): "skip", ("skip", "preempt"): "skip", ("skip", "shutdown"): "skip",
    ("preempt", "stop"): "stop", ("preempt", "skip"): "skip", ("preempt", "preempt"): "preempt",
    ("preempt", "shutdown"): "preempt",
    ("shutdown", "stop"): "stop", ("shutdown", "skip"): "skip", ("shutdown", "preempt"): "shutdown",
    ("shutdown", "shutdown"): "shutdown",
}


@pytest.mark.parametrize("current, reason", sorted(STANDS, key=str))
def test_which_stop_request_stands(current: str | None, reason: str) -> None:
    assert runner.stop_request(current, reason) == STANDS[current, reason]


def test_every_pair_of_requests_is_in_the_table() -> None:
    kinds = ("stop", "skip", "preempt", "shutdown")
    assert set(STANDS) == {(c, r) for c in (None, *kinds) for r in kinds}


def test_the_trainer_is_told_once_and_keeps_the_request_in_force(tmp_path: Path) -> None:
    pipe = io.BytesIO()
    t = TrainerProcess("r", tmp_path, job=LocalJob(SimpleNamespace(stdin=pipe)))  # type: ignore[arg-type]
    assert t.request_stop("shutdown") == "shutdown"
    assert pipe.getvalue() == b"shutdown\n"  # why: the trainer's footer says how the run ends (a stop wakes it)
    assert t.request_stop("skip") == "skip" and t.requested == "skip"  # the user's skip outranks the shutdown
    assert t.request_stop("stop") == "skip"
    assert pipe.getvalue() == b"shutdown\n"  # already stopping: nothing more to say to it


def test_a_restarted_trainer_before_training_keeps_the_runs_known_total(tmp_path: Path) -> None:
    """progress.json of a trainer still loading has its step (the checkpoint's) but no total yet: 5/20 stays 5/20."""
    import json

    from daemon.engine.store import Store

    (tmp_path / "progress.json").write_text(json.dumps({"state": "preparing", "step": 5, "max_steps": None}))
    t = TrainerProcess("r", tmp_path, job=SimpleNamespace(pid=None, poll=lambda: None))  # type: ignore[arg-type]
    store = Store(tmp_path / "overnight.db")
    try:
        fields = t.ingest(store)
    finally:
        store.close()
    assert fields["step"] == 5 and "max_steps" not in fields
    (tmp_path / "progress.json").write_text(json.dumps({"state": "training", "step": 6, "max_steps": 20}))
    store = Store(tmp_path / "overnight.db")
    try:
        assert t.ingest(store)["max_steps"] == 20
    finally:
        store.close()


def test_a_paused_run_has_no_eta_and_its_step_is_the_newest_logged_loss(tmp_path: Path) -> None:
    """A pause blanks the ETA (a frozen one reads as time left); the step shown is never older than the loss shown."""
    import json

    from daemon.engine.store import Store

    t = TrainerProcess("r", tmp_path, job=SimpleNamespace(pid=None, poll=lambda: None))  # type: ignore[arg-type]
    store = Store(tmp_path / "overnight.db")
    try:
        for step in (0, 1, 2):  # step 1's time (the step-0 probes, warm-up) is not the pace
            (tmp_path / "progress.json").write_text(json.dumps({"state": "training", "step": step, "max_steps": 20}))
            fields = t.ingest(store)
            assert (fields.get("eta_s") is None) == (step < 2)
        (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 4.5}) + "\n")
        (tmp_path / "progress.json").write_text(json.dumps({"state": "paused", "step": 2, "max_steps": 20}))
        fields = t.ingest(store)
    finally:
        store.close()
    assert fields["eta_s"] is None and fields["step"] == 3 and fields["loss"] == 4.5


def test_an_ended_run_takes_its_eval_loss_loss_and_average_speed_from_result_json(tmp_path: Path) -> None:
    """After early stopping the adapter is the best checkpoint's: the row (which compare, metadata.json and select =
    "best" read) takes that eval loss, not the last eval's; its tokens/s is the run's average, not the last
    interval's."""
    import json

    from daemon.engine.store import Store

    lines = [{"step": 2, "loss": 3.0, "tokens_per_s": 900.0}, {"step": 2, "eval_loss": 2.5},
             {"step": 4, "loss": 2.0, "tokens_per_s": 9000.0}, {"step": 4, "eval_loss": 2.9}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    exited: list[int | None] = [None]
    t = TrainerProcess("r", tmp_path, job=SimpleNamespace(pid=None, poll=lambda: exited[0]))  # type: ignore[arg-type]
    store = Store(tmp_path / "overnight.db")
    try:
        live = t.ingest(store)
        assert (live["eval_loss"], live["tokens_per_s"]) == (2.9, 9000.0)  # while it trains: the latest
        (tmp_path / "result.json").write_text(json.dumps({"outcome": "completed", "final_loss": 2.0, "eval_loss": 2.5,
                                                          "tokens_seen": 12000, "train_seconds": 10.0}))
        exited[0] = 0
        ended = t.ingest(store)
    finally:
        store.close()
    assert (ended["eval_loss"], ended["loss"], ended["tokens_per_s"]) == (2.5, 2.0, 1200.0)
