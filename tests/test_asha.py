"""ASHA pruning (`prune = "asha"`): the rung rule, and a sweep through the real daemon whose worse trials end pruned
at the rung, resumable, while the best trains to the end and is selected."""
from __future__ import annotations

import json
import sqlite3

import pytest

from daemon.core import asha
from daemon.core.asha import Decision, Trial
from daemon.core.states import Outcome, State
from daemon.engine.endstate import TrainerExit, end_state
from tests.conftest import overnight
from tests.test_sweep import PROMPTS


# ----------------------------------------------------------------------------------------------- the rule

@pytest.mark.parametrize("total, eta, rungs, min_steps, steps", [
    (90, 3, 2, None, [10, 30]),  # 1/9 and 1/3 of the steps
    (12, 3, 1, None, [4]),
    (100, 2, 3, None, [12, 25, 50]),
    (100, 3, 3, 5, [5, 15, 45]),  # min_steps: the first rung, then η times further
    (20, 3, 3, 5, [5, 15]),  # a rung at or past the end is no rung
    (3, 3, 2, None, [1]),  # too short for two distinct rungs
])
def test_rungs_sit_at_shares_of_each_trials_steps(total, eta, rungs, min_steps, steps):
    assert asha.rung_steps(total, eta, rungs, min_steps) == steps


def _trial(i: int, live: bool = True, waiting: int | None = None, **results: float) -> Trial:
    return Trial(f"t{i}", i, live, {int(k[1:]): v for k, v in results.items()}, waiting)


def test_of_three_trials_at_a_rung_the_best_goes_on_each_decided_as_soon_as_it_is_certain():
    # two of three at rung 1: the second is below the quota (1 of 3) already; the first may still be beaten
    trials = [_trial(1, waiting=0, r0=1.0), _trial(2, waiting=0, r0=2.0), _trial(3)]
    assert [(v.run_id, v.decision, v.place, v.reached, v.goes_on) for v in asha.decide(trials, 3)] == [
        ("t2", Decision.PRUNED, 2, 3, 1)]
    # the third arrives, worse: the first goes on, the third is pruned
    trials[1:] = [_trial(2, live=False, r0=2.0), _trial(3, waiting=0, r0=3.0)]
    verdicts = {v.run_id: v.decision for v in asha.decide(trials, 3)}
    assert verdicts == {"t1": Decision.PROMOTED, "t3": Decision.PRUNED}


def test_a_trial_goes_on_early_only_when_no_trial_still_on_its_way_could_push_it_out():
    trials = [_trial(1, waiting=0, r0=2.0), _trial(2, waiting=0, r0=1.0), _trial(3, waiting=0, r0=3.0),
              _trial(4, waiting=0, r0=2.5), _trial(5, waiting=0, r0=4.0), _trial(6), _trial(7), _trial(8), _trial(9)]
    verdicts = {v.run_id: (v.decision, v.place) for v in asha.decide(trials, 3)}
    # 9 can reach the rung: 3 go on; t2 (1st) and t1 (2nd) may still fall behind the four on their way
    # and t4 (3rd) as well; t3 and t5 are out already: whatever arrives, they stay below the third place
    assert verdicts == {"t3": (Decision.PRUNED, 4), "t5": (Decision.PRUNED, 5)}
    trials[5:] = [_trial(i, waiting=0, r0=5.0 + i) for i in range(6, 10)]  # the rest arrive, all worse
    verdicts = {v.run_id: v.decision for v in asha.decide(trials, 3)}
    assert [k for k, d in verdicts.items() if d == Decision.PROMOTED] == ["t1", "t2", "t4"]


def test_a_closed_rung_with_fewer_trials_than_eta_still_lets_the_best_go_on():
    trials = [_trial(1, waiting=0, r0=2.0), _trial(2, waiting=0, r0=1.0), _trial(3, live=False)]  # t3 failed
    verdicts = {v.run_id: v.decision for v in asha.decide(trials, 3)}
    assert verdicts == {"t2": Decision.PROMOTED, "t1": Decision.PRUNED}


def test_a_trial_held_at_a_higher_rung_waits_while_a_lower_one_may_still_be_promoted():
    trials = [_trial(1, waiting=1, r0=1.0, r1=0.5), _trial(2, waiting=0, r0=2.0), _trial(3, live=False, r0=3.0)]
    verdicts = {v.run_id: (v.decision, v.rung) for v in asha.decide(trials, 3)}
    assert verdicts == {"t2": (Decision.PRUNED, 0)}  # rung 0 closed: 3 reached it, the best one (t1) went on
    trials[1] = _trial(2, live=False, r0=2.0)  # pruned now: nobody else can reach rung 1
    assert [(v.run_id, v.decision) for v in asha.decide(trials, 3)] == [("t1", Decision.PROMOTED)]


