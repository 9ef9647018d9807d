"""What a run says of its eval and its probes is what it did: the eval loss and speed of the adapter kept, answers
generated long enough to match their references, and a missing eval split, a probe shortfall or a forgetting sample
too short said with the reason (the console, `overnight check`, `overnight evolution`, the run folder's files).
Real runs of a few steps of the tiny model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from daemon.core.render import fmt_rate
from tests.conftest import overnight
from tests.conftest_trainer import jsonl, make_run, metrics, read_json, reversal_records, train

pytestmark = pytest.mark.e2e

SHORT = "max_steps = 2\nbatch_size = 4\nmax_length = 64\nsave_every = 100\nlog_every = 1\n"
# the reverse-four-words task of tests/test_trainer.py's early-stopping run: a learning rate far too high makes the
# eval loss worsen after a few evals
EARLY = ("max_steps = 30\nbatch_size = 4\nmax_length = 64\nlora_r = 8\nlora_alpha = 16\nlora_dropout = 0.05\n"
         "log_every = 1\nsave_every = 2\nseed = 7\neval_fraction = 0.1\nprobe_count = 0\n"
         "learning_rate = 0.9\nearly_stopping_patience = 1\n")
LONG = "tea back good first part star open show"  # 8 words, each one token of the tiny model's vocabulary


def _write(folder: Path, stem: str, records: list[dict], sidecar: str, probes: str | None = None) -> None:
    if probes is not None:
        (folder / f"{stem}.probes.jsonl").write_text(probes)
    (folder / f"{stem}.toml").write_text(sidecar)
    (folder / f"{stem}.jsonl").write_text(jsonl(records))


def _long_probes() -> str:
    return jsonl([{"prompt": f"say {w}:", "reference": LONG} for w in ("one", "two")])


def _runs(home: Path) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(overnight("runs", "--json", home=home, check=True).stdout)}


def _console(run: dict) -> str:
    return (Path(run["run_dir"]) / "console.log").read_text()


def test_check_says_what_the_hold_outs_will_lack(home: Path, tiny_model: Path) -> None:
    """Before the drop: no eval split and why, an early stopping that can never stop the run, fewer probes."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    _write(home, "few", reversal_records(5), "")
    _write(home, "nineteen", reversal_records(19), "eval_fraction = 0.5\n")
    _write(home, "twenty", reversal_records(20), "eval_fraction = 0.04\nprobe_count = 0\nearly_stopping_patience = 2\n")
    _write(home, "once", reversal_records(60), "max_steps = 50\nearly_stopping_patience = 1\n")
    said = {stem: overnight("check", str(home / f"{stem}.jsonl"), home=home, check=True).stdout
            for stem in ("few", "nineteen", "twenty", "once")}
    assert "note: eval: 5 records are fewer than the 20 an eval split needs: no eval loss" in said["few"]
    assert ("note: probes: probe_count = 8, but none could be held out of 5 records: probes take at most 10% of the "
            "records, so a dataset needs 10 or more; drop few.probes.jsonl beside it") in said["few"], said["few"]
    assert "note: probes: 8 asked, 1 held out (at most 10% of 19 records)" in said["nineteen"], said["nineteen"]
    assert ("note: eval: 18 records (after the 1 held out as probes) are fewer than the 20 an eval split needs"
            in said["nineteen"])
    assert ("note: eval: eval_fraction 0.04 × 20 records holds out none: no eval loss; early_stopping_patience = 2 "
            "is off; set eval_fraction = 0.05 or more") in said["twenty"], said["twenty"]
    assert ("note: early_stopping_patience = 1 cannot stop this run early: it evaluates when it saves (save_every = "
            "200) and at its last step, once in its 50 steps" in said["once"]), said["once"]
    assert "set save_every = 24 or less" in said["once"]


