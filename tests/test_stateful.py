"""A seeded random driver over the whole appliance: drops, pause, resume, skip, priority, stop, daemon restarts
(SIGTERM and kill -9) and trainer kills, with invariants checked after every action, then everything resumed to
the end. Real daemon, real trainer, tiny model.

The scenario is fixed (seed SEED), so a run in CI plays the same actions every time. OVERNIGHT_STATEFUL_SEED
explores: `OVERNIGHT_STATEFUL_SEED=random` draws a new scenario, a number plays that one. A failure prints its seed
and the actions taken; replay it with `OVERNIGHT_STATEFUL_SEED=<seed> pytest tests/test_stateful.py`. (The moments
at which the actions land still depend on the machine: a scenario replays the same actions, not the same timing.)"""
from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from daemon.core.queries import Reader
from daemon.engine.runner import trainer_processes
from tests.conftest import DaemonProcess, overnight, wait_until
from tests.test_control_e2e import STEPS, losses, write_dataset

pytestmark = pytest.mark.e2e

ACTIVE = {"preparing", "training", "paused"}
ENDED = {"completed", "failed", "stopped", "skipped"}
# The spec's run state machine: every transition the DB may record.
ALLOWED = ({(None, "queued"), ("queued", "preparing"), ("preparing", "training"), ("preparing", "paused"),
            ("training", "paused"), ("paused", "training")}
           | {(a, b) for a in ACTIVE for b in ENDED | {"queued"}}
           | {("queued", b) for b in ("stopped", "skipped", "failed")}
           | {(a, "queued") for a in ("stopped", "skipped", "failed")})


def _runs(home: Path) -> list[dict]:
    r = Reader(home / "overnight.db")
    try:
        return [{**run, "transitions": r.transitions(run["id"])} for run in r.runs()]
    finally:
        r.close()


def _trainers(home: Path) -> list[int]:
    return list(trainer_processes(home / "runs"))


def check_invariants(home: Path, dropped: list[str], settled: bool = False) -> None:
    """At most one trainer, transitions only along the state machine; once settled, every dropped file in
    exactly one place (while intake moves a file it may be in two for a moment)."""
    assert len(_trainers(home)) <= 1, "two trainers on one home"
    for name in dropped if settled else ():
        places = [p for p in [home / "inbox" / name, home / "inbox" / "rejected" / name,
                              *(home / "runs").glob(f"[!.]*/dataset/{name}")] if p.exists()]
        assert len(places) == 1, f"{name} is in {places}"
    for run in _runs(home):
        seen = [(t["from_state"], t["to_state"]) for t in run["transitions"]]
        assert all(pair in ALLOWED for pair in seen), f"{run['id']}: {seen}"


SEED = 57  # its 16 actions include every kind (checked below)
ACTIONS = ["add", "add", "pause", "resume", "skip", "priority", "stop", "restart", "kill9", "kill_trainer", "wait"]


def _plan(seed: int, steps: int = 16) -> list[str]:
    """The night's actions, in order."""
    rng = random.Random(seed)
    return [rng.choice(ACTIONS) for _ in range(steps)]


def scenario_seed(value: str | None) -> int:
    """OVERNIGHT_STATEFUL_SEED: unset or empty → SEED; "random" → a new seed; a number → that seed."""
    if not value:
        return SEED
    if value.strip().lower() == "random":
        return random.SystemRandom().randrange(10**6)
    return int(value)


def test_the_scenario_is_fixed_unless_asked_to_explore() -> None:
    assert scenario_seed(None) == scenario_seed("") == SEED
    assert scenario_seed("42") == 42
    assert len({scenario_seed("random") for _ in range(5)}) > 1
    assert _plan(SEED) == _plan(SEED) and set(_plan(SEED)) == set(ACTIONS)  # the fixed night tries everything


def test_a_random_night_loses_nothing_and_trains_exactly(home: Path, tiny_model: Path, tmp_path: Path) -> None:
    seed = scenario_seed(os.environ.get("OVERNIGHT_STATEFUL_SEED"))
    replay = f"seed {seed} (replay: OVERNIGHT_STATEFUL_SEED={seed} pytest tests/test_stateful.py)"
    # the actions are drawn first, so a seed always plays the same ones; targets and pauses depend on what is
    # live when each action comes, and draw from a generator of their own
    plan = _plan(seed)
    rng = random.Random(f"{seed} targets")
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    d = DaemonProcess(home)
    dropped: list[str] = []

    def name_of_live() -> str | None:
        live = [r["id"] for r in _runs(home) if r["state"] not in ENDED]
        return rng.choice(live) if live else None

    def act(action: str) -> str:
        nonlocal d
        target = name_of_live()
        if action == "add" or not dropped:
            name = f"d{len(dropped)}"
            src = tmp_path / f"drop{len(dropped)}"
            src.mkdir()
            files = write_dataset(src, name, STEPS)
            for f in files:
                os.rename(f, home / "inbox" / f.name)
            dropped.append(f"{name}.jsonl")
            return f"add {name}"
        if action in ("pause", "skip", "stop") and target:
            overnight(action, target, home=home)
        elif action == "resume":
            ended = [r["id"] for r in _runs(home) if r["state"] in ("stopped", "skipped")]
            overnight("resume", *([rng.choice(ended)] if ended and rng.random() < 0.5 else []), home=home)
        elif action == "priority" and target:
            overnight("priority", target, str(rng.randrange(-3, 4)), home=home)
        elif action in ("restart", "kill9"):
            d.stop(signal.SIGTERM if action == "restart" else signal.SIGKILL)
            d = DaemonProcess(home)
        elif action == "kill_trainer":
            for pid in _trainers(home):
                os.kill(pid, signal.SIGKILL)
        time.sleep(rng.uniform(0.2, 1.5))
        return f"{action} {target or ''}"

    said: list[str] = []
    try:
        for action in plan:
            said.append(act(action))
            check_invariants(home, dropped)
        # the morning: lift every hold, resume every run that was stopped or skipped, let the queue drain
        for held in ("pause", "stop"):
            (home / "control" / held).unlink(missing_ok=True)
        overnight("resume", home=home)
        for _ in range(2):  # a run killed more than its bounded retries fails: the owner resumes it too
            for run in _runs(home):
                if run["state"] in ("stopped", "skipped", "failed"):
                    overnight("resume", run["id"], home=home)
            wait_until(lambda: len(_runs(home)) == len(dropped) and all(r["state"] in ENDED for r in _runs(home)),
                       300, what="every run ended")
        check_invariants(home, dropped, settled=True)
        runs = _runs(home)
        assert len(runs) == len(dropped), "a drop was lost"
        done = [r for r in runs if r["state"] == "completed"]
        assert done, [(r["id"], r["state"], r["reason"]) for r in runs]
        reference = losses(home, done[0]["name"])
        assert sorted(reference) == list(range(1, STEPS + 1))
        for r in done:  # every completed run trained exactly like an uninterrupted one
            assert losses(home, r["name"]) == reference, r["id"]
        failed = [(r["id"], r["reason"]) for r in runs if r["state"] == "failed"]
        assert not failed, failed
    except BaseException as e:  # a timeout or a CLI that hung is a failure to replay too
        print(replay)
        print("actions:", "; ".join(said))
        e.add_note(f"{replay}; actions: {'; '.join(said)}")
        raise
    finally:
        d.stop()