def test_a_trial_stopped_at_its_rung_goes_back_to_the_queue_and_a_users_stop_still_wins():
    def exit_(request=None) -> TrainerExit:
        return TrainerExit(Outcome.STOPPED, request, 0, 0, False, "", reason=f"{asha.RUNG_STOP} 1 at step 3")
    assert end_state(exit_()) == (State.QUEUED, f"{asha.RUNG_STOP} 1 at step 3")
    from daemon.core.states import StopRequest
    assert end_state(exit_(StopRequest.STOP))[0] == State.STOPPED


@pytest.mark.parametrize("line, words", [
    ('prune = "hyperband"', ["prune", '"none", "asha"']),
    ("eta = 1", ["eta", "2 .. 100"]),
    ("prune_rungs = 0", ["prune_rungs", "1 .. 10"]),
    # rungs that all fall at or past the end of a trial would prune nothing
    ('prune = "asha"\nlearning_rate = [1e-3, 2e-3]\nmin_steps = 100\nmax_steps = 6',
     ["a trial of max_steps = 6 has none (min_steps = 100 puts the first rung at step 100)", "Fix: lower min_steps"]),
    ('prune = "asha"\nlearning_rate = [1e-3, 2e-3]\nmax_steps = [1, 90]',
     ["a trial of max_steps = 1 has none (2 rung(s) at eta = 3 leave no step before the end)"]),
    # a search of one trial has nothing to compare
    ('prune = "asha"\nsearch = "random"\ntrials = 1\nlearning_rate = {low = 1e-4, high = 1e-3}',
     ["compares the trials of a sweep, and this drop queues one run", "a search of 2 trials or more"]),
])
def test_bad_asha_settings_are_refused_with_the_allowed_values(tmp_path, line, words):
    (tmp_path / "x.toml").write_text(line + "\n")
    (tmp_path / "x.jsonl").write_text(PROMPTS)
    res = overnight("check", str(tmp_path / "x.jsonl"), home=tmp_path / "home")
    assert res.returncode == 1 and all(w in res.stdout + res.stderr for w in words), res.stdout + res.stderr


def test_asha_over_epochs_and_asha_for_every_drop_are_taken(tmp_path):
    """The README's ASHA sidecar has no max_steps (the trials train by epochs, the rungs are fractions of their
    steps), and prune = "asha" in overnight.toml is for the sweeps to come: neither is refused."""
    (tmp_path / "x.toml").write_text('learning_rate = [1e-4, 3e-4]\nprune = "asha"\neta = 3\nprune_rungs = 2\n')
    (tmp_path / "x.jsonl").write_text(PROMPTS)
    res = overnight("check", str(tmp_path / "x.jsonl"), home=tmp_path / "home")
    assert res.returncode == 0 and "2 runs" in res.stdout, res.stdout + res.stderr
    home = tmp_path / "owner"
    home.mkdir()
    (home / "overnight.toml").write_text('prune = "asha"\n')
    (tmp_path / "y.jsonl").write_text(PROMPTS)
    res = overnight("check", str(tmp_path / "y.jsonl"), home=home)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_trial_whose_steps_come_from_the_data_says_when_its_rungs_fall_past_its_end(monkeypatch):
    """max_steps unset: a trial's steps are known only in its trainer, which says that nothing will be pruned."""
    from types import SimpleNamespace

    from daemon.trainer.commands import Commands
    from daemon.trainer.rung import rung_callback

    said: list[str] = []
    monkeypatch.setenv(asha.RUNG_ENV, "0")
    options = {"prune": "asha", "eta": 3, "prune_rungs": 2, "min_steps": 50}
    for total in (20, 500):
        callback = rung_callback(options, Commands(), False, said.append)
        callback.on_train_begin(None, SimpleNamespace(max_steps=total), None)
    assert "first rung at or past this trial's 20 steps: it trains to its end and nothing is pruned" in said[0]
    assert said[1].startswith("ASHA: this trial trains to rung 1, step 50 of 500") and len(said) == 2


# ----------------------------------------------------------------------------------------------- the whole path

ASHA = ('learning_rate = [1e-5, 3e-3, 1e-4]\nprune = "asha"\neta = 3\nprune_rungs = 1\nselect = "best"\n'
        "max_steps = 9\nbatch_size = 4\nmax_length = 32\nlog_every = 1\nsave_every = 100\neval_fraction = 0.2\n"
        "probe_count = 0\n")


