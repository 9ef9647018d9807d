"""The eval report's inputs and how it is judged and shown: NAME.eval.jsonl and the owner's eval_file checked as
`overnight check` and the inbox check them (file, line, fix), the forgetting score and the alarm's rule, and a
report's summary as `overnight models` prints it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.core import evalreport, render
from daemon.core.errors import DatasetError, OptionsError
from daemon.core.evalfile import load_eval_file
from daemon.core.options import load_home_toml, load_sidecar
from tests.conftest import overnight

RECORDS = "".join(json.dumps({"prompt": f"say {w}:", "completion": f" {w}"}) + "\n" for w in ("star", "tea", "back"))


@pytest.mark.parametrize("text, expected", [
    ('{"prompt": "a", "reference": "b"}\n{"prompt": "a"\n', ["line 2", "malformed JSON", "Fix:"]),
    ('{"prompt": "a", "reference": ""}\n', ["line 1", "'reference'", "Fix:"]),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n', ["line 1", "preference record", "Fix:"]),
    ('{"text": "just text"}\n', ["line 1", "text record", "Fix:"]),
    ("\n\n", ["empty", "Fix:"]),
])
def test_a_bad_eval_file_names_the_file_the_line_and_the_fix(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "task.eval.jsonl"
    path.write_text(text)
    with pytest.raises(DatasetError) as e:
        load_eval_file(path)
    assert str(e.value).startswith(str(path))
    for part in expected:
        assert part in str(e.value)


def test_eval_records_are_prompts_or_any_supervised_record_with_an_answer(tmp_path: Path) -> None:
    path = tmp_path / "task.eval.jsonl"
    path.write_text(json.dumps({"prompt": "2+2=", "reference": "4"}) + "\n"
                    + json.dumps({"instruction": "name a colour", "input": "", "output": "red"}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "hello"}]}) + "\n")
    records = load_eval_file(path)
    assert [(r["id"], r["reference"]) for r in records] == [(0, "4"), (1, "red"), (2, "hello")]
    assert records[2]["messages"] == [{"role": "user", "content": "hi"}]


def test_check_reads_the_eval_file_beside_a_dataset_as_the_inbox_would(home: Path, tiny_model: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "task.jsonl").write_text(RECORDS)
    (home / "task.eval.jsonl").write_text('{"prompt": "say star:", "reference": "star"}\n{"prompt": 3}\n')
    out = overnight("check", str(home / "task.jsonl"), home=home)
    assert out.returncode == 1 and "task.eval.jsonl, line 2" in out.stdout and "Fix:" in out.stdout, out.stdout

    (home / "task.eval.jsonl").write_text('{"prompt": "say star:", "reference": "star"}\n')
    out = overnight("check", str(home / "task.jsonl"), home=home)
    assert out.returncode == 0 and "eval file: task.eval.jsonl (1 records" in out.stdout, out.stdout
    alone = overnight("check", str(home / "task.eval.jsonl"), home=home)
    assert alone.returncode == 0 and "1 eval records" in alone.stdout, alone.stdout

    # the owner's eval_file is checked at every drop, relative to the home
    (home / "task.eval.jsonl").unlink()
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\neval_file = "missing.jsonl"\n')
    out = overnight("check", str(home / "task.jsonl"), home=home)
    assert out.returncode == 1 and "eval_file = 'missing.jsonl'" in out.stdout and "Fix:" in out.stdout, out.stdout
    # ... and by the check of overnight.toml itself; the daemon keeps drops waiting (not rejected) meanwhile, as for a
    # broken overnight.toml, and takes them once the file is there
    out = overnight("check", str(home / "overnight.toml"), home=home)
    assert out.returncode == 1 and "eval_file = 'missing.jsonl'" in out.stdout, out.stdout
    (home / "control" / "stop").write_text("")  # intake only
    (home / "inbox" / "task.jsonl").write_text(RECORDS)
    overnight("daemon", "--once", "--settle", "0.1", "--quiet", home=home, check=True, timeout=120)
    assert (home / "inbox" / "task.jsonl").exists() and not list((home / "inbox" / "rejected").glob("task*"))
    assert "eval_file = 'missing.jsonl'" in (home / "overnight.log").read_text()
    (home / "missing.jsonl").write_text('{"prompt": "say star:", "reference": "star"}\n')
    overnight("daemon", "--once", "--settle", "0.1", "--quiet", home=home, check=True, timeout=120)
    assert not (home / "inbox" / "task.jsonl").exists()


def test_check_refuses_a_forgetting_sample_that_is_empty_not_utf8_or_too_short(home: Path, tiny_model: Path) -> None:
    """An empty sample, or one too short for a loss that means anything (a word: one token predicts nothing), would
    leave every version's forgetting score `n/a`, unexplained."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nforgetting_sample = "prose.txt"\n')
    for content, said in ((b"  \n", "is empty"), ("caf\u00e9".encode("latin-1"), "cannot be read as UTF-8"),
                          (b"a\n", "holds 1 character(s): too little text to score (the forgetting score needs 200 "
                                   "characters or more")):
        (home / "prose.txt").write_bytes(content)
        out = overnight("check", str(home / "overnight.toml"), home=home)
        assert out.returncode == 1 and "forgetting_sample = 'prose.txt'" in out.stdout and said in out.stdout \
            and "Fix:" in out.stdout, out.stdout
    (home / "prose.txt").write_text("The river ran past the mill, and the miller watched it from the door. " * 3)
    assert overnight("check", str(home / "overnight.toml"), home=home).returncode == 0


