"""Search sweeps (`search = "tpe" | "random"`): ranges checked with the fix, trials drawn by Optuna as each run
starts, told when it ends, and a daemon killed mid-study that continues it with no trial lost or drawn twice."""
from __future__ import annotations

import json
import signal

import optuna
import pytest

from daemon.core.runconfig import RunConfig
from daemon.engine import search as studies
from tests.conftest import overnight, wait_until
from tests.test_sweep import PROMPTS


@pytest.mark.parametrize("lines, words", [
    ('search = "tpe"\ntrials = 4\nlearning_rate = {low = 1e-3, high = 1e-5}', ["low (0.001) is above high", "swap"]),
    ('search = "tpe"\ntrials = 4\nlearning_rate = {low = 0.0, high = 1e-3, log = true}',
     ["learning_rate", "allowed"]),  # 0 is no learning rate at all
    ('search = "tpe"\ntrials = 4\nwarmup_ratio = {low = 0.0, high = 0.2, log = true}', ["log range needs low > 0"]),
    ('search = "tpe"\ntrials = 4\nlora_r = {low = 4, hi = 8}', ["has hi", "a range takes low, high"]),
    ('search = "tpe"\ntrials = 4\nbogus = {low = 1, high = 2}', ["unknown option 'bogus'"]),
    ('search = "tpe"\ntrials = 4\nlora_r = {choices = []}', ["choices stand alone, as a non-empty list"]),
    ('learning_rate = {low = 1e-5, high = 1e-3}', ["only a search draws from", 'search = "tpe"']),
    ('search = "tpe"\nlearning_rate = {low = 1e-5, high = 1e-3}', ["needs trials = N"]),
    ('search = "tpe"\ntrials = 4', ["has nothing to search"]),
    ('search = "grid"\ntrials = 4\nlora_r = [4, 8]', ["search", '"none", "tpe", "random"']),
])
def test_a_bad_search_is_refused_with_the_fix(tmp_path, lines, words):
    (tmp_path / "x.toml").write_text(lines + "\n")
    (tmp_path / "x.jsonl").write_text(PROMPTS)
    res = overnight("check", str(tmp_path / "x.jsonl"), home=tmp_path / "home")
    out = res.stdout + res.stderr
    assert res.returncode == 1 and all(w in out for w in words), out


@pytest.mark.parametrize("line", ['search = "tpe"', "trials = 3"])
def test_a_search_in_overnight_toml_is_refused_there(tmp_path, line):
    """A search draws from a sidecar's ranges; in overnight.toml it made every drop a study of identical trials
    (or crashed check)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "overnight.toml").write_text(line + "\n")
    (tmp_path / "x.jsonl").write_text(PROMPTS)
    for target in (home / "overnight.toml", tmp_path / "x.jsonl"):
        res = overnight("check", str(target), home=home)
        out = res.stdout + res.stderr
        assert res.returncode == 1 and "Traceback" not in out, out
        assert "overnight.toml" in out and "put search and trials in the sidecar" in out, out


def test_check_says_what_a_search_draws_from(tmp_path):
    (tmp_path / "x.toml").write_text('search = "random"\ntrials = 6\nlearning_rate = {low = 1e-5, high = 1e-3, '
                                     'log = true}\nlora_r = [4, 8]\n')
    (tmp_path / "x.jsonl").write_text(PROMPTS)
    out = overnight("check", str(tmp_path / "x.jsonl"), home=tmp_path / "home").stdout
    assert "6 trials in one group (search random, 6 trials: learning_rate 1e-05 .. 0.001, log; lora_r one of " \
           "[4, 8])" in out, out


@pytest.mark.parametrize("drawn, longest", [("{low = 32, high = 64}", None), ("{choices = [32, 4096]}", 4096),
                                             ("{low = 32, high = 3000}", 3000)])
def test_a_search_over_max_length_is_checked_against_the_context_at_its_longest(home, tiny_model, drawn, longest):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "x.toml").write_text(f'search = "random"\ntrials = 2\nmax_steps = 2\nmax_length = {drawn}\n')
    (home / "x.jsonl").write_text(PROMPTS)
    res = overnight("check", str(home / "x.jsonl"), home=home)
    assert "Traceback" not in res.stderr and res.returncode == (1 if longest else 0), res.stdout + res.stderr
    if longest:
        assert f"max_length = {longest} is longer than the context of {tiny_model}" in res.stdout, res.stdout


def test_an_asked_trial_no_run_claimed_is_drawn_by_the_next_run_not_asked_again(tmp_path):
    """The daemon stopped between Optuna's ask and the claim: the next trial to start takes that trial."""
    folder = tmp_path / "runs" / "x-t1-20261206-101010"
    options = {"search": "tpe", "trials": 3, "seed": 1, "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
               "lora_r": [4, 8]}
    folder.mkdir(parents=True)
    RunConfig(run_id=folder.name, group="x-20261206-101010", options=options).write(folder)
    st = studies.study(tmp_path, "x-20261206-101010", options)
    orphan = st.ask(studies._distributions(RunConfig.read(folder)))
    run = {"id": folder.name, "run_dir": str(folder), "group_id": "x-20261206-101010"}
    said = studies.draw(tmp_path, run)
    config = RunConfig.read(folder)
    assert config.sweep == {**orphan.params, "trial": 0} and config.options["lora_r"] \
        == orphan.params["lora_r"], said
    assert len(st.trials) == 1 and st.trials[0].user_attrs["run_id"] == folder.name
    assert studies.draw(tmp_path, run) is None  # drawn once: a restart of the same run keeps its values


