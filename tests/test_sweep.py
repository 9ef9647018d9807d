"""Sweeps: lists in a sidecar queue the grid in one group; compare ranks it; select = "best" activates the best."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from daemon.core import sweep
from daemon.core.options import OPTIONS, OptionsError, load_home_toml, load_sidecar, resolve
from daemon.engine.store import Store
from tests.conftest import overnight

PROMPTS = "\n".join(json.dumps({"prompt": f"add {i} 1:", "completion": str(i + 1)}) for i in range(40)) + "\n"


def write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


# ----------------------------------------------------------------------------------------------- the schema

def test_sweepable_options_are_the_training_hyperparameters_and_each_has_a_short_name():
    swept = {k for k, o in OPTIONS.items() if o.sweep}
    assert {"learning_rate", "lora_r", "lora_alpha", "lora_dropout", "epochs", "max_steps", "batch_size",
            "grad_accum", "max_length", "seed", "warmup_ratio", "weight_decay", "lr_scheduler", "optim",
            "quantization", "batching", "gradient_checkpointing"} <= swept
    assert not swept & {"lora_targets", "base_model", "name", "priority", "select", "eval_fraction", "probe_every",
                        "probe_count", "probe_max_new_tokens", "log_every", "save_every"}
    assert not any(o.sweep and o.owner_only for o in OPTIONS.values())
    assert swept <= set(sweep.ABBREVIATIONS)
    assert all(re.fullmatch(r"[a-z]+", a) for a in sweep.ABBREVIATIONS.values())
    assert OPTIONS["max_sweep_runs"].owner_only and OPTIONS["max_sweep_runs"].default == 16


@pytest.mark.parametrize("key, value, shown", [
    ("learning_rate", 3e-4, "lr3e-4"), ("learning_rate", 0.0003, "lr3e-4"), ("learning_rate", 2.5e-5, "lr2.5e-5"),
    ("learning_rate", 1e-3, "lr1e-3"), ("lora_dropout", 0.05, "drop0.05"), ("lora_r", 16, "r16"),
    ("epochs", 3.0, "ep3"), ("epochs", 1.5, "ep1.5"), ("warmup_ratio", 0.1, "wu0.1"), ("max_length", 2048, "len2048"),
    ("lr_scheduler", "cosine", "sched_cosine"), ("gradient_checkpointing", True, "gc_on"),
    ("quantization", "4bit", "q_4bit"), ("optim", "adamw_torch", "opt_adamw_torch"),
])
def test_run_ids_carry_compact_values(key, value, shown):
    assert sweep.tag(key, value) == shown and re.fullmatch(r"[A-Za-z0-9._-]+", shown)


@pytest.mark.parametrize("text, words", [
    ("eval_fraction = [0.05, 0.1]", ["'eval_fraction'", "cannot be swept", "learning_rate", "Fix: give eval_fraction "
                                                                                             "one value"]),
    ("name = ['a', 'b']", ["'name'", "cannot be swept", "Fix: give name one value"]),
    ("priority = [1, 2]", ["'priority'", "cannot be swept"]),
    ("learning_rate = [1e-4, 5.0]", ["learning_rate", "5.0 (item 2 of the list", "out of range", "> 0 and <= 1"]),
    ("lora_r = [8, 'sixteen']", ["lora_r", "'sixteen' (item 2", "expected integer"]),
    ("lora_r = [8, 16, 8]", ["lists 8 twice", "Fix: list each value once"]),
    ("lora_r = []", ["empty list", "Fix:"]),
])
def test_a_bad_list_in_a_sidecar_is_an_error_with_the_fix(tmp_path, text, words):
    with pytest.raises(OptionsError) as e:
        load_sidecar(write(tmp_path / "d.toml", text + "\n"))
    assert "d.toml" in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_a_list_in_overnight_toml_is_an_error_saying_sweeps_belong_in_a_sidecar(tmp_path):
    with pytest.raises(OptionsError) as e:
        load_home_toml(write(tmp_path / "overnight.toml", "learning_rate = [1e-4, 3e-4]\n"))
    msg = str(e.value)
    assert "overnight.toml" in msg and "sweeps belong in a dataset's sidecar" in msg
    assert "Fix: set one value here (learning_rate = 0.0001)" in msg
    # lists that are values, not sweeps, stay fine (module names, base models, GPUs)
    assert load_home_toml(write(tmp_path / "overnight.toml", "lora_targets = ['q_proj', 'v_proj']\ngpus = [0]\n"))
    assert load_sidecar(write(tmp_path / "d.toml", "lora_targets = ['q_proj', 'v_proj']\n"))


def test_the_grid_is_the_product_in_the_sidecars_order_with_models_outermost(tmp_path):
    side = load_sidecar(write(tmp_path / "d.toml", "lora_r = [8, 16]\nbase_model = ['/m/a', '/m/b']\n"
                                                   "seed = [7]\nlearning_rate = [1e-4, 3e-4, 1e-3]\n"))
    opts = resolve({"max_sweep_runs": 12}, side)
    points = sweep.expand(opts)
    assert sweep.run_count(opts) == len(points) == 12
    assert [sweep.run_suffix(p, True) for p in points[:4]] == ["-a-r8-lr1e-4", "-a-r8-lr3e-4", "-a-r8-lr1e-3",
                                                               "-a-r16-lr1e-4"]
    assert points[6].base_model == "/m/b"
    one = sweep.options_for(opts, points[4]).values
    assert (one["base_model"], one["lora_r"], one["learning_rate"], one["seed"]) == ("/m/a", 16, 3e-4, 7)
    sweep.check_cap(opts, "d.toml")
    with pytest.raises(OptionsError) as e:
        sweep.check_cap(resolve({"max_sweep_runs": 11}, side), "d.toml")
    assert ("d.toml: this sweep would queue 12 runs (base_model 2 × lora_r 2 × learning_rate 3), more than "
            "max_sweep_runs = 11. Fix: shorten the lists, or raise max_sweep_runs in overnight.toml.") == str(e.value)


# ----------------------------------------------------------------------------------------------- ranking

def _row(i: int, state: str, eval_loss: float | None, loss: float | None = 2.0) -> dict:
    return {"id": f"r{i}", "name": "support", "state": state, "eval_loss": eval_loss, "loss": loss, "seq": i}


def test_ranking_by_eval_loss_ties_by_probes_learned_unfinished_runs_out():
    rows = [_row(1, "completed", 1.30), _row(2, "completed", 1.2100), _row(3, "failed", 0.5),
            _row(4, "completed", 1.21001), _row(5, "queued", None, None)]
    learned = {"r2": 3, "r4": 5}
    asked = []

    def probes(r):
        asked.append(r["id"])
        return learned.get(r["id"], 0)

    ordered, metric = sweep.rank(rows, probes)
    assert metric == "eval_loss"
    assert [(r["id"], r["rank"]) for r in ordered] == [("r4", 1), ("r2", 2), ("r1", 3), ("r3", None), ("r5", None)]
    assert sorted(set(asked)) == ["r2", "r4"]  # probes are read only to break the tie
    # a completed run without an eval loss: everyone is ranked by the final loss instead
    ordered, metric = sweep.rank([_row(1, "completed", 1.0, 3.0), _row(2, "completed", None, 2.0)])
    assert metric == "loss" and [r["id"] for r in ordered] == ["r2", "r1"]
    assert sweep.best([_row(1, "failed", 1.0), _row(2, "stopped", 0.9)]) is None


def _group_home(tmp_path: Path, select: str, states: list[tuple[str, float | None]]) -> tuple[Store, list[dict]]:
    store = Store(tmp_path / "overnight.db")
    runs = []
    for i, (state, eval_loss) in enumerate(states, 1):
        run_dir = tmp_path / "runs" / f"support-r{i}"
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps({"options": {"select": select, "lora_r": 4 * i}}))
        run = {**_row(i, state, eval_loss), "id": f"support-r{i}", "group_id": "support-g", "run_dir": str(run_dir),
               "priority": 0}
        store.insert_run({k: v for k, v in run.items()})
        runs.append(store.get_run(run["id"]))
    return store, runs


def _options(run: dict) -> dict:
    return json.loads((Path(run["run_dir"]) / "config.json").read_text())["options"]


def test_select_best_activates_the_best_version_when_the_groups_last_run_ends(tmp_path):
    from daemon.engine import registry
    store, runs = _group_home(tmp_path, "best", [("completed", 1.3), ("completed", 1.1), ("failed", None),
                                                 ("training", None)])
    store.add_model({"name": "support", "run_id": "other", "base_model": "/m", "metrics": {}, "adapter_path": "/x"})
    for r in runs[:2]:  # versions 2 and 3: registered without taking over from version 1
        registry.register(store, r, activate=not sweep.selects_best(_options(r), r))
    assert [(m["version"], m["active"]) for m in store.models("support")] == [(1, 1), (2, 0), (3, 0)]
    assert sweep.on_group_ended(store, "support-g", _options, lambda r: 0) is None  # one run still training
    store.set_state(runs[3]["id"], "stopped")
    said = sweep.on_group_ended(store, "support-g", _options, lambda r: 0)
    assert said == ("sweep support-g: activated support version 3 (run support-r2, eval loss 1.1000; best of 2; "
                    "2 did not complete)")
    assert [(m["version"], m["active"]) for m in store.models("support")] == [(1, 0), (2, 0), (3, 1)]
    # the selection does not pin: the next single run of this name becomes active as usual
    store.add_model({"name": "support", "run_id": "later", "base_model": "/m", "metrics": {}, "adapter_path": "/y"})
    assert store.models("support")[-1]["active"] == 1


def test_select_best_leaves_a_pinned_version_active_and_says_so(tmp_path):
    """`overnight activate` decides: a group whose runs end again after the user pinned a version (a pruned trial
    resumed) names its best without taking over."""
    from daemon.engine import registry
    store, runs = _group_home(tmp_path, "best", [("completed", 1.3), ("completed", 1.1)])
    for r in runs:
        registry.register(store, r, activate=False)
    assert "activated support version 2" in sweep.on_group_ended(store, "support-g", _options, lambda r: 0)
    store.activate_model("support", 1)  # the user pins version 1
    said = sweep.on_group_ended(store, "support-g", _options, lambda r: 0)
    assert said == ("sweep support-g: the best is support version 2 (run support-r2, eval loss 1.1000; best of 2); "
                    "not activated, as version 1 is pinned (overnight activate support 2 to take it)")
    assert [(m["version"], m["active"]) for m in store.models("support")] == [(1, 1), (2, 0)]


def test_a_search_of_one_trial_activates_its_version(tmp_path):
    from daemon.engine import registry
    store, [run] = _group_home(tmp_path, "best", [("completed", 1.3)])
    registry.register(store, run, activate=not sweep.selects_best(_options(run), run))
    assert "activated support version 1" in sweep.on_group_ended(store, "support-g", _options, lambda r: 0)
    assert store.models("support")[0]["active"] == 1


@pytest.mark.parametrize("text, words", [
    ('prune = "asha"\n', ['prune = "asha" compares the trials of a sweep', "queues one run", "Fix:"]),
    ("eta = 2\nlearning_rate = [1e-4, 3e-4]\n", ["eta = 2 steers ASHA pruning", 'Fix: add prune = "asha"']),
    ("trials = 3\nlearning_rate = [1e-4, 3e-4]\n", ["trials = 3 steers a search", 'Fix: add search = "tpe"']),
    ("search = 'random'\ntrials = 2\neval_fraction = {low = 0.01, high = 0.1}\nlearning_rate = [1e-4, 3e-4]\n",
     ["'eval_fraction' = {low = 0.01, high = 0.1} is a range", "Fix: give eval_fraction one value "
                                                                "(eval_fraction = 0.05)"]),
])
def test_a_sweep_option_that_would_do_nothing_is_refused_with_the_fix(sweep_home, text, words):
    """ASHA on a single run waited at its first rung forever; eta without prune and trials without search were
    accepted and did nothing; a range on an option no search draws was said as a list."""
    (sweep_home / "inbox" / "odd.toml").write_text(text)
    (sweep_home / "inbox" / "odd.jsonl").write_text(PROMPTS)
    res = overnight("check", str(sweep_home / "inbox" / "odd.jsonl"), home=sweep_home)
    assert res.returncode == 1 and "odd.toml" in res.stdout and all(w in res.stdout for w in words), res.stdout


def test_select_none_leaves_the_registry_alone(tmp_path):
    store, runs = _group_home(tmp_path, "none", [("completed", 1.3), ("completed", 1.1)])
    assert not sweep.selects_best(_options(runs[0]), runs[0])
    assert sweep.on_group_ended(store, "support-g", _options, lambda r: 0) is None


# ----------------------------------------------------------------------------------------------- through the CLI

@pytest.fixture
def sweep_home(home, tiny_model):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "control" / "stop").write_text("")  # hold the queue: intake only
    return home


def test_a_2x2_grid_queues_four_runs_in_one_group_with_their_values(sweep_home, tiny_model):
    home = sweep_home
    (home / "inbox" / "support.toml").write_text("learning_rate = [1e-4, 3e-4]\nlora_r = [8, 16]\nmax_steps = 4\n")
    (home / "inbox" / "support.jsonl").write_text(PROMPTS)
    check = overnight("check", str(home / "inbox" / "support.jsonl"), home=home)
    assert check.returncode == 0 and ("sweep: 4 runs in one group (learning_rate 2 × lora_r 2): lr1e-4-r8, "
                                      "lr1e-4-r16, lr3e-4-r8, lr3e-4-r16") in check.stdout, check.stdout
    overnight("daemon", "--once", "--settle", "0.1", "--quiet", home=home, check=True, timeout=120)
    runs = sorted(json.loads(overnight("runs", "--json", home=home, check=True).stdout), key=lambda r: r["seq"])
    assert len(runs) == 4 and {r["state"] for r in runs} == {"queued"}
    stamp = runs[0]["id"][-15:]
    assert [r["id"] for r in runs] == [f"support-{t}-{stamp}" for t in ("lr1e-4-r8", "lr1e-4-r16", "lr3e-4-r8",
                                                                          "lr3e-4-r16")]
    group = runs[0]["group_id"]
    assert group == f"support-{stamp}" and {r["group_id"] for r in runs} == {group}
    assert {r["name"] for r in runs} == {"support"}
    for r, (lr, rank) in zip(runs, [(1e-4, 8), (1e-4, 16), (3e-4, 8), (3e-4, 16)]):
        config = json.loads((Path(r["run_dir"]) / "config.json").read_text())
        assert config["options"]["learning_rate"] == lr and config["options"]["lora_r"] == rank
        assert config["sources"]["learning_rate"] == config["sources"]["lora_r"] == "sidecar"
        assert config["group"] == group and config["sweep"] == {"learning_rate": lr, "lora_r": rank}
        assert config["options"]["max_steps"] == 4 and config["options"]["base_model"] == str(tiny_model)
        assert (Path(r["run_dir"]) / "dataset" / "support.jsonl").read_text() == PROMPTS
    log = (home / "overnight.log").read_text()
    assert f"(group {group}: learning_rate 2 × lora_r 2)" in log
    # compare takes the group by its id or its name; before any run ends nothing is ranked
    out = json.loads(overnight("compare", "support", "--json", home=home, check=True).stdout)
    assert [r["run_id"] for r in out] == [r["id"] for r in runs] and {r["rank"] for r in out} == {None}
    assert out[1]["options_that_differ"] == {"learning_rate": 1e-4, "lora_r": 16}


def test_a_grid_over_the_cap_is_refused_with_the_count_and_the_fix(sweep_home):
    home = sweep_home
    (home / "inbox" / "big.toml").write_text("learning_rate = [1e-4, 2e-4, 3e-4]\nlora_r = [4, 8, 16]\n"
                                             "seed = [1, 2]\nselect = 'best'\n")
    (home / "inbox" / "big.jsonl").write_text(PROMPTS)
    said = ("this sweep would queue 18 runs (learning_rate 3 × lora_r 3 × seed 2), more than max_sweep_runs = 16. "
            "Fix: shorten the lists, or raise max_sweep_runs in overnight.toml.")
    for f in ("big.jsonl", "big.toml"):  # `overnight check` says what the daemon will say
        res = overnight("check", str(home / "inbox" / f), home=home)
        assert res.returncode == 1 and said in res.stdout, res.stdout
    overnight("daemon", "--once", "--settle", "0.1", "--quiet", home=home, check=True, timeout=120)
    rejected = home / "inbox" / "rejected"
    assert said in (rejected / "big.error.txt").read_text()
    assert (rejected / "big.jsonl").exists() and (rejected / "big.toml").exists()
    assert json.loads(overnight("runs", "--json", home=home, check=True).stdout) == []
    # the owner raises the cap: the same sidecar checks fine
    (home / "overnight.toml").write_text((home / "overnight.toml").read_text() + "max_sweep_runs = 20\n")
    res = overnight("check", str(rejected / "big.toml"), home=home)
    assert res.returncode == 0 and "sweep: 18 runs in one group" in res.stdout
    # a sidecar cannot raise it itself
    (rejected / "big.toml").write_text("max_sweep_runs = 100\n")
    res = overnight("check", str(rejected / "big.toml"), home=home)
    assert res.returncode == 1 and "only be set by the machine owner" in res.stdout


def test_lists_on_a_non_sweepable_option_and_in_overnight_toml_get_clear_errors(sweep_home, tiny_model):
    home = sweep_home
    (home / "inbox" / "odd.toml").write_text("eval_fraction = [0.1, 0.2]\n")
    (home / "inbox" / "odd.jsonl").write_text(PROMPTS)
    res = overnight("check", str(home / "inbox" / "odd.jsonl"), home=home)
    assert res.returncode == 1 and "eval_fraction" in res.stdout and "cannot be swept" in res.stdout
    overnight("daemon", "--once", "--settle", "0.1", "--quiet", home=home, check=True, timeout=120)
    assert "cannot be swept" in (home / "inbox" / "rejected" / "odd.error.txt").read_text()
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nlora_r = [8, 16]\n')
    status = overnight("check", str(home / "inbox" / "rejected" / "odd.jsonl"), home=home)
    assert status.returncode == 1 and "sweeps belong in a dataset's sidecar" in status.stdout


def _fake_run(store: Store, home: Path, rid: str, seq: int, state: str, eval_loss: float | None, options: dict,
              learned: int, group: str | None = "sup-20260101-000000", data: str = "sup.jsonl") -> None:
    d = home / "runs" / rid
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"options": {"learning_rate": 2e-4, "seed": 42, **options},
                                               "dataset": {"file": data, "sha256": f"sha of {data}"}}))
    (d / "evolution.jsonl").write_text("".join(
        json.dumps({"step": 4, "probe": p, "prompt": "q", "reference": "a", "generation": "a" if p < learned else "b",
                    "exact": p < learned, "similarity": 1.0 if p < learned else 0.0}) + "\n" for p in range(4)))
    store.insert_run({"id": rid, "name": "sup", "group_id": group, "state": state, "seq": seq, "run_dir": str(d),
                      "dataset": data,
                      "eval_loss": eval_loss, "loss": None if eval_loss is None else eval_loss + 0.5,
                      "tokens_per_s": 1000.0 + seq, "started": "2026-01-01T00:00:00",
                      "finished": "2026-01-01T00:01:30" if state != "queued" else None})


def test_compare_group_ranks_by_eval_loss_with_probes_speed_time_and_differing_options(home):
    store = Store(home / "overnight.db")
    _fake_run(store, home, "sup-lr1e-4-20260101-000000", 1, "completed", 1.40, {"learning_rate": 1e-4}, 1)
    _fake_run(store, home, "sup-lr3e-4-20260101-000000", 2, "completed", 1.20, {"learning_rate": 3e-4}, 2)
    _fake_run(store, home, "sup-lr1e-3-20260101-000000", 3, "failed", None, {"learning_rate": 1e-3}, 0)
    _fake_run(store, home, "sup-lr2e-3-20260101-000000", 4, "completed", 1.20, {"learning_rate": 2e-3}, 4)
    _fake_run(store, home, "sup-20260102-000000", 5, "completed", 0.1, {}, 4, group=None)  # not in the group
    store.close()
    rows = json.loads(overnight("compare", "sup-20260101-000000", "--json", home=home, check=True).stdout)
    assert [(r["rank"], r["run_id"][:9]) for r in rows] == [(1, "sup-lr2e-"), (2, "sup-lr3e-"), (3, "sup-lr1e-"),
                                                            (None, "sup-lr1e-")]
    best = rows[0]
    assert best["state"] == "completed" and best["eval_loss"] == 1.2 and best["final_loss"] == 1.7
    assert (best["probes_learned"], best["probes_total"], best["tokens_per_s"], best["seconds"]) == (4, 4, 1004.0, 90.0)
    assert best["options_that_differ"] == {"learning_rate": 2e-3} and best["ranked_by"] == "eval_loss"
    assert rows[-1]["state"] == "failed" and rows[-1]["rank"] is None
    text = overnight("compare", "sup-2026010", home=home, check=True).stdout  # by a prefix of the group id
    assert "group sup-20260101-000000: 4 runs, 3 completed, ranked by eval loss (best first)" in text
    assert "note:" not in text  # one dataset: nothing to warn of
    first = text.splitlines()[2]
    assert first.startswith("1 ★  sup-lr2e-3-20260101-000000  completed  1.2   1.7   4/4") and \
        "1m30s" in first and first.endswith("learning_rate=2e-3")
    # runs named one by one are compared the same way
    two = json.loads(overnight("compare", "sup-lr1e-4-20260101-000000", "sup-20260102-000000", "--json",
                               home=home, check=True).stdout)
    assert [r["rank"] for r in two] == [1, 2] and two[0]["run_id"] == "sup-20260102-000000"
    bad = overnight("compare", "nothing", home=home)
    assert bad.returncode != 0 and "no group matches 'nothing'" in bad.stderr


def test_compare_stars_the_run_select_metric_picks(home):
    """A group ranked by its select_metric: compare's ★ is the version `select = "best"` activates, not the run with
    the lowest eval loss."""
    store = Store(home / "overnight.db")
    for i, (rid, loss, rouge) in enumerate((("sup-lr1e-4-20260101-000000", 1.1, 0.20),
                                            ("sup-lr3e-4-20260101-000000", 1.3, 0.60)), 1):
        _fake_run(store, home, rid, i, "completed", loss, {"select": "best", "select_metric": "rougeL"}, 1)
        (home / "runs" / rid / "eval_report.json").write_text(json.dumps(
            {"eval": {"records": 4, "scores": {"version": {"exact": 0.0, "similarity": 0.5, "rougeL": rouge}}}}))
    store.close()
    rows = json.loads(overnight("compare", "sup-20260101-000000", "--json", home=home, check=True).stdout)
    assert [(r["rank"], r["run_id"][:9], r["ranked_by"]) for r in rows] == [(1, "sup-lr3e-", "rougeL"),
                                                                            (2, "sup-lr1e-", "rougeL")]


def test_compare_ranks_runs_named_in_any_order_alike_and_says_when_their_data_differ(home):
    """Runs named one by one: the ranking does not follow the first one's select_metric, and runs trained or scored
    on different data are ranked with a note (their losses measure different things)."""
    store = Store(home / "overnight.db")
    _fake_run(store, home, "a-20260101-000000", 1, "completed", 1.1, {"select_metric": "rougeL"}, 1, group=None)
    _fake_run(store, home, "b-20260101-000000", 2, "completed", 1.3, {}, 1, group=None, data="other.jsonl")
    store.close()
    orders = [json.loads(overnight("compare", *ids, "--json", home=home, check=True).stdout)
              for ids in (("a-20260101-000000", "b-20260101-000000"), ("b-20260101-000000", "a-20260101-000000"))]
    assert [[(r["run_id"], r["ranked_by"]) for r in rows] for rows in orders] == \
        [[("a-20260101-000000", "eval_loss"), ("b-20260101-000000", "eval_loss")]] * 2
    text = overnight("compare", "a-20260101-000000", "b-20260101-000000", home=home, check=True).stdout
    assert "note: these runs were trained or scored on different datasets (other.jsonl, sup.jsonl)" in text, text


def test_compare_of_runs_that_trained_different_objectives_says_their_losses_are_not_one_scale(home):
    store = Store(home / "overnight.db")
    for i, (rid, objective, loss) in enumerate((("sft-20260101-000000", "sft", 6.2), ("dpo-20260101-000000", "dpo", 0.6),
                                                ("kto-20260101-000000", "kto", 0.5)), 1):
        _fake_run(store, home, rid, i, "completed", loss, {"objective": "auto"}, 1, group=None)
        (home / "runs" / rid / "stats.json").write_text(json.dumps({"objective": objective}))  # as resolved
    store.close()
    text = overnight("compare", "sft-20260101-000000", "dpo-20260101-000000", "kto-20260101-000000", home=home,
                     check=True).stdout
    assert "note: these runs train different objectives" in text and "objective=dpo" in text, text


def test_skipping_the_last_queued_run_of_a_sweep_selects_its_best(home):
    """The group ends however its last run ends: here skipped before it started (no training needed)."""
    store = Store(home / "overnight.db")
    _fake_run(store, home, "sup-lr1e-4-20260101-000000", 1, "completed", 1.3, {"select": "best"}, 1)
    _fake_run(store, home, "sup-lr3e-4-20260101-000000", 2, "completed", 1.1, {"select": "best"}, 1)
    _fake_run(store, home, "sup-lr1e-3-20260101-000000", 3, "queued", None, {"select": "best"}, 0)
    for i, rid in enumerate(("sup-lr1e-4-20260101-000000", "sup-lr3e-4-20260101-000000")):
        store.add_model({"name": "sup", "run_id": rid, "base_model": "/m", "metrics": {}, "adapter_path": "/a"},
                        activate=False)
    store.close()
    (home / "control" / "skip").write_text("sup-lr1e-3-20260101-000000\n")
    overnight("daemon", "--once", "--settle", "0.1", "--quiet", home=home, check=True, timeout=120)
    models = json.loads(overnight("models", "--json", home=home, check=True).stdout)
    assert [(m["version"], m["active"]) for m in models] == [(1, 0), (2, 1)]
    assert ("sweep sup-20260101-000000: activated sup version 2 (run sup-lr3e-4-20260101-000000, eval loss 1.1000; "
            "best of 2; 1 did not complete)") in (home / "overnight.log").read_text()


# ----------------------------------------------------------------------------------------------- the whole path

FAST = ("max_steps = 4\nbatch_size = 4\nmax_length = 32\nlog_every = 1\nsave_every = 2\neval_fraction = 0.2\n"
        "probe_count = 2\nprobe_max_new_tokens = 4\n")


@pytest.mark.e2e
def test_a_sweep_trains_is_ranked_and_its_best_version_is_activated(home, tiny_model):
    """A 2×2 grid through the real daemon and trainer: four runs, compare GROUP ranks them, select picks the best."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "inbox" / "support.toml").write_text('learning_rate = [1e-4, 3e-3]\nlora_r = [2, 8]\nselect = "best"\n'
                                                 + FAST)
    (home / "inbox" / "support.jsonl").write_text(PROMPTS)
    res = overnight("daemon", "--once", "--settle", "0.1", "--quiet", home=home, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:]
    runs = sorted(json.loads(overnight("runs", "--json", home=home, check=True).stdout), key=lambda r: r["seq"])
    assert [r["state"] for r in runs] == ["completed"] * 4, [(r["id"], r["reason"]) for r in runs]
    group = runs[0]["group_id"]
    rows = json.loads(overnight("compare", group, "--json", home=home, check=True).stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4] and {r["ranked_by"] for r in rows} == {"eval_loss"}
    losses = [r["eval_loss"] for r in rows]
    assert losses == sorted(losses) and all(r["tokens_per_s"] and r["seconds"] for r in rows)
    assert all(set(r["options_that_differ"]) == {"learning_rate", "lora_r"} for r in rows)
    best = rows[0]["run_id"]
    models = json.loads(overnight("models", "--json", home=home, check=True).stdout)
    assert sorted(m["run_id"] for m in models) == sorted(r["id"] for r in runs)
    active = [m for m in models if m["active"]]
    assert len(active) == 1 and active[0]["run_id"] == best
    line = (f"sweep {group}: activated support version {active[0]['version']} (run {best}, "
            f"eval loss {rows[0]['eval_loss']:.4f}; best of 4)")
    assert line in (home / "overnight.log").read_text()
    assert "★" in overnight("compare", "support", home=home, check=True).stdout.splitlines()[2]


