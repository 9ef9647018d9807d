"""Dataset detection, streaming validation and normalisation (daemon/core/datasets.py, daemon/core/dataformats.py).

Every bad input must give one error naming the file, the place (line/record/row) and the field, with a fix.
"""
from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from daemon.core import dataformats
from daemon.core.datasets import (
    SCHEMAS,
    as_chat,
    SUPPORTED_SUFFIXES,
    DatasetError,
    DatasetReport,
    detect_format,
    detect_schema,
    example_text,
    inspect_dataset,
    iter_examples,
    normalize_record,
)
from tests.conftest import overnight

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


# -- helpers ---------------------------------------------------------------------------------------------
def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def jsonl(tmp_path: Path, records: list[Any], name: str = "data.jsonl") -> Path:
    return write(tmp_path, name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def json_array(tmp_path: Path, records: list[Any], name: str = "data.json") -> Path:
    return write(tmp_path, name, json.dumps(records, indent=2, ensure_ascii=False))


def parquet(tmp_path: Path, records: list[dict], name: str = "data.parquet") -> Path:
    path = tmp_path / name
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def error_of(path: Path) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        inspect_dataset(path)
    return info.value


def check_error(err: DatasetError, file: str, location: str | None, field: str | None, *words: str) -> str:
    """Assert the error's parts and that the user-facing message names them all, plus `words`."""
    message = str(err)
    assert err.file == file
    assert err.location == location, message
    assert err.field == field, message
    assert message.startswith(file), message
    if location:
        assert location in message
    if field:
        assert f"field '{field}'" in message
    assert "\nFix: " in message and err.fix
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


# -- formats ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", SUPPORTED_SUFFIXES)
def test_detect_format_from_suffix(suffix: str) -> None:
    assert detect_format(f"x{suffix}") == suffix[1:]
    assert detect_format(f"X{suffix.upper()}") == suffix[1:]


def test_unsupported_suffix_lists_supported_ones() -> None:
    with pytest.raises(DatasetError) as info:
        detect_format("data.xlsx")
    check_error(info.value, "data.xlsx", None, None, "'.xlsx'", *SUPPORTED_SUFFIXES)


def test_missing_file(tmp_path: Path) -> None:
    check_error(error_of(tmp_path / "nope.jsonl"), "nope.jsonl", None, None, "does not exist")


def test_module_does_not_import_torch() -> None:
    code = "import sys, daemon.core.datasets; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- accepted schemas and their normalisation ------------------------------------------------------------
def test_text_jsonl(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"text": "one"}, {"text": "three"}])
    assert list(iter_examples(path)) == [{"kind": "text", "text": "one"}, {"kind": "text", "text": "three"}]
    report = inspect_dataset(path)
    assert (report.format, report.schema, report.records) == ("jsonl", "text", 2)


def test_prompt_completion(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"prompt": "2+2=", "completion": "4"}])
    assert list(iter_examples(path)) == [{"kind": "prompt", "prompt": "2+2=", "completion": "4"}]
    assert inspect_dataset(path).schema == "prompt_completion"


def test_alpaca_prompt_joins_instruction_input_and_system(tmp_path: Path) -> None:
    path = json_array(tmp_path, [
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Say hi", "output": "hi", "system": "Be brief."},
    ])
    assert list(iter_examples(path)) == [
        {"kind": "prompt", "prompt": "Translate\n\nchat", "completion": "cat"},
        {"kind": "prompt", "prompt": "Say hi", "completion": "hi"},
        {"kind": "prompt", "prompt": "Be brief.\n\nSay hi", "completion": "hi", "system": "Be brief.",
         "user": "Say hi"},
    ]
    assert inspect_dataset(path).schema == "alpaca"
    # as one chat exchange (prompt_format): the system text is a system turn, the instruction the user turn
    assert as_chat(list(iter_examples(path))[2]) == {"kind": "chat", "tools": None, "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi"}]}