def test_a_pruned_trial_resumed_to_its_end_is_told_to_the_study(tmp_path):
    """Optuna cannot tell a pruned trial again: when the user resumes it and it completes, its result joins the
    study as a trial of its own, with its values, once."""
    import optuna
    from daemon.engine.store import Store
    group, rid = "x-20261206-101010", "x-t1-20261206-101010"
    folder = tmp_path / "runs" / rid
    options = {"search": "random", "trials": 3, "seed": 1, "prune": "asha",
               "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}}
    folder.mkdir(parents=True)
    RunConfig(run_id=rid, group=group, options=options).write(folder)
    studies.draw(tmp_path, {"id": rid, "run_dir": str(folder), "group_id": group})
    store = Store(tmp_path / "overnight.db")
    try:
        store.insert_run({"id": rid, "name": "x", "dataset": "x.jsonl", "state": "pruned", "priority": 0,
                          "seq": 1, "run_dir": str(folder), "group_id": group})
        studies.review(tmp_path, store, group, options)  # pruned at its rung
        store.update_run(rid, state="completed", eval_loss=1.25)  # resumed by the user, trained to its end
        said = studies.review(tmp_path, store, group, options)
        assert said == [f"search {group}: trial 0 ({rid}) was pruned, then resumed to its end: told 1.2500 as a "
                        f"trial of its own"], said
        assert studies.review(tmp_path, store, group, options) == []  # told once
    finally:
        store.close()
    trials = studies.study(tmp_path, group, options).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE]
    assert trials[1].value == 1.25 and trials[1].params == trials[0].params


def _drawn(home, kind: str, seed: int) -> list[float]:
    """Three trials of one study drawn one after the other, as the daemon draws them (the study loaded each time)."""
    options = {"search": kind, "trials": 3, "seed": seed, "learning_rate": {"low": 1e-5, "high": 1e-2, "log": True}}
    values = []
    for n in (1, 2, 3):
        folder = home / "runs" / f"x-t{n}-20261206-101010"
        folder.mkdir(parents=True)
        RunConfig(run_id=folder.name, group="x-20261206-101010", options=options).write(folder)
        studies.draw(home, {"id": folder.name, "run_dir": str(folder), "group_id": "x-20261206-101010"})
        values.append(RunConfig.read(folder).options["learning_rate"])
    return values


@pytest.mark.parametrize("kind", ["random", "tpe"])
def test_each_trial_draws_its_own_values_and_the_seed_repeats_them(tmp_path, kind):
    """Every trial of a search draws other values (each draw's sampler was seeded alike: all trials drew the same),
    and the same seed draws the same values again."""
    first = _drawn(tmp_path / "a", kind, 7)
    assert len(set(first)) == 3, first
    assert _drawn(tmp_path / "b", kind, 7) == first
    assert _drawn(tmp_path / "c", kind, 8) != first


SEARCH = ('search = "tpe"\ntrials = 4\nseed = 7\nlearning_rate = {low = 1e-5, high = 3e-3, log = true}\n'
          'lora_r = {choices = [2, 8]}\nselect = "best"\n'
          "max_steps = 6\nbatch_size = 4\nmax_length = 32\nlog_every = 1\nsave_every = 2\neval_fraction = 0.2\n"
          "probe_count = 0\n")


@pytest.mark.e2e
def test_a_study_killed_midway_continues_with_every_trial_drawn_once(home, tiny_model, daemon_proc):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "inbox" / "support.toml").write_text(SEARCH)
    (home / "inbox" / "support.jsonl").write_text(PROMPTS)
    d = daemon_proc()

    def done() -> int:
        runs = json.loads(overnight("runs", "--json", home=home, check=True).stdout)
        return sum(r["state"] == "completed" for r in runs)
    wait_until(lambda: done() >= 2, 600, 1, "two trials completed")
    d.stop(signal.SIGKILL)  # no shutdown: the study and the queue as a crash leaves them
    res = overnight("daemon", "--once", "--settle", "0.1", "--quiet", home=home, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:]

    runs = sorted(json.loads(overnight("runs", "--json", home=home, check=True).stdout), key=lambda r: r["seq"])
    assert [r["state"] for r in runs] == ["completed"] * 4, [(r["id"], r["state"], r["reason"]) for r in runs]
    assert [r["id"].split("-")[1] for r in runs] == ["t1", "t2", "t3", "t4"]
    st = optuna.load_study(study_name=runs[0]["group_id"], storage=studies.storage_url(home))
    trials = st.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # none lost, none drawn twice
    assert sorted(t.user_attrs["run_id"] for t in trials) == [r["id"] for r in runs]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert len({(t.params["learning_rate"], t.params["lora_r"]) for t in trials}) == 4  # four draws, not one four times
    for t in trials:
        config = RunConfig.read(home / "runs" / t.user_attrs["run_id"])
        assert config.options["learning_rate"] == t.params["learning_rate"] and 1e-5 <= t.params["learning_rate"] <= 3e-3
        assert config.options["lora_r"] == t.params["lora_r"] in (2, 8)
    rows = json.loads(overnight("compare", runs[0]["group_id"], "--json", home=home, check=True).stdout)
    assert st.best_value == rows[0]["eval_loss"] and st.best_trial.user_attrs["run_id"] == rows[0]["run_id"]
    active = [m["run_id"] for m in json.loads(overnight("models", "--json", home=home, check=True).stdout)
              if m["active"]]
    assert active == [rows[0]["run_id"]]
