"""Preference data (issue 24) through the user's interfaces: `overnight check` on every accepted form says the
schema, the pair count and the objective; every lint case is refused with the record's place and the Fix; a bad
preference drop is moved to inbox/rejected/ byte-identical by a real daemon pass, a good one queued."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from daemon.client.cli import main
from tests.conftest import REALDATA, overnight


def U(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def A(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


PAIRS = [{"prompt": "reverse: a b c", "chosen": "c b a", "rejected": "b a c"},
         {"prompt": "reverse: x y z", "chosen": "z y x", "rejected": "x z y"}]
KTO = [{"prompt": "reverse: a b c", "completion": "c b a", "label": True},
       {"prompt": "reverse: a b c", "completion": "a c b", "label": False},
       {"prompt": "reverse: x y", "completion": "y x", "label": True}]
SGPT = {"conversations": [{"from": "human", "value": "reverse: a b"}], "chosen": {"from": "gpt", "value": "b a"},
        "rejected": {"from": "gpt", "value": "a b"}}

# name → (file text, schema, records, objective)
FORMS = {
    "text.jsonl": (jsonl(PAIRS), "preference", 2, "dpo"),
    "explicit.jsonl": (jsonl([{"prompt": [U("hi"), A("hello"), U("reverse: a b")], "chosen": [A("b a")],
                               "rejected": [A("a b")]}]), "preference", 1, "dpo"),
    "implicit.jsonl": (jsonl([{"chosen": [U("reverse: a b"), A("b a")], "rejected": [U("reverse: a b"), A("a b")]},
                              {"chosen": [U("hi"), A("yo"), U("reverse: c d"), A("d c")],
                               "rejected": [U("hi"), A("yo"), U("reverse: c d"), A("c d")]}]),
                       "preference_implicit", 2, "dpo"),
    "alpaca.json": (json.dumps([{"instruction": "reverse the words", "input": "a b", "system": "Be terse.",
                                 "chosen": "b a", "rejected": "a b"},
                                {"instruction": "reverse: c d", "chosen": "d c", "rejected": "c d"}]),
                    "alpaca_preference", 2, "dpo"),
    "sharegpt.json": (json.dumps([SGPT, {**SGPT, "system": "Be terse."}]), "sharegpt_preference", 2, "dpo"),
    "pairs.csv": ("prompt,chosen,rejected\nreverse: a b,b a,a b\nreverse: c d,d c,c d\n", "preference", 2, "dpo"),
    "kto.jsonl": (jsonl(KTO), "kto", 3, "kto"),
    "ktochat.jsonl": (jsonl([{"prompt": [U("reverse: a b")], "completion": [A("b a")], "label": True},
                             {"prompt": [U("reverse: a b")], "completion": [A("a b")], "label": False}]),
                      "kto", 2, "kto"),
    "kto.csv": ("prompt,completion,label\nreverse: a b,b a,true\nreverse: a b,a b,false\n", "kto", 2, "kto"),
}


def check(*args: str, home: Path) -> Any:
    return CliRunner().invoke(main, ["check", *args, "--home", str(home)])


@pytest.fixture
def model_home(home: Path, tiny_model: Path) -> Path:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    return home


@pytest.mark.parametrize("name", list(FORMS))
def test_check_accepts_every_preference_form_and_says_schema_pairs_and_objective(model_home: Path, tmp_path: Path,
                                                                                 name: str) -> None:
    text, schema, records, objective = FORMS[name]
    (tmp_path / name).write_text(text)
    r = check(str(tmp_path / name), home=model_home)
    assert r.exit_code == 0, r.output
    what = "(labelled completions)" if objective == "kto" else "(preference pairs)"
    assert f"schema: {schema}   records: {records} {what}" in r.output, r.output
    assert f"objective: {objective} (auto: the records are " in r.output
    assert "batching: padded at batch 8 (preference examples are padded per batch by TRL's collator" in r.output
    data = json.loads(check("--json", str(tmp_path / name), home=model_home).output)[0]
    assert data["ok"] and data["objective"] == objective and data["report"]["schema"] == schema


def test_check_show_renders_the_prompt_with_each_answer_through_the_chat_template(model_home: Path,
                                                                                  tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text(jsonl(PAIRS))
    r = check("--show", "1", str(tmp_path / "p.jsonl"), home=model_home)
    assert r.exit_code == 0, r.output
    assert "--- example 1: record 1, chosen (" in r.output and "--- example 2: record 1, rejected (" in r.output
    assert "--- example 3" not in r.output
    assert "[[c b a<|im_end|>]]" in r.output and "[[b a c<|im_end|>]]" in r.output
    assert r.output.count("<|im_start|>user\nreverse: a b c<|im_end|>") == 2
    shown = json.loads(check("--json", "--show", "1", str(tmp_path / "p.jsonl"), home=model_home).output)[0]
    chosen, rejected = shown["examples"]
    assert [s["text"] for s in chosen if s["train"]] == ["c b a<|im_end|>"]
    assert [s["text"] for s in rejected if s["train"]] == ["b a c<|im_end|>"]
    assert chosen[0]["text"].count("<|im_start|>") == rejected[0]["text"].count("<|im_start|>")  # no doubled BOS
    assert shown["example_of"] == ["record 1, chosen", "record 1, rejected"]
    (tmp_path / "k.jsonl").write_text(jsonl(KTO))
    r = check("--show", "2", str(tmp_path / "k.jsonl"), home=model_home)
    labels = [f"record {i}, label {'true (desirable)' if k['label'] else 'false (undesirable)'}"
              for i, k in enumerate(KTO[:2], 1)]
    assert all(f"--- example {i}: {label} (" in r.output for i, label in enumerate(labels, 1)), r.output


# name → (file text, place, field, problem, fix)
LINT = {
    "identical.jsonl": (jsonl([PAIRS[0], {"prompt": "p", "chosen": "same", "rejected": "same"}]), "line 2",
                        "rejected", "chosen and rejected are identical", "make 'rejected' the worse answer"),
    "prefix.jsonl": (jsonl([{"chosen": [U("reverse: a b"), A("b a")], "rejected": [U("reverse: a c"), A("c a")]}]),
                     "line 1", "rejected[0]", "prompts differ at turn 0: chosen[0] is user 'reverse: a b', "
                     "rejected[0] is user 'reverse: a c'", "the very same turns up to the last user turn"),
    "emptyside.jsonl": (jsonl([PAIRS[0], PAIRS[1], {"prompt": "p", "chosen": "ok", "rejected": " "}]), "line 3",
                        "rejected", "the rejected answer is empty", "fill in 'rejected'"),
    "noturn.jsonl": (jsonl([{"prompt": [U("q")], "chosen": [], "rejected": [A("b")]}]), "line 1", "chosen",
                     "empty (no assistant turn)", "give 'chosen' the assistant's answer"),
    "notassistant.jsonl": (jsonl([{"prompt": [U("q")], "chosen": [U("a")], "rejected": [A("b")]}]), "line 1",
                           "chosen[0].role", "holds a user turn: the answers compared must be the assistant's",
                           "keep only the assistant's answer in 'chosen'"),
    "sgptrole.json": (json.dumps([{**SGPT, "chosen": {"from": "human", "value": "b a"}}]), "record 1 (line 1)",
                      "chosen.from", "holds a user turn", "from \"gpt\""),
    "endsanswer.jsonl": (jsonl([{"prompt": [U("q"), A("a")], "chosen": [A("b")], "rejected": [A("c")]}]),
                         "line 1", "prompt", "ends with an assistant turn", "end 'prompt' with the user turn"),
    "mixed.jsonl": (jsonl([PAIRS[0], {"prompt": "2+2=", "completion": "4"}]), "line 2", None,
                    "mixed schemas: this record looks like prompt_completion", "one file, one objective"),
    "mixed2.jsonl": (jsonl([{"prompt": "2+2=", "completion": "4"}, PAIRS[0]]), "line 2", None,
                     "first record is prompt_completion", "one file, one objective"),
    "onelabel.jsonl": (jsonl([{**k, "label": True} for k in KTO]), None, "label",
                       "all 3 records are labelled true (3 true, 0 false)", "add records labelled false"),
    "labeltype.jsonl": (jsonl([KTO[0], {**KTO[1], "label": "no"}]), "line 2", "label",
                        "'label' must be true or false, got a string \"no\"", "write 'label' as a JSON boolean"),
    "labelnum.jsonl": (jsonl([KTO[0], {**KTO[1], "label": 1}]), "line 2", "label",
                       "'label' must be true or false, got a number (1).\n", "write 'label' as a JSON boolean"),
    "labelcell.csv": ("prompt,completion,label\nreverse: a b,b a,true\nreverse: a b,a b,yes\n", "row 3", "label",
                      "'label' must be true or false, got a string \"yes\"", "write true or false in the 'label' column"),
}


@pytest.mark.parametrize("name", list(LINT))
def test_every_lint_case_is_refused_with_the_place_and_the_fix(home: Path, tmp_path: Path, name: str) -> None:
    text, place, field, problem, fix = LINT[name]
    (tmp_path / name).write_text(text)
    r = check(str(tmp_path / name), home=home)
    assert r.exit_code == 1, r.output
    first = f"{name}, {place}" if place else name
    first += f", field '{field}': " if field else ": "
    assert first in r.output and problem in r.output, r.output
    assert "Fix: " in r.output and fix in r.output.split("Fix: ", 1)[1], r.output
    assert "Traceback" not in r.output


def test_pairs_whose_prompt_fills_max_length_are_dropped_as_counted_and_refused_past_half(model_home: Path,
                                                                                         tmp_path: Path) -> None:
    """As the trainer does: such a pair is dropped (LLaMA-Factory's dpo_en_demo has long prompts); more than half
    of the records lost is refused, with the count and the fix, unless allow_truncation says it is meant."""
    long = {"prompt": "w " * 40, "chosen": "a", "rejected": "b"}
    (tmp_path / "long.jsonl").write_text(jsonl([PAIRS[0], PAIRS[1], long]))
    (tmp_path / "long.toml").write_text("max_length = 24\n")
    r = check(str(tmp_path / "long.jsonl"), home=model_home)
    assert r.exit_code == 0, r.output
    assert "record(s) cut, 1 of them dropped (nothing of their answer left to learn)" in r.output
    (tmp_path / "long.jsonl").write_text(jsonl([PAIRS[0], long, long]))
    r = check(str(tmp_path / "long.jsonl"), home=model_home)
    assert r.exit_code == 1, r.output
    assert "long.jsonl: 2 of 3 records would be dropped: cut to max_length = 24 tokens" in r.output
    assert "Fix: raise max_length (the longest record has " in r.output and "allow_truncation = true" in r.output
    (tmp_path / "long.toml").write_text("max_length = 24\nallow_truncation = true\n")
    assert check(str(tmp_path / "long.jsonl"), home=model_home).exit_code == 0


def test_pairs_identical_once_cut_are_noted_and_refused_past_half(model_home: Path, tmp_path: Path) -> None:
    cut = {"prompt": "reverse", "chosen": "x " * 30 + "a", "rejected": "x " * 30 + "b"}
    (tmp_path / "cut.jsonl").write_text(jsonl([PAIRS[0], PAIRS[1], cut]))
    (tmp_path / "cut.toml").write_text("max_length = 24\n")
    r = check(str(tmp_path / "cut.jsonl"), home=model_home)
    assert r.exit_code == 0, r.output
    assert "note: 1 pair(s) become identical once cut to max_length = 24 tokens" in r.output
    (tmp_path / "cut.jsonl").write_text(jsonl([PAIRS[0], cut, cut]))
    r = check(str(tmp_path / "cut.jsonl"), home=model_home)
    assert r.exit_code == 1 and "cut.jsonl: 2 pair(s) would become identical: cut to max_length = 24" in r.output, \
        r.output


@pytest.mark.parametrize("data, objective, says", [
    (jsonl([{"prompt": "2+2=", "completion": "4"}]), "dpo",
     'objective = "dpo" (set in d.toml) trains on preference pairs'),
    (jsonl(PAIRS), "sft", 'objective = "sft" (set in d.toml) trains on supervised examples'),
    (jsonl(PAIRS), "kto", 'objective = "kto" (set in d.toml) trains on labelled completions'),
    (jsonl(KTO), "dpo", "but the records are labelled completions"),
])
def test_an_objective_that_does_not_fit_the_data_is_refused(model_home: Path, tmp_path: Path, data: str,
                                                             objective: str, says: str) -> None:
    (tmp_path / "d.jsonl").write_text(data)
    (tmp_path / "d.toml").write_text(f'objective = "{objective}"\n')
    r = check(str(tmp_path / "d.jsonl"), home=model_home)
    assert r.exit_code == 1 and "d.jsonl: objective = " in r.output and says in r.output, r.output
    assert "Fix: set objective = " in r.output


def test_an_objective_that_fits_is_said_as_set(model_home: Path, tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text(jsonl(PAIRS))
    (tmp_path / "d.toml").write_text('objective = "dpo"\nbeta = [0.1, 0.3]\nloss_type = "ipo"\n')
    r = check(str(tmp_path / "d.jsonl"), home=model_home)
    assert r.exit_code == 0 and "objective: dpo (set in the options)" in r.output, r.output
    assert "sweep: 2 runs in one group (beta: 2 values): beta0.1, beta0.3" in r.output


def test_probes_beside_a_preference_dataset_are_pairs_of_its_schema(model_home: Path, tmp_path: Path) -> None:
    (tmp_path / "p.jsonl").write_text(jsonl(PAIRS))
    (tmp_path / "p.probes.jsonl").write_text(jsonl([{"prompt": "reverse: q r", "chosen": "r q", "rejected": "q r"}]))
    r = check(str(tmp_path / "p.jsonl"), home=model_home)
    assert r.exit_code == 0 and "probes: p.probes.jsonl (1 probe)" in r.output, r.output
    (tmp_path / "p.probes.jsonl").write_text(jsonl([{"prompt": "reverse: q r", "reference": "r q"}]))
    r = check(str(tmp_path / "p.jsonl"), home=model_home)
    assert r.exit_code == 1 and "p.probes.jsonl, line 1: the probe is a supervised probe" in r.output, r.output
    assert "the dataset p.jsonl holds a preference pair (chosen/rejected)" in r.output and "Fix: " in r.output
    alone = check(str(tmp_path / "p.probes.jsonl"), home=model_home)  # checked on its own: as beside its dataset
    assert alone.exit_code == 1 and "the dataset p.jsonl holds a preference pair" in alone.output, alone.output
    (tmp_path / "s.jsonl").write_text(jsonl([{"prompt": "2+2=", "completion": "4"}]))
    (tmp_path / "s.probes.jsonl").write_text(jsonl(PAIRS))
    r = check(str(tmp_path / "s.jsonl"), home=model_home)
    assert r.exit_code == 1 and "the probe is a preference pair (chosen/rejected), but the dataset s.jsonl holds " \
                                "supervised examples" in r.output, r.output


def test_the_realdata_dpo_demo_is_accepted_as_sharegpt_preference(home: Path, tmp_path: Path) -> None:
    """LLaMA-Factory's DPO demo, checked before a base model is chosen (a chat template named: its conversations
    are rendered through it)."""
    (tmp_path / "dpo_en_demo.json").write_bytes((REALDATA / "dpo_en_demo.json").read_bytes())
    (tmp_path / "dpo_en_demo.toml").write_text('chat_template = "chatml"\n')
    r = check(str(tmp_path / "dpo_en_demo.json"), home=home)
    assert r.exit_code == 0, r.output
    assert "schema: sharegpt_preference   records: 300 (preference pairs)" in r.output
    assert "objective: dpo (auto: the records are preference pairs (chosen/rejected))" in r.output


def test_a_kto_probe_labelled_false_is_refused_with_the_fix(model_home: Path, tmp_path: Path) -> None:
    (tmp_path / "k.jsonl").write_text(jsonl(KTO))
    (tmp_path / "k.probes.jsonl").write_text(jsonl(KTO[:2]))
    r = check(str(tmp_path / "k.jsonl"), home=model_home)
    assert r.exit_code == 1 and "k.probes.jsonl, line 2, field 'label': the probe is labelled false" in r.output, \
        r.output
    assert "Fix: keep only probes labelled true" in r.output


@pytest.mark.e2e
def test_a_daemon_pass_rejects_bad_preference_drops_byte_identical_and_queues_good_ones(model_home: Path,
                                                                                      tmp_path: Path) -> None:
    home = model_home
    (home / "control" / "stop").write_text("")  # intake only: nothing trains
    bad = {name: LINT[name][0].encode() for name in ("identical.jsonl", "prefix.jsonl", "mixed.jsonl",
                                                      "onelabel.jsonl", "labeltype.jsonl")}
    bad["wrongobj.jsonl"] = jsonl(PAIRS).encode()
    good = {"pairs.jsonl": jsonl(PAIRS).encode(), "kto.jsonl": jsonl(KTO).encode(),
            "sharegpt.json": FORMS["sharegpt.json"][0].encode()}
    for name, data in {**bad, **good}.items():
        (home / "inbox" / name).write_bytes(data)
    (home / "inbox" / "wrongobj.toml").write_text('objective = "kto"\n')
    checked = {n: check(str(home / "inbox" / n), home=home).output for n in bad}
    assert overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=300).returncode == 0
    rejected = home / "inbox" / "rejected"
    for name, data in bad.items():
        assert (rejected / name).read_bytes() == data, name
        error = (rejected / f"{Path(name).stem}.error.txt").read_text()
        assert "Fix" in error and "Traceback" not in error, error
        assert error.splitlines()[0] in checked[name], (name, error, checked[name])
    schemas = {}
    for run in (home / "runs").iterdir():
        config = json.loads((run / "config.json").read_text())
        schemas[config["dataset"]["file"]] = config["dataset"]["schema"]
    assert schemas == {"pairs.jsonl": "preference", "kto.jsonl": "kto", "sharegpt.json": "sharegpt_preference"}


@pytest.mark.parametrize("sidecar, says", [
    ('loss_type = ["sigmoid", "ipo"]\nselect = "best"\n', 'select = "best" ranks by eval_loss'),
    ('loss_type = ["sigmoid", "ipo"]\nbeta = [0.1, 0.3]\nprune = "asha"\n', 'prune = "asha" compares trials'),
    ('loss_type = {choices = ["sigmoid", "ipo"]}\nsearch = "random"\ntrials = 2\n', "the search tells its sampler"),
])
def test_loss_types_compared_by_their_loss_are_refused(model_home: Path, tmp_path: Path, sidecar: str,
                                                      says: str) -> None:
    """Each loss type measures on its own scale: whatever ranks a drop's runs by loss would pick the smallest-reading."""
    (tmp_path / "d.jsonl").write_text(jsonl(PAIRS * 4))
    (tmp_path / "d.toml").write_text(sidecar)
    r = check(str(tmp_path / "d.jsonl"), home=model_home)
    assert r.exit_code == 1 and says in r.output and "measure their loss on different scales" in r.output, r.output
    (tmp_path / "d.toml").write_text('loss_type = ["sigmoid", "ipo"]\n')  # a grid compared by a person: taken
    assert check(str(tmp_path / "d.jsonl"), home=model_home).exit_code == 0