def test_alpaca_history_becomes_chat(tmp_path: Path) -> None:
    record = {"instruction": "and 3+3?", "output": "6", "system": "math",
              "history": [["2+2?", "4"]]}
    path = jsonl(tmp_path, [record])
    assert list(iter_examples(path)) == [{"kind": "chat", "tools": None, "messages": [
        {"role": "system", "content": "math"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"}]}]
    assert any("history" in note for note in inspect_dataset(path).notes)


def test_messages(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "s"}, *CHAT, {"role": "tool", "content": "{}"}]
    path = jsonl(tmp_path, [{"messages": messages}])
    assert list(iter_examples(path)) == [{"kind": "chat", "messages": messages, "tools": None}]
    assert inspect_dataset(path).schema == "messages"


def test_messages_content_parts_joined_and_trained_weights_read(tmp_path: Path) -> None:
    # a weight of 1 trains the turn as none does; a user turn's 0 says what happens anyway (tests/test_record_weights.py)
    turns = [{"role": "user", "content": [{"type": "text", "value": "hi "}, {"type": "text", "text": "there"}],
              "loss_weight": 0.0},
             {"role": "assistant", "content": [{"type": "text", "value": "hello"}], "loss_weight": 1.0}]
    path = jsonl(tmp_path, [{"messages": turns}])
    assert list(iter_examples(path))[0]["messages"] == [{"role": "user", "content": "hi there"},
                                                        {"role": "assistant", "content": "hello"}]
    notes = " ".join(inspect_dataset(path).notes)
    assert "list of text parts" in notes and "weights ('weight'/'loss_weight') read on 2 message(s)" in notes, notes
    assert "weighted 0 (" not in notes


def test_sharegpt_roles_system_and_tools(tmp_path: Path) -> None:
    tools = [{"name": "f", "parameters": {}}]
    record = {"system": "sys", "tools": json.dumps(tools), "conversations": [
        {"from": "human", "value": "q"}, {"from": "function_call", "value": '{"name": "f"}'},
        {"from": "observation", "value": "42"}, {"from": "gpt", "value": "it is 42"},
        {"from": "user", "value": "thanks"}, {"from": "assistant", "value": "welcome"}]}
    path = json_array(tmp_path, [record])
    # function_call → a tool call each template renders its own way; bare function schemas → the form templates read
    assert list(iter_examples(path)) == [{"kind": "chat", "tools": [{"type": "function", "function": tools[0]}],
                                          "messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                              "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "content": "42", "name": "f"},
        {"role": "assistant", "content": "it is 42"}, {"role": "user", "content": "thanks"},
        {"role": "assistant", "content": "welcome"}]}]
    report = inspect_dataset(path)
    assert report.schema == "sharegpt"
    notes = " ".join(report.notes)
    assert "function_call → assistant" in notes and "observation → tool" in notes and "'tools'" in notes


def test_openai_tool_calls_are_kept(tmp_path: Path) -> None:
    """An assistant turn that calls a tool (content null, arguments as JSON text, as OpenAI writes them) and the
    tool's answer: kept for the template to render, not refused for its empty content nor stripped of its call."""
    path = jsonl(tmp_path, [{"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "rain"},
        {"role": "assistant", "content": "It rains."}]}])
    [example] = iter_examples(path)
    assert example["messages"][1:3] == [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "rain", "tool_call_id": "c1", "name": "get_weather"}]
    (tmp_path / "bad").mkdir()
    bad = jsonl(tmp_path / "bad", [{"messages": [{"role": "user", "content": "q"},
                                                 {"role": "assistant", "content": None, "tool_calls": [{"x": 1}]}]}])
    with pytest.raises(DatasetError, match=r"messages\[1\]\.tool_calls\[0\].*has no function with a name"):
        list(iter_examples(bad))


def test_extra_fields_ignored_and_noted(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"text": "a", "id": 1, "source": "x"}, {"text": "b", "id": 2}])
    assert [e["text"] for e in iter_examples(path)] == ["a", "b"]
    assert "extra fields ignored: 'id' (2 record(s)), 'source' (1 record(s))" in inspect_dataset(path).notes