def test_the_report_options_are_the_owners_and_checked(tmp_path: Path) -> None:
    sidecar = tmp_path / "task.toml"
    sidecar.write_text('forgetting_alarm = 0.5\n')
    with pytest.raises(OptionsError, match="forgetting_alarm"):
        load_sidecar(sidecar)  # owner-only: a drop may not loosen the alarm
    toml = tmp_path / "overnight.toml"
    toml.write_text('forgetting_alarm = -1\n')
    with pytest.raises(OptionsError, match="forgetting_alarm"):
        load_home_toml(toml)
    sidecar.write_text('select_metric = "bleu"\n')
    with pytest.raises(OptionsError, match='"rougeL"'):
        load_sidecar(sidecar)
    sidecar.write_text('select_metric = "rougeL"\nallow_regressed = true\n')
    assert load_sidecar(sidecar) == {"select_metric": "rougeL", "allow_regressed": True}


def test_the_alarm_fires_on_a_lost_answer_or_a_forgetting_score_past_the_threshold() -> None:
    items = [{"prompt": "a", "reference": "x y", "parent": "x y", "version": "z"},     # lost
             {"prompt": "b", "reference": "x y", "parent": "x  y", "version": "x y"},  # kept (whitespace)
             {"prompt": "c", "reference": "x y", "parent": "q", "version": "q"}]       # never known
    lost = evalreport.lost(items, "probe")
    assert [x["prompt"] for x in lost] == ["a"] and lost[0]["parent_answer"] == "x y" and lost[0]["answer"] == "z"
    assert evalreport.alarm(lost, 0.0, 0.1) == ["1 probe(s) its parent answered right are now wrong"]
    assert evalreport.forgetting_score(4.0, 4.6) == pytest.approx(0.15)
    why = evalreport.alarm([], evalreport.forgetting_score(4.0, 4.6), 0.1)
    assert len(why) == 1 and "+15.00%" in why[0] and "forgetting_alarm = 0.1" in why[0]
    # forgetting_alarm = 0: a score that rounds to +0.0% is shown as what it is
    assert "forgetting score +0.04% (general-text loss), past forgetting_alarm = 0" in evalreport.alarm([], 0.0004, 0)[0]
    assert evalreport.alarm([], evalreport.forgetting_score(4.0, 4.2), 0.1) == []


