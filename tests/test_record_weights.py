"""Per-message training weights (OpenAI's fine-tuning format: "weight" 0 or 1 on assistant messages; "loss_weight"
as some converters write it): an assistant turn weighted 0 is rendered as context and not trained, in what
`overnight check --show` shows and in what the trainer's labels hold; any other weight is refused with the place
and the fix."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from daemon.core.datasets import DatasetError, inspect_dataset, iter_examples
from tests.conftest import overnight

IM_END = "<|im_end|>"


def jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def talk(first: dict[str, Any], second: dict[str, Any] | None = None) -> dict[str, Any]:
    """Two exchanges; `first` and `second` extra keys of the two assistant turns."""
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "BAD ANSWER", **first}, {"role": "user", "content": "again"},
                         {"role": "assistant", "content": "GOOD ANSWER", **(second or {})}]}


def sharegpt(first: dict[str, Any]) -> dict[str, Any]:
    return {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "BAD ANSWER", **first},
                              {"from": "human", "value": "again"}, {"from": "gpt", "value": "GOOD ANSWER"}]}


def trained_of(verdict: dict[str, Any]) -> list[list[str]]:
    return [[s["text"] for s in example if s["train"]] for example in verdict["examples"]]


def test_a_turn_weighted_0_is_shown_as_context_not_trained(home: Path, tiny_model: Path, tmp_path: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    records = [talk({"weight": 0}, {"weight": 1}), talk({"loss_weight": 0.0}), talk({"weight": 0, "loss_weight": 0})]
    res = overnight("check", str(jsonl(tmp_path / "weighted.jsonl", records)), "--show", "3", "--json", home=home)
    assert res.returncode == 0, res.stdout + res.stderr
    verdict = json.loads(res.stdout)[0]
    assert trained_of(verdict) == [["GOOD ANSWER" + IM_END]] * 3
    shown = "".join(s["text"] for s in verdict["examples"][0])
    assert "<|im_start|>assistant\nBAD ANSWER<|im_end|>" in shown  # the model still sees it, as context
    assert ("3 assistant turn(s) weighted 0 ('weight' or 'loss_weight'): kept as context, not trained"
            in verdict["report"]["notes"]), verdict["report"]["notes"]
    human = overnight("check", str(tmp_path / "weighted.jsonl"), "--show", "1", home=home).stdout
    assert "BAD ANSWER<|im_end|>" in human and "[[BAD" not in human and "[[GOOD ANSWER<|im_end|>]]" in human, human


def test_a_sharegpt_turn_weighted_0_is_not_trained(home: Path, tiny_model: Path, tmp_path: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    data = tmp_path / "share.json"
    data.write_text(json.dumps([sharegpt({"weight": 0}), sharegpt({"loss_weight": 0})]))
    res = overnight("check", str(data), "--show", "2", "--json", home=home)
    assert res.returncode == 0, res.stdout + res.stderr
    assert trained_of(json.loads(res.stdout)[0]) == [["GOOD ANSWER" + IM_END]] * 2


def test_the_trainer_labels_leave_a_turn_weighted_0_out(tiny_model: Path, tmp_path: Path) -> None:
    """What check shows is what trains: the trainer's labels of the weighted record hold the second answer only."""
    from transformers import AutoTokenizer

    from daemon.core.templating import choose
    from daemon.trainer.sequences import IGNORE, Encoder

    tok = AutoTokenizer.from_pretrained(tiny_model)
    encoder = Encoder(tok, 1024, "tiny", choose("auto", tiny_model))
    [example] = iter_examples(jsonl(tmp_path / "w.jsonl", [talk({"weight": 0})]))
    encoded = encoder.encode(encoder.shaped(example))
    trained = tok.decode([i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE])
    assert trained == "GOOD ANSWER" + IM_END


def refusal(path: Path) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        inspect_dataset(path)
    return info.value