def test_sharegpt_system_field_and_first_system_turn_give_one_system_turn(tmp_path: Path) -> None:
    """LLaMA-Factory's converter takes a first system turn over the record's 'system' field: one system turn, the
    conversation's, not two."""
    record = {"system": "FIELD", "conversations": [{"from": "system", "value": "TURN"}, {"from": "human", "value": "q"},
                                                   {"from": "gpt", "value": "a"}]}
    path = json_array(tmp_path, [record, {**record, "system": ""}])
    assert [e["messages"] for e in iter_examples(path)] == [[
        {"role": "system", "content": "TURN"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"}]] * 2
    notes = inspect_dataset(path).notes
    assert ("1 ShareGPT record(s) with both a 'system' field and a first system turn: the turn is used and the field "
            "ignored, as LLaMA-Factory does") in notes, notes


def test_txt_one_example_per_non_blank_line(tmp_path: Path) -> None:
    path = write(tmp_path, "corpus.txt", "first line\n\n   \nsecond line\r\nthird")
    assert list(iter_examples(path)) == [{"kind": "text", "text": t} for t in
                                         ("first line", "second line", "third")]
    report = inspect_dataset(path)
    assert (report.format, report.schema, report.records) == ("txt", "plain_text", 3)
    assert "2 blank line(s) skipped" in report.notes and "CRLF line endings accepted" in report.notes


def test_csv_schemas_quoting_and_json_cells(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", 'instruction,output\n"Say ""hi"", please","line one\nline two"\nx,y\n')
    assert list(iter_examples(path)) == [
        {"kind": "prompt", "prompt": 'Say "hi", please', "completion": "line one\nline two"},
        {"kind": "prompt", "prompt": "x", "completion": "y"}]
    assert inspect_dataset(path).schema == "alpaca"
    cell = json.dumps(CHAT).replace('"', '""')
    path = write(tmp_path, "chat.csv", f'messages\n"{cell}"\n')
    assert list(iter_examples(path)) == [{"kind": "chat", "messages": CHAT, "tools": None}]


def test_parquet_flat_and_nested(tmp_path: Path) -> None:
    path = parquet(tmp_path, [{"prompt": "p", "completion": "c"}] * 600)
    report = inspect_dataset(path)
    assert (report.format, report.schema, report.records) == ("parquet", "prompt_completion", 600)
    path = parquet(tmp_path, [{"messages": CHAT}], name="chat.parquet")
    assert list(iter_examples(path)) == [{"kind": "chat", "messages": CHAT, "tools": None}]


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv", "d.txt"])
def test_bom_and_crlf_accepted(tmp_path: Path, name: str) -> None:
    body = {"d.jsonl": '{"text": "a"}\n\n{"text": "b"}\n', "d.json": '[\n{"text": "a"},\n{"text": "b"}\n]\n',
            "d.csv": "text\na\nb\n", "d.txt": "a\nb\n"}[name]
    path = write(tmp_path, name, b"\xef\xbb\xbf" + body.replace("\n", "\r\n").encode())
    assert [e["text"] for e in iter_examples(path)] == ["a", "b"]
    notes = inspect_dataset(path).notes
    assert "UTF-8 BOM accepted" in notes and "CRLF line endings accepted" in notes


def test_blank_lines_in_jsonl_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", '\n{"text": "a"}\n\n  \n{"text": "b"}\n\n')
    report = inspect_dataset(path)
    assert report.records == 2 and "4 blank line(s) skipped" in report.notes


# -- statistics ------------------------------------------------------------------------------------------
def test_length_statistics_and_tokens(tmp_path: Path) -> None:
    lengths = list(range(1, 21))
    random.Random(1).shuffle(lengths)
    path = jsonl(tmp_path, [{"text": "x" * n} for n in lengths])
    report = inspect_dataset(path, count_tokens=lambda text: len(text) * 2)
    assert report.chars == {"min": 1, "mean": 10.5, "p50": 10, "p95": 19, "max": 20}
    assert report.tokens == {"min": 2, "mean": 21.0, "p50": 20, "p95": 38, "max": 40}
    assert inspect_dataset(path).tokens is None
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data and data["path"] == str(path)
    assert isinstance(report, DatasetReport)


def test_statistics_exact_beyond_the_sample(tmp_path: Path) -> None:
    # 12,000 records: more than the reservoir holds; min/max/mean stay exact, the percentiles close.
    path = write(tmp_path, "d.txt", "".join("x" * (n % 100 + 1) + "\n" for n in range(12_000)))
    chars = inspect_dataset(path).chars
    assert (chars["min"], chars["max"], chars["mean"]) == (1, 100, 50.5)
    assert 45 <= chars["p50"] <= 56 and 92 <= chars["p95"] <= 98


def test_example_text() -> None:
    assert example_text({"kind": "text", "text": "abc"}) == "abc"
    assert example_text({"kind": "prompt", "prompt": "ab", "completion": "c"}) == "abc"
    assert example_text({"kind": "chat", "messages": CHAT, "tools": None}) == "hi\nhello"


# -- the pure functions ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("record", "schema"), [
    ({"text": "t"}, "text"), ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ({"instruction": "i", "output": "o"}, "alpaca"), ({"messages": CHAT}, "messages"),
    ({"conversations": []}, "sharegpt")])
def test_detect_schema(record: dict, schema: str) -> None:
    assert detect_schema(record, "f.jsonl", "line 1") == schema
    assert schema in SCHEMAS


def test_unknown_schema_lists_accepted_ones_with_fields() -> None:
    with pytest.raises(DatasetError) as info:
        detect_schema({"question": "q", "answer": "a"}, "qa.jsonl", "line 3")
    check_error(info.value, "qa.jsonl", "line 3", None, "'question', 'answer'", "rename 'question' to 'prompt'",
                '{"text": "..."}', '"prompt"', '"instruction"', '"messages"', '"conversations"', '"from"')


def test_normalize_record_reports_the_field() -> None:
    with pytest.raises(DatasetError) as info:
        normalize_record({"messages": [{"role": "bot", "content": "x"}]}, "messages", "c.jsonl", "line 4")
    check_error(info.value, "c.jsonl", "line 4", "messages[0].role", "unknown role 'bot'")


def test_error_message_format_and_pickling() -> None:
    err = DatasetError("data.jsonl", "line 12", "messages[2].role", "unknown role 'bot'", "map it")
    assert str(err) == "data.jsonl, line 12, field 'messages[2].role': unknown role 'bot'.\nFix: map it."
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.field == "messages[2].role"


# -- bad inputs: whole-file problems ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv", "d.txt", "d.parquet"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    check_error(error_of(write(tmp_path, name, b"")), name, None, None, "empty")


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv", "d.txt"])
def test_whitespace_only(tmp_path: Path, name: str) -> None:
    check_error(error_of(write(tmp_path, name, " \n\r\n\t\n")), name, None, None, "only whitespace")


@pytest.mark.parametrize(("name", "words"), [("d.jsonl", "only blank lines"), ("d.json", "only whitespace"),
                                             ("d.csv", "no rows"), ("d.txt", "no non-blank lines")])
def test_whitespace_only_beyond_the_first_block(tmp_path: Path, name: str, words: str) -> None:
    path = write(tmp_path, name, " \n" * (dataformats.SNIFF_BYTES // 2 + 10))
    check_error(error_of(path), name, None, None, words)


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv", "d.txt"])
def test_nul_bytes_look_binary(tmp_path: Path, name: str) -> None:
    first = b"text" if name == "d.csv" else b'{"text": "a"}'
    path = write(tmp_path, name, first + b"\n\x00\x01\x02junk\x00")
    check_error(error_of(path), name, "line 2", None, "looks binary", f"byte offset {len(first) + 1}")


def test_nul_bytes_deep_in_a_json_array(tmp_path: Path) -> None:
    body = json.dumps([{"text": "a" * 100}] * 20_000, indent=1).encode()  # ~2.4 MB: past the first chunk
    path = write(tmp_path, "d.json", body[:-2] + b"\x00" + body[-2:])
    line = body.count(b"\n", 0, len(body) - 2) + 1
    check_error(error_of(path), "d.json", f"line {line}", None, "looks binary", f"byte offset {len(body) - 2}")


def test_compressed_and_utf16_files(tmp_path: Path) -> None:
    check_error(error_of(write(tmp_path, "d.jsonl", b"\x1f\x8b\x08\x00rest")), "d.jsonl", None, None,
                "looks binary", "gzip", "gunzip")
    utf16 = '{"text": "a"}\n'.encode("utf-16")
    check_error(error_of(write(tmp_path, "u.jsonl", utf16)), "u.jsonl", None, None, "UTF-16", "iconv -f utf-16 -t utf-8 u.jsonl > u.utf8.jsonl")


@pytest.mark.parametrize("name", ["d.jsonl", "d.txt", "d.csv"])
def test_non_utf8_line(tmp_path: Path, name: str) -> None:
    lines = {"d.jsonl": [b'{"text": "ok"}', b'{"text": "caf\xe9"}'], "d.txt": [b"ok", b"caf\xe9"],
             "d.csv": [b"text", b"caf\xe9"]}[name]
    path = write(tmp_path, name, b"\n".join(lines) + b"\n")
    offset = len(lines[0]) + 1 + lines[1].index(b"\xe9")
    check_error(error_of(path), name, "line 2", None, "not valid UTF-8", "0xe9", f"byte offset {offset}",
                "iconv -f latin1 -t utf-8")


def test_non_utf8_in_a_json_array_after_the_first_chunk(tmp_path: Path) -> None:
    body = json.dumps([{"text": "é" * 50}] * 30_000, indent=1, ensure_ascii=False).encode()
    assert len(body) > 2 * dataformats.CHUNK_BYTES
    cut = body.rindex("é".encode()) + 1  # break the last é: its second byte becomes a bare 'Z'
    path = write(tmp_path, "d.json", body[:cut] + b"Z" + body[cut + 1:])
    line = body.count(b"\n", 0, cut) + 1
    check_error(error_of(path), "d.json", f"line {line}", None, "not valid UTF-8", f"byte offset {cut - 1}",
                "iconv")


# -- bad inputs: JSONL -----------------------------------------------------------------------------------
def test_malformed_jsonl_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", '{"text": "a"}\n\n{"text": "b",}\n{"text": "c"}\n')
    check_error(error_of(path), "d.jsonl", "line 3", None, "malformed JSON", "column")
    # an object cut short at the line's end: the column is that end (the line's newline read as column 1 of line 2)
    path = write(tmp_path, "e.jsonl", '{"prompt": "x"\nnot json\n')
    check_error(error_of(path), "e.jsonl", "line 1", None, "malformed JSON", "(column 15)")


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", '{"text": "a"}\n["b"]\n')
    check_error(error_of(path), "d.jsonl", "line 2", None, "an array", "expected a JSON object")


def test_json_array_saved_as_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", json.dumps([{"text": "a"}], indent=1))
    check_error(error_of(path), "d.jsonl", "line 1", None, "JSON array", ".json")


def test_bad_record_at_the_end_is_found(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", '{"text": "ok"}\n' * 5000 + '{"text": 5}\n')
    check_error(error_of(path), "d.jsonl", "line 5001", "text", "must be a string", "a number (5)")


# -- bad inputs: .json arrays ----------------------------------------------------------------------------
def test_malformed_json_array_element(tmp_path: Path) -> None:
    path = write(tmp_path, "d.json", '[\n  {"text": "a"},\n  {"text": "b"},\n  {"text" "c"}\n]\n')
    check_error(error_of(path), "d.json", "record 3 (line 4)", None, "malformed JSON", "Expecting ':'",
                "line 4, column 11")


def test_json_array_errors(tmp_path: Path) -> None:
    cases = {
        '[{"text": "a"} {"text": "b"}]': ("line 1", "expected ',' or ']' after record 1"),
        '[{"text": "a"},\n]': ("line 2", "trailing comma"),
        '[{"text": "a"},\n{"text": "b"': ("record 2 (line 2)", "truncated"),
        '[{"text": "a"},\n{"text": "b"},': ("line 2", "truncated"),
        '[{"text": "a"}]\n[{"text": "b"}]': ("line 2", "after the closing ']'"),
        '["a", "b"]': ("record 1 (line 1)", "the record is a string, expected an object"),
        '[[{"text": "a"}]]': ("record 1 (line 1)", "an array, expected an object"),
        '"text"': ("line 1", "must be an array of records"),
    }
    for body, (location, words) in cases.items():
        check_error(error_of(write(tmp_path, "d.json", body)), "d.json", location, None, words)
    check_error(error_of(write(tmp_path, "d.json", "[ ]")), "d.json", None, None, "array is empty")


def test_json_top_level_object(tmp_path: Path) -> None:
    path = write(tmp_path, "d.json", json.dumps({"version": 1, "data": [{"text": "a"}]}))
    check_error(error_of(path), "d.json", "line 1", None, "holds one object", "'version', 'data'",
                "under 'data'")
    path = write(tmp_path, "d.json", '{"text": "a"}\n{"text": "b"}\n')
    check_error(error_of(path), "d.json", None, None, "JSON Lines", "rename the file to .jsonl")


def test_json_array_decoded_across_tiny_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunk boundaries fall inside strings, numbers, escapes and multi-byte characters: the result must not change.
    rng = random.Random(7)
    records = [{"text": "t" + "".join(rng.choice("aé€😀\n\"\\") for _ in range(rng.randrange(1, 30))),
                "n": rng.randrange(10**12), "f": rng.random(), "nested": {"ok": [True, None]}} for _ in range(60)]
    path = write(tmp_path, "d.json", "\ufeff" + json.dumps(records, ensure_ascii=False, indent=rng.choice([None, 2])))
    monkeypatch.setattr(dataformats, "CHUNK_BYTES", 5)
    assert [e["text"] for e in iter_examples(path)] == [r["text"] for r in records]


@pytest.mark.parametrize("chunk", [3, 7, 64, 1 << 20])
def test_json_array_error_positions_match_json_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      chunk: int) -> None:
    monkeypatch.setattr(dataformats, "CHUNK_BYTES", chunk)
    good = '{"text": "first record, long enough to span chunks"}'
    for bad in ('{"text" "c"}', '{"text": "a",\n   "x": tru}', '{"text": "a\tb"}', '{"text": "é", "n": 01}'):
        body = f"[\n  {good},\n  {good},   {bad}\n]"
        with pytest.raises(json.JSONDecodeError) as expected:
            json.loads(body)
        err = error_of(write(tmp_path, "d.json", body))
        check_error(err, "d.json", f"record 3 (line {expected.value.lineno})", None,
                    f"{dataformats.json_problem(expected.value)} (line {expected.value.lineno}, "
                    f"column {expected.value.colno})")


def test_json_array_number_split_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataformats, "CHUNK_BYTES", 3)
    path = write(tmp_path, "d.json", "[123456789]")
    check_error(error_of(path), "d.json", "record 1 (line 1)", None, "a number (123456789), expected an object")


def test_json_array_records_report_their_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataformats, "CHUNK_BYTES", 16)
    path = write(tmp_path, "d.json", '[\n' + ',\n\n'.join(['{"text": "abc"}'] * 40) + ',\n\n{"text": ""}\n]')
    check_error(error_of(path), "d.json", "record 41 (line 82)", "text", "is empty")


# -- bad inputs: CSV -------------------------------------------------------------------------------------
def test_csv_ragged_row(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "prompt,completion\na,b\nc,d,e\n")
    check_error(error_of(path), "d.csv", "row 3", None, "row 3 has 3 fields, the header has 2", "quote")


def test_csv_row_numbers_follow_the_header_when_rows_span_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", 'text\n"a\nb"\n\n"c"\n')
    assert [e["text"] for e in iter_examples(path)] == ["a\nb", "c"]
    path = write(tmp_path, "d.csv", 'prompt,completion\n"a\nb",c\n\nx,\n')
    check_error(error_of(path), "d.csv", "row 3 (line 5)", "completion", "is empty")


def test_csv_without_recognised_header(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "hello world,42\nfoo,bar\n")
    check_error(error_of(path), "d.csv", "row 1", None, "no recognised header", "'hello world,42'",
                "text;", "prompt,completion", "instruction,input,output", "messages", "conversations")
    path = write(tmp_path, "s.csv", "prompt;completion\na;b\n")
    check_error(error_of(path), "s.csv", "row 1", None, "other than commas")


@pytest.mark.parametrize(("header", "renames"), [
    ("Prompt,Completion", "column names are lower-case: rename 'Prompt' to 'prompt', 'Completion' to 'completion'"),
    ("Instruction,Output", "column names are lower-case: rename 'Instruction' to 'instruction', 'Output' to 'output'"),
    ("Text", "column names are lower-case: rename 'Text' to 'text'"),
    ("question,answer", "rename 'question' to 'prompt', 'answer' to 'completion'")])
def test_csv_header_in_another_case_or_convention_says_the_rename(tmp_path: Path, header: str, renames: str) -> None:
    path = write(tmp_path, "d.csv", header + "\n" + ",".join(["x"] * len(header.split(","))) + "\n")
    message = check_error(error_of(path), "d.csv", "row 1", None, "no recognised header")
    assert f"Fix: {renames}, or start the file with a header row" in message, message


@pytest.mark.parametrize(("record", "renames"), [
    ({"Prompt": "p", "Completion": "c"}, "keys are lower-case: rename 'Prompt' to 'prompt', 'Completion' to "
                                         "'completion'"),
    ({"Instruction": "i", "Output": "o"}, "keys are lower-case: rename 'Instruction' to 'instruction', 'Output' to "
                                          "'output'"),
    ({"Messages": CHAT}, "keys are lower-case: rename 'Messages' to 'messages'"),
    ({"Text": "t"}, "keys are lower-case: rename 'Text' to 'text'"),
    ({"Question": "q", "Answer": "a"}, "rename 'Question' to 'prompt', 'Answer' to 'completion'")])
def test_keys_in_another_case_say_the_rename(tmp_path: Path, record: dict, renames: str) -> None:
    message = check_error(error_of(jsonl(tmp_path, [record])), "data.jsonl", "line 1", None,
                          "matches no accepted schema")
    assert f"Fix: {renames}, or use one of the accepted schemas" in message, message


def test_one_key_in_another_case_says_the_rename(tmp_path: Path) -> None:
    """Beside a key of the schema, a missing one found in another case, and an extra one the schema would read."""
    path = jsonl(tmp_path, [{"prompt": "p", "Completion": "c"}])
    message = check_error(error_of(path), "data.jsonl", "line 1", "completion", "the required field is missing")
    assert message.endswith("Fix: keys are lower-case: rename 'Completion' to 'completion'."), message
    path = jsonl(tmp_path, [{"prompt": "p", "completion": "c", "Label": False}], name="kto.jsonl")
    assert ("extra fields ignored: 'Label' (1 record(s)); keys are lower-case, so these are not read: rename 'Label' "
            "to 'label'") in inspect_dataset(path).notes


def test_csv_header_only_and_bad_quotes(tmp_path: Path) -> None:
    check_error(error_of(write(tmp_path, "d.csv", "text\n")), "d.csv", None, None, "no data rows")
    check_error(error_of(write(tmp_path, "q.csv", 'text\nok\n"never closed\n')), "q.csv", "row 3", None,
                "malformed CSV", "unexpected end of data")
    check_error(error_of(write(tmp_path, "r.csv", 'text\n"ab"c\n')), "r.csv", "row 2", None, "malformed CSV")


def test_csv_messages_cell_must_be_json(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "messages\nnot json\n")
    check_error(error_of(path), "d.csv", "row 2", "messages", "must hold JSON")


# -- bad inputs: parquet ---------------------------------------------------------------------------------
def test_truncated_parquet(tmp_path: Path) -> None:
    good = parquet(tmp_path, [{"text": f"row {i}"} for i in range(100)])
    data = good.read_bytes()
    path = write(tmp_path, "cut.parquet", data[: len(data) // 2])
    check_error(error_of(path), "cut.parquet", None, None, "not a readable parquet file", "truncated")
    check_error(error_of(write(tmp_path, "junk.parquet", b"PAR1 this is not parquet at all")), "junk.parquet",
                None, None, "not a readable parquet file")


def test_corrupt_parquet_data_pages(tmp_path: Path) -> None:
    good = parquet(tmp_path, [{"text": f"row {i} " * 20} for i in range(2000)])
    data = bytearray(good.read_bytes())
    for i in range(200, len(data) // 2):  # scribble over the data pages, keep the footer intact
        data[i] = 0xAB
    path = write(tmp_path, "bad.parquet", bytes(data))
    err = error_of(path)
    assert err.location is None or err.location.startswith("record ")
    check_error(err, "bad.parquet", err.location, None, "parquet")


def test_parquet_null_and_wrong_type(tmp_path: Path) -> None:
    path = parquet(tmp_path, [{"text": "a"}, {"text": None}])
    check_error(error_of(path), "data.parquet", "record 2", "text", "is null")
    path = parquet(tmp_path, [{"text": 5}], name="n.parquet")
    check_error(error_of(path), "n.parquet", "record 1", "text", "must be a string")


# -- bad inputs: records ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("record", "field", "words"), [
    ({"text": 5}, "text", "must be a string, got a number (5)"),
    ({"text": "  "}, "text", "is empty"),
    ({"prompt": "p"}, "completion", "is missing"),
    ({"prompt": ["x"], "completion": "c"}, "prompt", "got an array"),
    ({"instruction": "i", "output": ""}, "output", "is empty"),
    ({"instruction": "i"}, "output", "is missing"),
    ({"instruction": "i", "output": "o", "history": [["only one"]]}, "history[0]", "[user, assistant] pair"),
    ({"messages": "hi"}, "messages", "must be a list"),
    ({"messages": []}, "messages", "empty"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "map 'bot' to 'assistant'"),
    ({"messages": [{"role": "function", "content": "x"}]}, "messages[0].role", "map 'function' to 'tool'"),
    ({"messages": [{"content": "x"}]}, "messages[0].role", "'role' is missing"),
    ({"messages": [CHAT[0], {"role": "assistant", "content": ""}]}, "messages[1].content", "content is empty"),
    ({"messages": [CHAT[0], {"role": "assistant"}]}, "messages[1].content", "no content"),
    ({"messages": [CHAT[0], {"role": "assistant", "content": 3}]}, "messages[1].content", "a number (3)"),
    ({"messages": [CHAT[0]]}, "messages", "no assistant turn"),
    ({"messages": [{"from": "human", "value": "x"}]}, "messages[0]", "'conversations'"),
    ({"messages": CHAT, "tools": "{not json"}, "tools", "not valid JSON"),
    ({"messages": CHAT, "tools": 7}, "tools", "must be a list"),
    ({"conversations": [{"from": "bot", "value": "x"}]}, "conversations[0].from", "unknown speaker 'bot'"),
    ({"conversations": [{"from": "human", "value": ""}]}, "conversations[0].value", "is empty"),
    ({"conversations": [{"from": "human", "value": "x"}]}, "conversations", "no assistant turn"),
    ({"conversations": [{"role": "user", "content": "x"}]}, "conversations[0]", "rename 'conversations'"),
])
def test_bad_record_fields(tmp_path: Path, record: dict, field: str, words: str) -> None:
    path = jsonl(tmp_path, [{"text": "fine"}, record] if "text" in record else [record])
    line = "line 2" if "text" in record else "line 1"
    check_error(error_of(path), "data.jsonl", line, field, words)


def test_unknown_schema_in_a_file(tmp_path: Path) -> None:
    path = json_array(tmp_path, [{"input": "x", "target": "y"}])
    check_error(error_of(path), "data.json", "record 1 (line 2)", None, "matches no accepted schema",
                "rename 'input' to 'instruction'", "alpaca")


def test_mixed_schemas(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"text": "a"}, {"text": "b"}, {"prompt": "p", "completion": "c"}])
    check_error(error_of(path), "data.jsonl", "line 3", None, "mixed schemas",
                "looks like prompt_completion", "first record is text")


def test_preference_pairs_accepted_and_mixed_with_sft_rejected(tmp_path: Path) -> None:
    """Issue 24 reverses the old refusal: a pair is preference data; beside supervised records it is mixed."""
    path = jsonl(tmp_path, [{"prompt": "p", "chosen": "good", "rejected": "bad"}])
    assert list(iter_examples(path)) == [{"kind": "pair", "prompt": "p", "chosen": "good", "rejected": "bad"}]
    path = jsonl(tmp_path, [{"prompt": "p", "completion": "c"}, {"prompt": "p", "chosen": "good", "rejected": "bad"}],
                 name="mixed.jsonl")
    check_error(error_of(path), "mixed.jsonl", "line 2", None, "mixed schemas", "looks like preference",
                "first record is prompt_completion", "one file, one objective")


def test_images_rejected(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"messages": CHAT, "images": ["a.jpg"]}])
    check_error(error_of(path), "data.jsonl", "line 1", "images", "not supported")
    marker = [{"role": "user", "content": "<image>who?"}, CHAT[1]]
    path = jsonl(tmp_path, [{"messages": CHAT}, {"messages": marker}], name="m.jsonl")
    check_error(error_of(path), "m.jsonl", "line 2", "messages[0].content", "'<image>'", "not supported")
    part = [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}, CHAT[1]]
    path = jsonl(tmp_path, [{"messages": part}], name="p.jsonl")
    check_error(error_of(path), "p.jsonl", "line 1", "messages[0].content[0].type", "image_url", "not supported")