def test_runs_say_their_hold_outs_and_an_ended_run_shows_the_adapter_it_kept(home: Path, tiny_model: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    inbox = home / "inbox"
    _write(inbox, "early", reversal_records(80, seed=5), EARLY)
    _write(inbox, "few", reversal_records(5), SHORT)
    _write(inbox, "nineteen", reversal_records(19), SHORT + "eval_fraction = 0.5\n")
    _write(inbox, "twenty", reversal_records(20), SHORT + "eval_fraction = 0.04\nprobe_count = 0\n"
                                                          "early_stopping_patience = 2\n")
    # a fixed probe_every: the answers stay cut at probe_max_new_tokens, said and marked; its 60 records hold an eval
    # split out, evaluated only at the last of its 2 steps
    _write(inbox, "cut", reversal_records(60), SHORT + "probe_every = 100\nprobe_max_new_tokens = 4\n"
                                                       "early_stopping_patience = 1\n", probes=_long_probes())
    overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=900, check=True)
    runs = _runs(home)
    assert {n: r["state"] for n, r in runs.items()} == dict.fromkeys(
        ("early", "few", "nineteen", "twenty", "cut"), "completed"), runs

    _the_row_is_the_adapter_kept(home, runs["early"], runs["cut"])

    few = _console(runs["few"])
    reason = ("no probes (probe_count = 8, but none could be held out of 5 records: probes take at most 10% of the "
              "records, so a dataset needs 10 or more; drop few.probes.jsonl beside the dataset to watch some)")
    assert f"evolution: {reason}" in few, few
    assert f"This run has {reason}" in overnight("evolution", runs["few"]["id"], home=home, check=True).stdout
    assert "eval: 5 records are fewer than the 20 an eval split needs: no eval loss; add records" in few

    nineteen = _console(runs["nineteen"])
    assert "evolution: 1 probe(s), a snapshot every" in nineteen
    assert "; 8 asked, 1 held out (at most 10% of 19 records)" in nineteen, nineteen
    assert ("eval: 18 records (after the 1 held out as probes) are fewer than the 20 an eval split needs: no eval "
            "loss; add records, or lower probe_count") in nineteen

    twenty = _console(runs["twenty"])
    assert ("eval: eval_fraction 0.04 × 20 records holds out none: no eval loss; early_stopping_patience = 2 is off; "
            "set eval_fraction = 0.05 or more") in twenty, twenty

    cut = _console(runs["cut"])
    assert ("evolution: the answers of 2 probe(s) (0, 1) are cut at 4 tokens (probe_max_new_tokens), shorter than "
            "their references: they can never be exact. Fix: set probe_max_new_tokens = ") in cut, cut
    assert ("eval: early_stopping_patience = 1 cannot stop this run early: it evaluates when it saves (save_every = "
            "100) and at its last step, once in its 2 steps") in cut
    shown = " ".join(overnight("evolution", runs["cut"]["id"], home=home, check=True).stdout.split())
    assert shown.count("NOT LEARNED answers cut at 4 tokens: never exact") == 2, shown


def _the_row_is_the_adapter_kept(home: Path, run: dict, other: dict) -> None:
    """Early stopping reloaded the best checkpoint: runs, metadata.json and compare show its eval loss (result.json's),
    not the last eval's; compare's TOK/S is the run's average."""
    folder = Path(run["run_dir"])
    result = read_json(folder / "result.json")
    evals = [m["eval_loss"] for m in metrics(folder) if "eval_loss" in m]
    assert "Early stopping" in result["reason"] and evals[-1] > min(evals), (result, evals)
    assert run["eval_loss"] == pytest.approx(result["eval_loss"]) == pytest.approx(min(evals))
    assert run["loss"] == pytest.approx(result["final_loss"])
    average = result["tokens_seen"] / result["train_seconds"]
    assert run["tokens_per_s"] == pytest.approx(average, abs=0.1)
    kept = read_json(folder / "metadata.json")["metrics"]
    assert kept["eval_loss"] == pytest.approx(min(evals)) and kept["tokens_per_s"] == pytest.approx(average, abs=0.1)
    table = overnight("compare", run["id"], other["id"], home=home, check=True).stdout
    row = next(line for line in table.splitlines() if run["id"] in line)
    assert f"{min(evals):.3f}" in row and fmt_rate(round(average, 1)) in row, table


