"""Probe files and held-out probes: what a user's NAME.probes.jsonl may hold, and the errors they get."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.core.datasets import DatasetError
from daemon.core.probes import MAX_PROBES, holdout_indices, load_probe_file, probe_from_example


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def test_prompt_reference_records_become_numbered_probes(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "x.probes.jsonl", [{"prompt": "2+2=", "reference": "4"},
                                                   {"prompt": "capital of France?", "reference": "Paris"}])
    probes = load_probe_file(f)
    assert probes == [
        {"id": 0, "prompt": "2+2=", "reference": "4", "messages": None, "tools": None},
        {"id": 1, "prompt": "capital of France?", "reference": "Paris", "messages": None, "tools": None},
    ]


def test_every_dataset_schema_with_an_answer_is_a_probe(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "x.probes.jsonl", [
        {"prompt": "Q: hi", "completion": "hello"},
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"},
                      {"role": "assistant", "content": "1"}, {"role": "user", "content": "two"},
                      {"role": "assistant", "content": "2"}]},
        {"conversations": [{"from": "human", "value": "colour of the sky?"}, {"from": "gpt", "value": "blue"}]},
    ])
    p = load_probe_file(f)
    assert [x["reference"] for x in p] == ["hello", "cat", "2", "blue"]
    assert p[0]["prompt"] == "Q: hi" and p[0]["messages"] is None
    assert p[1]["prompt"] == "Translate\n\nchat"
    # chat: the context is everything before the LAST assistant turn; the shown prompt is the last user turn
    assert p[2]["prompt"] == "two"
    assert [m["content"] for m in p[2]["messages"]] == ["be brief", "one", "1", "two"]
    assert p[3]["messages"] == [{"role": "user", "content": "colour of the sky?"}]


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "x.probes.jsonl"
    f.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DatasetError) as e:
        load_probe_file(f)
    assert "x.probes.jsonl" in str(e.value) and "empty" in str(e.value)
    assert "Fix:" in str(e.value)


def test_malformed_json_names_the_line(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "x.probes.jsonl", [{"prompt": "a", "reference": "b"}, '{"prompt": "a", "refer'])
    with pytest.raises(DatasetError) as e:
        load_probe_file(f)
    assert e.value.location == "line 2"
    assert "malformed JSON" in str(e.value)


def test_text_record_has_no_answer_to_compare(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "x.probes.jsonl", [{"prompt": "a", "reference": "b"}, {"text": "just text"}])
    with pytest.raises(DatasetError) as e:
        load_probe_file(f)
    msg = str(e.value)
    assert e.value.location == "line 2" and "no answer" in msg and '"reference"' in msg


def test_chat_without_assistant_turn_or_empty_reference_is_refused(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "x.probes.jsonl", [{"prompt": "a", "reference": "   "}])
    with pytest.raises(DatasetError) as e:
        load_probe_file(f)
    assert e.value.field == "reference" and e.value.location == "line 1"
    g = write_lines(tmp_path / "y.probes.jsonl", [{"prompt": "", "completion": "x"}])
    with pytest.raises(DatasetError) as e:
        load_probe_file(g)
    assert e.value.field == "prompt"



@pytest.mark.parametrize("record, missing", [
    ({"prompt": "2+2="}, "reference"),
    ({"prompt": "2+2=", "answer": "4"}, "reference"),
    ({"question": "2+2=", "reference": "4"}, "prompt"),
])
def test_half_a_prompt_reference_probe_names_the_missing_half_not_completion(tmp_path: Path, record: dict,
                                                                            missing: str) -> None:
    f = write_lines(tmp_path / "x.probes.jsonl", [{"prompt": "1+1=", "reference": "2"}, record])
    with pytest.raises(DatasetError) as e:
        load_probe_file(f)
    msg = str(e.value)
    assert f"line 2, field '{missing}': the required field is missing" in msg, msg
    assert '{"prompt": "2+2=", "reference": "4"}' in msg and "'completion'" not in msg, msg

def test_unknown_schema_uses_the_dataset_error(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "x.probes.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(DatasetError) as e:
        load_probe_file(f)
    assert e.value.location == "line 1" and "rename" in str(e.value)


def test_only_jsonl_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "x.probes.json"
    f.write_text('[{"prompt": "a", "reference": "b"}]', encoding="utf-8")
    with pytest.raises(DatasetError) as e:
        load_probe_file(f)
    assert "NAME.probes.jsonl" in str(e.value)


def test_non_utf8_line_is_named(tmp_path: Path) -> None:
    f = tmp_path / "x.probes.jsonl"
    f.write_bytes(b'{"prompt": "a", "reference": "b"}\n{"prompt": "\xff", "reference": "b"}\n')
    with pytest.raises(DatasetError) as e:
        load_probe_file(f)
    assert e.value.location == "line 2" and "UTF-8" in str(e.value)


def test_too_many_probes(tmp_path: Path) -> None:
    f = write_lines(tmp_path / "x.probes.jsonl", [{"prompt": f"{i}", "reference": "b"} for i in range(MAX_PROBES + 1)])
    with pytest.raises(DatasetError) as e:
        load_probe_file(f)
    assert f"at most {MAX_PROBES}" in str(e.value)


def test_probe_from_example() -> None:
    assert probe_from_example({"kind": "text", "text": "x"}) is None
    assert probe_from_example({"kind": "chat", "messages": [{"role": "user", "content": "hi"}], "tools": None}) is None
    p = probe_from_example({"kind": "chat", "tools": [{"name": "f"}], "messages": [
        {"role": "user", "content": "call f"}, {"role": "assistant", "content": "ok"}]})
    assert p == {"id": -1, "prompt": "call f", "reference": "ok",
                 "messages": [{"role": "user", "content": "call f"}], "tools": [{"name": "f"}]}


def test_holdout_is_deterministic_and_small() -> None:
    a = holdout_indices(1000, 8, seed=42)
    assert a == holdout_indices(1000, 8, seed=42)
    assert a != holdout_indices(1000, 8, seed=43)
    assert len(a) == 8 and a == sorted(a) and len(set(a)) == 8 and all(0 <= i < 1000 for i in a)
    assert len(holdout_indices(50, 8, seed=0)) == 5  # at most 10% of the records
    assert holdout_indices(9, 8, seed=0) == []  # too small to spare any
    assert len(holdout_indices(10, 8, seed=0)) == 1
    assert holdout_indices(0, 8, seed=0) == [] and holdout_indices(1000, 0, seed=0) == []


@pytest.mark.parametrize("records, fraction, probe_count", [
    (19, 0.5, 8), (20, 0.04, 0), (20, 0.04, 8), (100, 0.0, 8), (200, 0.05, 8), (5, 0.5, 8), (30, 0.05, 0)])
def test_the_reason_for_no_eval_split_is_said_exactly_when_the_trainer_draws_none(records, fraction, probe_count):
    """`check` and the console say why a run has no eval split from the rule the trainer draws the split by."""
    from daemon.core.probes import holdout_indices, no_eval_split
    from daemon.trainer.sequences import eval_indices

    held = set(holdout_indices(records, probe_count, 7))
    drawn = eval_indices(records, fraction, 7, held)
    assert (no_eval_split(records, fraction, len(held)) is None) == bool(drawn)