# -- size --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["big.jsonl", "big.json", "big.txt", "big.csv"])
def test_a_20_mb_record_is_accepted(tmp_path: Path, name: str) -> None:
    text = "word " * 4_000_000  # 20 MB
    body = {"big.jsonl": json.dumps({"text": text}) + "\n", "big.json": json.dumps([{"text": text}]),
            "big.txt": text + "\n", "big.csv": f"text\n{text}\n"}[name]
    report = inspect_dataset(write(tmp_path, name, body))
    assert report.records == 1 and report.chars["max"] == len(text)


@pytest.mark.parametrize("name", ["big.jsonl", "big.json", "big.txt"])
def test_a_record_over_the_limit_is_a_clear_error(tmp_path: Path, name: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataformats, "MAX_RECORD_BYTES", 1000)
    monkeypatch.setattr(dataformats, "CHUNK_BYTES", 100)
    text = "x" * 5000
    body = {"big.jsonl": '{"text": "a"}\n' + json.dumps({"text": text}),
            "big.json": '[{"text": "a"},\n' + json.dumps({"text": text}) + "]",
            "big.txt": "a\n" + text}[name]
    location = "record 2 (line 2)" if name.endswith(".json") else "line 2"
    words = "larger than" if name.endswith(".json") else "longer than"
    check_error(error_of(write(tmp_path, name, body)), name, location, None, words, "MiB")


