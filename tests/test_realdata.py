"""The LLaMA-Factory demo datasets users actually drop (../shared/realdata): accepted or refused as promised."""
from __future__ import annotations

import json

import pytest

from daemon.core.datasets import DatasetError, inspect_dataset, iter_examples

from tests.conftest import REALDATA

pytestmark = pytest.mark.usefixtures("realdata")  # skipped without the folder, failed in CI


@pytest.mark.parametrize(("name", "fmt", "schema", "records"), [
    ("alpaca_en_demo.json", "json", "alpaca", 999),
    ("alpaca_zh_demo.json", "json", "alpaca", 1000),
    ("identity.json", "json", "alpaca", 91),
    ("c4_demo.jsonl", "jsonl", "text", 300),
    ("wiki_demo.txt", "txt", "plain_text", 30),
    ("glaive_toolcall_en_demo.json", "json", "sharegpt", 300),
    ("v1_sft_demo.jsonl", "jsonl", "messages", 500),
])
def test_accepted(name: str, fmt: str, schema: str, records: int) -> None:
    report = inspect_dataset(REALDATA / name, count_tokens=lambda text: len(text.split()))
    assert (report.format, report.schema, report.records) == (fmt, schema, records)
    assert 0 < report.chars["min"] <= report.chars["p50"] <= report.chars["p95"] <= report.chars["max"]
    assert report.tokens is not None and report.tokens["max"] > 0


def test_alpaca_becomes_prompt_examples() -> None:
    raw = json.loads((REALDATA / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    examples = list(iter_examples(REALDATA / "alpaca_en_demo.json"))
    assert len(examples) == len(raw)
    for record, example in zip(raw, examples):
        prompt = record["instruction"] + ("\n\n" + record["input"] if record["input"] else "")
        assert example == {"kind": "prompt", "prompt": prompt, "completion": record["output"]}


def test_identity_keeps_its_placeholders_and_says_so() -> None:
    first = next(iter_examples(REALDATA / "identity.json"))
    assert first == {"kind": "prompt", "prompt": "hi", "completion":
                     "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?"}
    notes = inspect_dataset(REALDATA / "identity.json").notes
    assert any(n.startswith("85 record(s) hold placeholders in double braces (such as {{name}}): they train as "
                            "written") for n in notes), notes
    assert not any("placeholders" in n for n in inspect_dataset(REALDATA / "alpaca_en_demo.json").notes)


def test_glaive_tool_turns_and_tools() -> None:
    raw = json.loads((REALDATA / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8"))
    examples = list(iter_examples(REALDATA / "glaive_toolcall_en_demo.json"))
    roles = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}
    for record, example in zip(raw, examples):
        assert example["kind"] == "chat"
        assert example["tools"] == [{"type": "function", "function": t} for t in json.loads(record["tools"])]
        assert [m["role"] for m in example["messages"]] == [roles[t["from"]] for t in record["conversations"]]
        for turn, m in zip(record["conversations"], example["messages"]):
            if turn["from"] == "function_call":  # {"name", "arguments"} → a tool call
                call = json.loads(turn["value"])
                assert m["content"] == "" and m["tool_calls"] == [
                    {"type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]
            else:
                assert m["content"] == turn["value"]
    notes = " ".join(inspect_dataset(REALDATA / "glaive_toolcall_en_demo.json").notes)
    assert "function_call → assistant" in notes and "observation → tool" in notes and "'tools'" in notes


def test_v1_content_parts_joined() -> None:
    first = next(iter_examples(REALDATA / "v1_sft_demo.jsonl"))
    assert first["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content":
         "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?"}]
    assert any("loss_weight" in note for note in inspect_dataset(REALDATA / "v1_sft_demo.jsonl").notes)


def test_wiki_lines_are_text_examples() -> None:
    lines = [line for line in (REALDATA / "wiki_demo.txt").read_text(encoding="utf-8").split("\n") if line.strip()]
    assert [e["text"] for e in iter_examples(REALDATA / "wiki_demo.txt")] == lines


def test_c4_texts() -> None:
    texts = [json.loads(line)["text"] for line in (REALDATA / "c4_demo.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["text"] for e in iter_examples(REALDATA / "c4_demo.jsonl")] == texts


def test_mllm_refused_for_its_images() -> None:
    with pytest.raises(DatasetError) as info:
        inspect_dataset(REALDATA / "mllm_demo.json")
    err = info.value
    assert (err.file, err.location, err.field) == ("mllm_demo.json", "record 1 (line 2)", "images")
    assert "images are not supported" in str(err) and "<image>" in str(err)


def test_dpo_accepted_as_sharegpt_preference() -> None:
    """Issue 24 reverses realdata/README.md's "reject": LLaMA-Factory's DPO demo is 300 ShareGPT preference pairs."""
    report = inspect_dataset(REALDATA / "dpo_en_demo.json")
    assert (report.schema, report.records) == ("sharegpt_preference", 300)
    pairs = list(iter_examples(REALDATA / "dpo_en_demo.json"))
    assert len(pairs) == 300 and all(p["kind"] == "pair" for p in pairs)
    first = pairs[0]
    assert first["messages"][-1]["role"] == "user" and first["messages"][0]["content"].startswith("Hi! I'd like")
    assert [m["role"] for m in first["chosen"]] == ["assistant"] == [m["role"] for m in first["rejected"]]
    assert first["chosen"] != first["rejected"]