def test_long_references_are_answered_in_full_and_a_one_token_sample_scores_nothing(tmp_path: Path,
                                                                                    tiny_model: Path) -> None:
    """probe_max_new_tokens = 4 and an 8-word reference: the eval report and the (automatic) snapshots generate
    past it, so the learned answer is exact; a forgetting_sample of one token stores no loss of 0.0, and says why."""
    (tmp_path / "evals.jsonl").write_text(jsonl([{"prompt": "say one:", "reference": LONG}]))
    (tmp_path / "one.txt").write_text("a")  # one token
    run = make_run(tmp_path, tiny_model, dataset_name="long.jsonl",
                   content=jsonl([{"prompt": "say one:", "completion": f" {LONG}"}] * 16),
                   schema="prompt_completion", records=16, probes=jsonl([{"prompt": "say one:", "reference": LONG}]),
                   options={"max_steps": 40, "learning_rate": 5e-3, "lora_r": 32, "lora_alpha": 64,
                            "lora_dropout": 0.0, "batch_size": 8, "max_length": 32, "save_every": 100,
                            "eval_fraction": 0, "probe_every": 0, "probe_max_new_tokens": 4, "prompt_format": "raw",
                            "eval_file": "evals.jsonl", "forgetting_sample": "one.txt"})
    assert train(run, timeout=300) == 0
    console = (run / "console.log").read_text()
    assert ("eval report: 1 of 1 record(s) have a reference longer than probe_max_new_tokens = 4 tokens: each is "
            "answered up to its reference's length + 8 tokens") in console, console[-3000:]
    assert "evolution: 1 probe reference(s) longer than probe_max_new_tokens = 4 tokens: snapshots generate up to " \
        in console
    report = read_json(run / "eval_report.json")
    assert report["eval"]["answers"][0]["version"] == LONG, report["eval"]["answers"]
    assert report["eval"]["scores"]["version"]["exact"] == 1.0
    last = max(r["step"] for r in map(json.loads, (run / "evolution.jsonl").read_text().splitlines()))
    final = [json.loads(x) for x in (run / "evolution.jsonl").read_text().splitlines() if json.loads(x)["step"] == last]
    assert final[0]["exact"] and final[0]["generation"] == LONG

    forgetting = report["forgetting"]
    assert forgetting["loss"] == {"version": None, "base": None} and forgetting["score"] is None
    assert forgetting["note"] == "sample too short: one.txt is under 2 tokens"
    assert "forgetting n/a (sample too short: one.txt is under 2 tokens)" in console


def test_a_continuation_in_a_copied_home_is_scored_on_the_copys_eval_file(tmp_path: Path, tiny_model: Path) -> None:
    """The parent's report recorded its eval file under the home it was made in: a copy of that home scores the
    child on the copy's file, never on the original's."""
    home = tmp_path / "home"
    for d in ("inbox", "control", "runs"):
        (home / d).mkdir(parents=True)
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    records = reversal_records(40)
    (home / "inbox" / "task.eval.jsonl").write_text(jsonl([{"prompt": r["prompt"], "reference": r["completion"]}
                                                           for r in records[:2]]))
    _write(home / "inbox", "task", records, SHORT)
    overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600, check=True)
    copy = tmp_path / "copy"
    shutil.copytree(home, copy, symlinks=True)
    parent = Path(_runs(home)["task"]["run_dir"])
    # the original's eval file changes after the copy: the copy's child must not read it
    (parent / "dataset" / "task.eval.jsonl").write_text(jsonl([{"prompt": r["prompt"], "reference": r["completion"]}
                                                               for r in records[:3]]))
    _write(copy / "inbox", "task", records, SHORT + 'init_adapter = "task"\n')
    overnight("daemon", "--once", "--settle", "0.2", home=copy, timeout=600, check=True)
    child = next(r for r in json.loads(overnight("runs", "--json", home=copy, check=True).stdout)
                 if r["state"] == "completed" and Path(r["run_dir"]).name != parent.name)
    report = read_json(Path(child["run_dir"]) / "eval_report.json")
    assert report["parent"] == "task:1" and report["eval"]["records"] == 2, report["eval"]
    assert Path(report["eval"]["file"]) == copy / "runs" / parent.name / "dataset" / "task.eval.jsonl"