@pytest.mark.parametrize(("char", "count"), [("x", 1200), ("é", 600), ("😀", 300)])
def test_a_json_array_record_over_the_limit_read_whole_is_refused(tmp_path: Path, char: str, count: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A record that fits one chunk decodes at once, the limit never reached by a decode error: its size (in UTF-8
    bytes, as a .jsonl line's) is checked all the same; 1,200 bytes each here, over a limit of 1,000."""
    monkeypatch.setattr(dataformats, "MAX_RECORD_BYTES", 1000)
    text = char * count
    path = write(tmp_path, "big.json", '[{"text": "a"},\n' + json.dumps({"text": text}, ensure_ascii=False) + "]")
    check_error(error_of(path), "big.json", "record 2 (line 2)", None, "the record is larger than", "MiB",
                "split it into smaller records")
    small = write(tmp_path, "small.json", json.dumps([{"text": char * (count // 2)}], ensure_ascii=False))
    assert inspect_dataset(small).records == 1


@pytest.mark.parametrize("name", ["flat.jsonl", "flat.json", "flat.csv", "flat.txt", "flat.parquet"])
def test_memory_stays_flat(tmp_path: Path, name: str) -> None:
    record = {"text": "lorem ipsum dolor sit amet " * 40}  # ~1 KB
    count = 8_000  # ~9 MB
    if name.endswith(".parquet"):
        path = parquet(tmp_path, [record] * count, name=name)
    else:
        line = json.dumps(record) + ("\n" if name.endswith(".jsonl") else ",\n") if "json" in name else \
            record["text"] + "\n"
        body = line * count
        body = {"flat.json": "[" + body[:-2] + "]", "flat.csv": "text\n" + body}.get(name, body)
        path = write(tmp_path, name, body)
    tracemalloc.start()
    try:
        report = inspect_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.records == count
    assert peak < 2_000_000, f"peak {peak / 1e6:.1f} MB for a {path.stat().st_size / 1e6:.0f} MB file"


# -- file names --------------------------------------------------------------------------------------------
NEAR_MISSES = [("sup.probe.jsonl", "sup.probes.jsonl"), ("sup_probes.jsonl", "sup.probes.jsonl"),
               ("sup.probes.json", "sup.probes.jsonl"), ("sup.eval.json", "sup.eval.jsonl"),
               ("sup_eval.jsonl", "sup.eval.jsonl")]


@pytest.mark.parametrize(("name", "meant"), NEAR_MISSES)
def test_check_refuses_a_misnamed_probe_or_eval_file_with_the_name_it_needs(tmp_path: Path, name: str,
                                                                            meant: str) -> None:
    """Named like a probe or eval file but not quite, it would be read as a dataset (and fail on its schema, or train
    a run of its own): refused by its name, with the name it needs."""
    path = write(tmp_path, name, json.dumps({"prompt": "2+2=", "reference": "4"}) + "\n")
    [verdict] = json.loads(overnight("check", str(path), "--json").stdout)
    assert not verdict["ok"] and verdict["error"].startswith(f"{name}: the name looks like "), verdict
    assert f"Fix: did you mean {meant}? Rename it to that" in verdict["error"], verdict["error"]
    assert "schema" not in verdict["error"]
    assert (" (it must be JSON Lines" in verdict["error"]) == name.endswith(".json")


def test_the_inbox_refuses_misnamed_probe_and_eval_files_by_their_name(home: Path) -> None:
    for name, _ in NEAR_MISSES:
        write(home / "inbox", name, json.dumps({"prompt": "2+2=", "reference": "4"}) + "\n")
    jsonl(home / "inbox", [{"text": "a"}], name="sup.jsonl")
    overnight("daemon", "--once", "--settle", "0.2", "--quiet", home=home, timeout=300)
    rejected = home / "inbox" / "rejected"
    for name, meant in NEAR_MISSES:
        error = (rejected / f"{Path(name).stem}.error.txt").read_text()
        assert (rejected / name).is_file() and f"Fix: did you mean {meant}?" in error, error
    # the dataset itself is judged on its own (refused here only for the base model no overnight.toml names)
    assert "base model" in (rejected / "sup.error.txt").read_text()