def test_asha_set_for_every_drop_leaves_a_single_run_to_train_to_its_end(tmp_path):
    """prune = "asha" in overnight.toml (for the sweeps to come): a drop of one run has no trials to be compared
    with, so it trains to the end instead of waiting at its first rung for ever."""
    from daemon.engine.pruning import target_rung

    store, [run] = _group_home(tmp_path, "none", [("training", None)])
    options = {"prune": "asha", "eta": 3}
    assert target_rung(store, run, options) == 0  # a trial of a group: to its first rung
    assert target_rung(store, {**run, "group_id": None}, options) is None


def test_a_forgetting_that_rounds_to_nothing_has_no_sign_and_one_run_is_one_run():
    from daemon.core.render import comparison, fmt_forgetting

    assert [fmt_forgetting(x) for x in (-0.0004, 0.0004, -0.012, 0.0)] == ["+0.0%", "+0.0%", "-1.2%", "+0.0%"]
    row = {"rank": None, "run_id": "a-t1", "state": "queued", "eval_loss": None, "final_loss": None,
           "probes_learned": None, "probes_total": 0, "tokens_per_s": None, "seconds": None,
           "options_that_differ": {}, "rungs": [], "ranked_by": None}
    assert comparison([row], "a-20260101-000000").splitlines()[0].startswith("group a-20260101-000000: 1 run,")