@pytest.mark.e2e
def test_an_asha_sweep_prunes_the_worse_trials_at_the_rung_and_the_best_trains_on(home, tiny_model):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "inbox" / "support.toml").write_text(ASHA)
    (home / "inbox" / "support.jsonl").write_text(PROMPTS)
    res = overnight("daemon", "--once", "--settle", "0.1", "--quiet", home=home, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:]
    runs = {r["id"]: r for r in json.loads(overnight("runs", "--json", home=home, check=True).stdout)}
    with sqlite3.connect(home / "overnight.db") as db:
        rungs = {r[0]: r[1:] for r in db.execute("SELECT run_id, step, metric, decision FROM rungs WHERE rung = 0")}
    assert set(rungs) == set(runs) and {step for step, _, _ in rungs.values()} == {3}  # 9 steps, η = 3: rung at 3
    best = min(rungs, key=lambda r: rungs[r][1])
    assert rungs[best][2] == "promoted" and runs[best]["state"] == "completed" and runs[best]["step"] == 9
    pruned = sorted(set(runs) - {best})
    for rid in pruned:
        assert runs[rid]["state"] == "pruned" and runs[rid]["step"] == 3, runs[rid]
        assert "pruned at ASHA rung 1: place" in runs[rid]["reason"] and "of 3, the best 1 go on" in runs[rid]["reason"]
        assert (home / "runs" / rid / "checkpoints" / "step-3").is_dir()  # kept: resumable
    models = json.loads(overnight("models", "--json", home=home, check=True).stdout)
    assert [m["run_id"] for m in models if m["active"]] == [best]  # select = "best": among the completed only
    shown = overnight("compare", runs[best]["group_id"], home=home, check=True).stdout
    assert "pruned" in shown and "r1@3" in shown and "✗" in shown, shown

    overnight("resume", pruned[0], "--wait", "0", home=home, check=True)
    res = overnight("daemon", "--once", "--settle", "0.1", "--quiet", home=home, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:]
    again = json.loads(overnight("runs", "--json", home=home, check=True).stdout)
    resumed = next(r for r in again if r["id"] == pruned[0])
    assert resumed["state"] == "completed" and resumed["step"] == 9, resumed  # trained to the end from step 3
    console = (home / "runs" / pruned[0] / "console.log").read_text()
    assert "resuming from step-3" in console


# ----------------------------------------------------------------------------------------------- the dashboard

ASHA_GROUP = "add-20260514-023000"
# a 4-trial ASHA sweep in progress: one trained to the end, one pruned at rung 2, one at rung 1, one waiting at rung 1
ASHA_TRIALS = [("add-lr1e-4-20260514-023000", "completed", ["promoted", "promoted"]),
               ("add-lr3e-4-20260514-023000", "pruned", ["promoted", "pruned"]),
               ("add-lr1e-3-20260514-023000", "pruned", ["pruned"]),
               ("add-lr3e-3-20260514-023000", "queued", ["waiting"])]


def test_the_dashboard_folds_an_asha_sweep_with_its_trials_at_each_rung(tmp_path):
    from daemon.engine.store import Store
    from tests.test_tui import app_for, cell_text, drive, loaded, until
    from tests.tui_fixtures import _insert, at, build_home, iso, write_run_folder
    from textual.widgets import DataTable

    fx = build_home(tmp_path / "home")
    store = Store(fx.home.db)
    try:
        for i, (run_id, state, rungs) in enumerate(ASHA_TRIALS):
            steps = {"completed": 54, "pruned": 6 * 3 ** (len(rungs) - 1)}.get(state, 6)
            _insert(store, fx.home, run_id, 7 + i, state, at(90), group_id=ASHA_GROUP, step=steps, max_steps=54,
                    started=iso(at(95)))
            store.db.execute("UPDATE runs SET name = 'add' WHERE id = ?", [run_id])
            for k, decision in enumerate(rungs):
                store.record_rung(run_id, k, 6 * 3 ** k, 2.0 - i / 10, decision)
            write_run_folder(fx.home, run_id, steps, 54, state, at(95), footer=f"run ended: {state}")
    finally:
        store.close()
    app = app_for(fx.root)
    group_key = f"group:{ASHA_GROUP}"

    async def body(pilot) -> None:
        await loaded(pilot)
        table = app.query_one("#runs", DataTable)
        await until(pilot, lambda: group_key in [r.value for r in table.rows], what="the sweep's row")
        assert cell_text(table, group_key, "run").endswith("×4 4→2→1"), cell_text(table, group_key, "run")
        table.move_cursor(row=table.get_row_index(group_key))
        await pilot.press("enter")
        await until(pilot, lambda: table.row_count > 7, what="unfolded")
        states = [cell_text(table, run_id, "state") for run_id, _, _ in ASHA_TRIALS]
        assert states == ["completed", "pruned", "pruned", "at rung"]
    drive(app, body, size=(120, 30))