def test_models_shows_the_scores_the_forgetting_and_what_a_regressed_version_lost() -> None:
    report = {"parent": "task:1", "eval": {"records": 4, "scores": {
        "version": {"exact": 0.25, "similarity": 0.5, "rougeL": 0.4},
        "parent": {"exact": 1.0, "similarity": 1.0, "rougeL": 1.0},
        "base": {"exact": 0.0, "similarity": 0.1, "rougeL": 0.0}}},
        "forgetting": {"score": 0.031, "before": "parent"},
        "lost": [{"source": "probe", "prompt": "name of star:", "reference": "tea back", "parent_answer": "tea back",
                  "answer": ""}], "regressed": True, "why": ["1 probe(s) its parent answered right are now wrong"]}
    row = {"name": "task", "version": 2, "run_id": "task-2", "base_model": "/m/tiny", "active": 0, "deleted": None,
           "parent": "task:1", "adapter_path": "/x", "metrics": {"final_loss": 1.0,
                                                                  "report": evalreport.summary(report)}}
    text = render.models([row])
    assert "eval (4 records): exact 0.25 sim 0.50 rougeL 0.40  parent exact 1.00" in text
    assert "forgetting +3.1% (general-text loss vs the parent)" in text
    assert "REGRESSED: 1 probe(s) its parent answered right are now wrong" in text
    assert "lost probe: 'name of star:' → 'tea back' (parent: 'tea back', now: '')" in text
    # a sample too short to score: n/a with why, not silence
    short = {**report, "forgetting": {"score": None, "note": "sample too short: one.txt is under 2 tokens"}}
    row["metrics"]["report"] = evalreport.summary(short)
    assert "forgetting n/a (sample too short: one.txt is under 2 tokens)" in render.models([row])


def _group(tmp_path: Path, options: dict, reports: list[tuple[float, float, bool]]):
    """A finished group of three runs with `select = "best"`, each with an eval report (eval loss, ROUGE-L,
    regressed), each registered as the daemon registers it."""
    from daemon.engine import registry
    from daemon.engine.store import Store

    store = Store(tmp_path / "overnight.db")
    for i, (eval_loss, rouge, regressed) in enumerate(reports, 1):
        run_dir = tmp_path / "runs" / f"task-r{i}"
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps({"options": {"select": "best", **options}}))
        (run_dir / "eval_report.json").write_text(json.dumps({
            "eval": {"records": 4, "scores": {"version": {"exact": rouge / 2, "similarity": rouge, "rougeL": rouge}}},
            "forgetting": {"score": 0.01 * i, "before": "base"}, "lost": [], "regressed": regressed,
            "why": ["2 probe(s) its parent answered right are now wrong"] if regressed else []}))
        store.insert_run({"id": f"task-r{i}", "name": "task", "group_id": "task-g", "state": "completed",
                          "seq": i, "run_dir": str(run_dir), "base_model": "/m", "eval_loss": eval_loss, "loss": 1.0})
        registry.register(store, store.get_run(f"task-r{i}"), activate=False)
    return store


def _select(store) -> tuple[str | None, int | None]:
    from daemon.core import sweep

    said = sweep.on_group_ended(store, "task-g", lambda r: json.loads(
        (Path(r["run_dir"]) / "config.json").read_text())["options"], lambda r: 0)
    active = [m["version"] for m in store.models("task") if m["active"]]
    return said, active[0] if active else None


@pytest.mark.parametrize("options, version, words", [
    ({}, 1, "eval loss 1.0000; best of 2; 1 regressed"),                       # eval loss, as before
    ({"select_metric": "rougeL"}, 3, "eval ROUGE-L 0.8000; best of 2; 1 regressed"),  # v2 is best but regressed
    ({"select_metric": "rougeL", "allow_regressed": True}, 2, "eval ROUGE-L 0.9000; best of 3"),
    ({"select_metric": "forgetting"}, 1, "forgetting score 0.0100"),
])
def test_select_best_ranks_by_select_metric_and_never_picks_a_regressed_version(tmp_path, options, version, words):
    store = _group(tmp_path, options, [(1.0, 0.5, False), (1.2, 0.9, True), (1.3, 0.8, False)])
    said, active = _select(store)
    assert active == version and words in said, said


def test_a_child_is_scored_on_its_own_eval_file_else_its_parents_else_the_owners(tmp_path: Path) -> None:
    from daemon.trainer.report import eval_file_of

    run, home = tmp_path / "run", tmp_path / "home"
    parents = tmp_path / "parent.eval.jsonl"
    parents.write_text('{"prompt": "a", "reference": "b"}\n')
    (home / "evals").mkdir(parents=True)
    (home / "evals" / "x.jsonl").write_text('{"prompt": "c", "reference": "d"}\n')
    report = {"eval": {"file": str(parents)}}
    assert eval_file_of(run, "dataset/t.eval.jsonl", report, "evals/x.jsonl", home) == run / "dataset/t.eval.jsonl"
    assert eval_file_of(run, None, report, "evals/x.jsonl", home) == parents
    assert eval_file_of(run, None, {}, "evals/x.jsonl", home) == home / "evals" / "x.jsonl"
    assert eval_file_of(run, None, {}, None, home) is None