@pytest.mark.parametrize(("turn", "field", "problem"), [
    ({"weight": 0.5}, "messages[2].weight", "'weight' must be 0 or 1, got a number (0.5)"),
    ({"loss_weight": 2}, "messages[2].loss_weight", "'loss_weight' must be 0 or 1, got a number (2)"),
    ({"weight": "0"}, "messages[2].weight", "'weight' must be 0 or 1, got a string \"0\""),
    ({"weight": False}, "messages[2].weight", "'weight' must be 0 or 1, got a boolean (false)"),
    ({"weight": 0, "loss_weight": 1}, "messages[2]", "'weight' is 0 but 'loss_weight' is 1"),
])
def test_a_weight_other_than_0_or_1_is_refused_with_the_place_and_the_fix(tmp_path: Path, turn: dict, field: str,
                                                                          problem: str) -> None:
    err = refusal(jsonl(tmp_path / "w.jsonl", [talk({}), talk(turn)]))
    assert (err.file, err.location, err.field) == ("w.jsonl", "line 2", field), str(err)
    assert problem in str(err) and "\nFix: " in str(err) and err.fix, str(err)


def test_a_weight_that_would_train_a_users_turn_is_refused(tmp_path: Path) -> None:
    record = talk({})
    record["messages"][1]["weight"] = 1
    err = refusal(jsonl(tmp_path / "w.jsonl", [record]))
    assert (err.location, err.field) == ("line 1", "messages[1].weight"), str(err)
    assert "a user turn has weight 1, but only the assistant's turns are trained" in str(err)
    assert err.fix.startswith("remove 'weight' from the user turn")
    record["messages"][1]["weight"] = 0  # says what happens anyway: accepted
    assert inspect_dataset(jsonl(tmp_path / "w.jsonl", [record])).records == 1


def test_a_null_weight_is_no_weight(tmp_path: Path) -> None:
    """Parquet gives every message of a column the fields any of them has: the others' are null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "w.parquet"
    pq.write_table(pa.Table.from_pylist([talk({"weight": 0}), talk({})]), path)
    first, second = iter_examples(path)
    assert [m.get("weight") for m in first["messages"]] == [None, None, 0, None, None]
    assert all("weight" not in m for m in second["messages"])


def test_a_record_with_every_answer_weighted_0_is_refused(home: Path, tmp_path: Path) -> None:
    data = jsonl(tmp_path / "w.jsonl", [talk({}), talk({"weight": 0}, {"loss_weight": 0})])
    verdict = json.loads(overnight("check", str(data), "--json", home=home).stdout)[0]
    assert not verdict["ok"] and verdict["error"] == (
        "w.jsonl, line 2, field 'messages': every assistant turn has weight 0: there is nothing to train on.\n"
        "Fix: give the assistant turn(s) the model should learn weight 1 (or no weight), or remove the record."), verdict
    err = refusal(jsonl(tmp_path / "s.jsonl", [{"conversations": sharegpt({"weight": 0})["conversations"][:2]}]))
    assert (err.location, err.field) == ("line 1", "conversations") and "nothing to train on" in str(err)


def test_preference_records_with_weights_are_taken_as_before(home: Path, tiny_model: Path, tmp_path: Path) -> None:
    """A preference objective scores each answer whole: weights there are noted as ignored, nothing else changes."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    record = {"prompt": [{"role": "user", "content": "2+2?"}],
              "chosen": [{"role": "assistant", "content": "FOUR", "weight": 0}],
              "rejected": [{"role": "assistant", "content": "FIVE", "loss_weight": 1}]}
    res = overnight("check", str(jsonl(tmp_path / "pairs.jsonl", [record])), "--show", "1", "--json", home=home)
    assert res.returncode == 0, res.stdout + res.stderr
    verdict = json.loads(res.stdout)[0]
    assert trained_of(verdict) == [["FOUR" + IM_END], ["FIVE" + IM_END]]
    assert any("'weight'/'loss_weight' ignored on 2 message(s) of preference records" in n
               for n in verdict["report"]["notes"]), verdict["report"]["notes"]


def test_a_probe_held_out_of_a_weighted_chat_asks_its_last_trained_answer():
    """The reference is what the model is taught: not a last turn weighted 0 (context only)."""
    from daemon.core.datasets import ExampleKind
    from daemon.core.probes import probe_from_example

    example = {"kind": ExampleKind.CHAT, "tools": None, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and?"}, {"role": "assistant", "content": "a bad answer", "weight": 0}]}
    probe = probe_from_example(example)
    assert probe is not None and probe["reference"] == "hello" and probe["prompt"] == "hi"
