"""Hypothesis-generated junk: near-valid datasets, sidecars, overnight.toml files, probe files and control files,
mutated the ways real files go wrong (wrong types, missing and extra keys, JSON nested thousands deep, huge strings,
NaN, BOMs, mixed newlines, bytes that are not UTF-8, NULs, unknown and owner-only keys, junk in sweep lists and in
[hooks]/[notify], control files naming junk: unicode, very long, several lines, binary, odd digits).

Properties: `overnight check` (checking.check_file, and the CLI for some) accepts the input or answers with a
message naming the file and holding a `Fix:`, never an uncaught exception; a control file is parsed or refused
with a Fix, and the Controller applies it or moves it byte-identical to control/rejected/ beside an error with a
Fix; generated drops through the real daemon are taken or kept byte-identical in inbox/rejected/.

Reproducible in CI (derandomize), under a minute on two cores; OVERNIGHT_JUNK_SCALE=20 explores twenty times as
many, freshly random. What hypothesis found is a regular test at the end of this file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from daemon.core import control
from daemon.client.checking import Verdict, check_file
from daemon.client.cli import main
from daemon.engine.controller import Controller
from daemon.core.home import Home
from daemon.core.options import OPTIONS
from daemon.engine.runner import stop_request
from daemon.engine.store import Store
from tests.conftest import wait_until

# OVERNIGHT_JUNK_SCALE=20 explores twenty times as many examples, freshly random (CI: the fixed default).
SCALE = float(os.environ.get("OVERNIGHT_JUNK_SCALE", "1"))
SETTINGS = dict(deadline=None, derandomize=SCALE == 1, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much, HealthCheck.large_base_example])


class Scratch:
    """A fresh home per example (hypothesis runs many examples in one test call: no function-scoped fixture)."""

    def __enter__(self) -> Home:
        self.root = Path(tempfile.mkdtemp(prefix="junk-"))
        home = Home(self.root / "home")
        home.create()
        return home

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# --- values ---------------------------------------------------------------------------------------------------
def _nested(depth: int, kind: str = "A") -> str:
    """A placeholder `dump` writes as `depth` nested arrays (A), objects (O) or both in turn (M): deeper than
    json.dumps itself can go."""
    return f"@@DEEP{kind}{depth}@@"


_OPEN = {"A": ("[", "]"), "O": ('{"k": ', "}")}


def _deep_json(kind: str, depth: int) -> str:
    kinds = [kind] if kind != "M" else ["A", "O"]
    opens = "".join(_OPEN[kinds[i % len(kinds)]][0] for i in range(depth))
    closes = "".join(_OPEN[kinds[i % len(kinds)]][1] for i in reversed(range(depth)))
    return opens + '"deep"' + closes


def dump(value: Any) -> str:
    """JSON text of a generated value, deep-nesting placeholders expanded."""
    return re.sub(r'"@@DEEP([AOM])(\d+)@@"', lambda m: _deep_json(m[1], int(m[2])), json.dumps(value))


scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["", " ", "\x00", "\u202e", "\ufeff", "user", "assistant", "human", "gpt",
                                     "NaN", "😀" * 3, "a\r\nb", "\udcff"]))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4) |
                           st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
words = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=30)

# the valid shape of every schema the daemon knows
SCHEMAS: dict[str, Any] = {
    "text": lambda w: {"text": w},
    "prompt": lambda w: {"prompt": w, "completion": w + "!"},
    "alpaca": lambda w: {"instruction": w, "input": "", "output": w + "!"},
    "messages": lambda w: {"messages": [{"role": "user", "content": w}, {"role": "assistant", "content": w}]},
    "sharegpt": lambda w: {"conversations": [{"from": "human", "value": w}, {"from": "gpt", "value": w}]},
}


@st.composite
def mutated_record(draw: st.DrawFn, schema: str) -> dict[str, Any]:
    """A valid record of `schema` with zero to three mutations."""
    rec = SCHEMAS[schema](draw(words))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["type", "missing", "extra", "deep", "huge", "nan", "tools",
                                          "inner"]))
        keys = sorted(rec)
        if how == "type" and keys:
            rec[draw(st.sampled_from(keys))] = draw(json_values)
        elif how == "missing" and keys:
            rec.pop(draw(st.sampled_from(keys)))
        elif how == "extra":
            rec[draw(st.text(max_size=10))] = draw(json_values)
        elif how == "deep" and keys:  # arrays, objects or both nested in a field, 50 to 5000 deep
            rec[draw(st.sampled_from(keys))] = _nested(draw(st.sampled_from([50, 900, 5000])),
                                                       draw(st.sampled_from("AOM")))
        elif how == "huge" and keys:
            rec[draw(st.sampled_from(keys))] = "x" * draw(st.sampled_from([70_000, 300_000]))
        elif how == "nan" and keys:
            rec[draw(st.sampled_from(keys))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        elif how == "tools":  # tool definitions: a list, or a string holding JSON
            rec["tools"] = draw(st.one_of(json_values, st.builds(dump, json_values),
                                          st.sampled_from(["[" * 5000, "[" * 5000 + "]" * 5000, "{}", "[1]"])))
        elif how == "inner":  # junk inside a chat turn
            turns = rec.get("messages") or rec.get("conversations")
            if isinstance(turns, list) and turns and isinstance(turns[0], dict):
                turns[0][draw(st.sampled_from(["role", "content", "from", "value", "tool_calls", "x"]))] = \
                    draw(json_values)
    return rec


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """The serialised file with zero to three byte-level accidents."""
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["bom", "crlf", "cr", "latin1", "nul", "cut", "utf16", "blank", "bytes"]))
        at = draw(st.integers(0, len(data)))
        if how == "bom":
            data = b"\xef\xbb\xbf" + data
        elif how == "crlf":
            data = data.replace(b"\n", b"\r\n", draw(st.integers(1, 3)))
        elif how == "cr":
            data = data.replace(b"\n", b"\r")
        elif how == "latin1":
            data = data[:at] + b"\xe9\xff" + data[at:]
        elif how == "nul":
            data = data[:at] + b"\x00" + data[at:]
        elif how == "cut":
            data = data[:at]
        elif how == "utf16":
            data = data.decode("utf-8", "replace").encode("utf-16")
        elif how == "blank":
            data = data[:at] + b"\n\n  \n" + data[at:]
        else:
            data = data[:at] + draw(st.binary(max_size=20)) + data[at:]
    return data


@st.composite
def dataset_file(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, body): a near-valid dataset of any format, or plain junk."""
    kind = draw(st.sampled_from(["jsonl", "jsonl", "json", "csv", "txt", "parquet", "random"]))
    schema = draw(st.sampled_from(sorted(SCHEMAS)))
    if kind == "random":
        return draw(st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".parquet"])), draw(st.binary(max_size=300))
    records: list[Any] = draw(st.lists(mutated_record(schema), min_size=0, max_size=6))
    if kind in ("jsonl", "json") and draw(st.integers(0, 3)) == 0:  # a whole record nested deep, among good ones
        records.insert(draw(st.integers(0, len(records))), _nested(draw(st.sampled_from([200, 1500, 20_000])),
                                                                   draw(st.sampled_from("AOM"))))
    if kind == "jsonl":
        body = "\n".join(dump(r) for r in records).encode()
    elif kind == "json":
        wrap = draw(st.sampled_from(["list", "object", "nested"]))
        body = dump(records if wrap == "list" else {"data": records} if wrap == "object" else [records]).encode()
    elif kind == "csv":
        cols = sorted({k for r in records for k in r}) or ["text"]
        lines = [",".join(cols)] + [",".join(dump(r.get(c, ""))[:200] for c in cols) for r in records]
        body = "\n".join(lines).encode()
    elif kind == "txt":
        body = "\n".join(draw(words) for _ in records).encode()
    else:
        return ".parquet", _parquet(records, draw(st.booleans()))
    return f".{kind}", draw(byte_mutations(body))


def _parquet(records: list[dict[str, Any]], truncate: bool) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    flat = [{k: json.dumps(v) if isinstance(v, (list, dict)) and k not in ("messages", "conversations") else v
             for k, v in r.items()} for r in records]
    try:
        table = pa.Table.from_pylist(flat)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        table = pa.table({"text": [json.dumps(r)[:100] for r in records]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    return data[: len(data) // 2] if truncate else data


# --- sidecars ---------------------------------------------------------------------------------------------------
toml_scalars = st.one_of(st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                         st.sampled_from(["", "all", "auto", "best", "none", "4bit", "cosine", "/etc", "..",
                                          "../../x", "模型", "modèle-ß", "a" * 300, "support:3", "x:y:z"]))
toml_values = st.recursive(toml_scalars, lambda kids: st.lists(kids, max_size=4) |
                           st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=8)
OWNER_ONLY = sorted(k for k, o in OPTIONS.items() if o.owner_only)


@st.composite
def sidecar_table(draw: st.DrawFn) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for _ in range(draw(st.integers(0, 4))):
        how = draw(st.sampled_from(["known", "known", "sweep", "unknown", "owner", "default"]))
        key = draw(st.sampled_from(sorted(OPTIONS)))
        if how == "known":
            table[key] = draw(toml_values)
        elif how == "sweep":
            good = OPTIONS[key].default
            items = [good] if good is not None and not isinstance(good, dict) else []
            table[key] = items + draw(st.lists(toml_scalars, max_size=3))
        elif how == "unknown":
            table[draw(st.text(min_size=1, max_size=15))] = draw(toml_values)
        elif how == "owner":
            table[draw(st.sampled_from(OWNER_ONLY))] = draw(toml_values)
        elif OPTIONS[key].default is not None:
            table[key] = OPTIONS[key].default
    return table


@st.composite
def sidecar_file(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    try:
        body = tomli_w.dumps(draw(sidecar_table())).encode()
    except (TypeError, ValueError):  # a value TOML cannot write (NaN inside an array is fine, None is not)
        body = b"lora_r = [\n"
    return draw(byte_mutations(body))


@st.composite
def owner_toml_file(draw: st.DrawFn) -> bytes:
    """The owner's overnight.toml: owner-only keys and the [hooks] / [notify] tables, with junk in them."""
    table = draw(sidecar_table())
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["hooks", "notify", "owner"]))
        if how == "hooks":
            table["hooks"] = draw(st.dictionaries(st.sampled_from(["on_complete", "on_fail", "on_reject", "on_x", ""]),
                                                  st.one_of(toml_values, st.lists(st.text(max_size=8), max_size=3)),
                                                  max_size=3))
        elif how == "notify":
            urls = st.sampled_from(["ntfys://topic", "json://localhost:1/x", "mailto://", "nope://x", "", "://",
                                    "ntfys://" + "a" * 300, "http://[::1", "\x00"])
            table["notify"] = draw(st.dictionaries(st.sampled_from(["urls", "on", "x"]),
                                                   st.one_of(toml_values, st.lists(urls, max_size=3), urls),
                                                   max_size=3))
        else:
            table[draw(st.sampled_from(OWNER_ONLY))] = draw(toml_values)
    try:
        return tomli_w.dumps(table).encode()
    except (TypeError, ValueError):
        return b"[hooks]\non_complete = \n"


DEPTHS = [17, 60, 600, 5000]  # just past what options.py allows (16), to past what Python's parser survives


@st.composite
def deep_toml(draw: st.DrawFn) -> tuple[bytes, int]:
    """(body, line): a near-valid options file with one value nested too deep, and the line it is on."""
    depth = draw(st.sampled_from(DEPTHS))
    key = draw(st.sampled_from(sorted(OPTIONS) + ["x", "lora_r", "hooks"]))
    how = draw(st.sampled_from(["array", "table", "mixed", "dotted", "header", "lines"]))
    if how == "array":
        text = f"{key} = " + "[" * depth + "1" + "]" * depth
    elif how == "table":
        text = f"{key} = " + "{a = " * depth + "1" + "}" * depth
    elif how == "mixed":
        text = f"{key} = " + "[{a = " * ((depth + 1) // 2) + "1" + "}]" * ((depth + 1) // 2)
    elif how == "dotted":
        text = key + ".a" * depth + " = 1"
    elif how == "header":
        text = "[" + ".".join([key] * depth) + "]\nx = 1"
    else:  # a list opened over many lines
        text = f"{key} = [\n" + "[\n" * depth + "1\n" + "]\n" * depth + "]"
    before = [b for b in draw(st.lists(st.sampled_from(["lora_r = 8", "learning_rate = 3e-4", "# a comment", "",
                                                        "epochs = 1"]), max_size=3, unique=True))
              if not b.startswith(key + " ")]  # each key once (a repeated key is another error)
    body = "\n".join(before + [text]) + "\n"
    line = len(before) + 1 + (min(depth, 16) if how == "lines" else 0)  # the line that goes too deep
    return body.encode(), line


@st.composite
def probes_file(draw: st.DrawFn) -> bytes:
    schema = draw(st.sampled_from(sorted(SCHEMAS)))
    records = draw(st.lists(mutated_record(schema), max_size=5))
    return draw(byte_mutations("\n".join(dump(r) for r in records).encode()))


# --- the property: accepted, or a message naming the file with a Fix -------------------------------------------
def assert_answered(verdict: Verdict, files: list[Path]) -> None:
    for p in verdict.problems:
        assert any(f.name in p.message or f.stem in p.message for f in files), (p.message, files)
        assert "Fix:" in p.message, p.message
        assert "Traceback" not in p.message


@settings(max_examples=int(120 * SCALE), **SETTINGS)
@given(dataset_file())
def test_a_junk_dataset_is_accepted_or_answered_with_a_fix(ds: tuple[str, bytes]) -> None:
    suffix, body = ds
    with Scratch() as home:
        f = home.root / f"data{suffix}"
        f.write_bytes(body)
        assert_answered(check_file(f, home), [f])


@settings(max_examples=int(120 * SCALE), **SETTINGS)
@given(sidecar_file(), st.booleans())
def test_a_junk_sidecar_is_accepted_or_answered_with_a_fix(body: bytes, beside_a_dataset: bool) -> None:
    with Scratch() as home:
        side = home.root / "data.toml"
        side.write_bytes(body)
        files = [side]
        if beside_a_dataset:  # checked with its dataset, as a drop is
            data = home.root / "data.jsonl"
            data.write_text('{"text": "hello"}\n{"text": "world"}\n')
            files.append(data)
        assert_answered(check_file(files[-1], home), files)


@settings(max_examples=int(80 * SCALE), **SETTINGS)
@given(owner_toml_file())
def test_a_junk_overnight_toml_is_accepted_or_answered_with_a_fix(body: bytes) -> None:
    with Scratch() as home:
        f = home.root / "overnight.toml"  # the owner's file, checked where it lies (not in the inbox)
        f.write_bytes(body)
        assert_answered(check_file(f, home), [f])


@settings(max_examples=int(40 * SCALE), **SETTINGS)
@given(deep_toml(), st.booleans())
def test_a_deeply_nested_sidecar_is_refused_naming_the_sidecar_its_line_and_the_fix(deep: tuple[bytes, int],
                                                                                    beside_a_dataset: bool) -> None:
    """Nesting depth: never a RecursionError, and the message names the sidecar (not the dataset it came with)."""
    body, line = deep
    with Scratch() as home:
        side = home.root / "data.toml"
        side.write_bytes(body)
        checked = side
        if beside_a_dataset:
            checked = home.root / "data.jsonl"
            checked.write_text('{"text": "hello"}\n{"text": "world"}\n')
        verdict = check_file(checked, home)
        assert not verdict.ok
        [problem] = verdict.problems
        assert problem.message.startswith(f"{side}: line {line}: values nested more than"), problem.message
        assert "Fix:" in problem.message and "RecursionError" not in problem.message


@settings(max_examples=int(30 * SCALE), **SETTINGS)
@given(deep_toml())
def test_a_deeply_nested_overnight_toml_is_one_problem_for_check_and_the_daemons_intake(deep: tuple[bytes, int]
                                                                                       ) -> None:
    """`overnight check` answers with the file, the line and the fix; the daemon's intake holds the drops with the
    same message as its PROBLEM line, said once however many passes see it (no traceback in the log)."""
    from daemon.engine.intake import Intake
    from daemon.core.log import log

    body, line = deep
    with Scratch() as home:
        home.toml.write_bytes(body)
        verdict = check_file(home.toml, home)
        assert not verdict.ok and verdict.problems[0].message.startswith(f"{home.toml}: line {line}: values nested")
        (home.inbox / "d.jsonl").write_text('{"text": "hello"}\n')
        lines: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
        log.addHandler(handler)
        store = Store(home.db)
        intake = Intake(home, store, settle=0)
        try:
            for _ in range(3):
                assert intake.scan() == 0
        finally:
            intake.close()
            store.close()
            log.removeHandler(handler)
        assert intake.problem and intake.problem.startswith(f"{home.toml}: line {line}: values nested")
        assert len(lines) == 1 and "Traceback" not in lines[0], lines
        assert (home.inbox / "d.jsonl").exists()  # the drop waits for the fix


@settings(max_examples=int(80 * SCALE), **SETTINGS)
@given(probes_file())
def test_a_junk_probe_file_is_accepted_or_answered_with_a_fix(body: bytes) -> None:
    with Scratch() as home:
        f = home.root / "data.probes.jsonl"
        f.write_bytes(body)
        assert_answered(check_file(f, home), [f])


@settings(max_examples=int(25 * SCALE), **SETTINGS)
@given(dataset_file(), sidecar_file(), probes_file())
def test_overnight_check_answers_a_junk_drop_without_a_traceback(ds: tuple[str, bytes], side: bytes,
                                                                 probes: bytes) -> None:
    suffix, body = ds
    with Scratch() as home:
        files = [home.root / f"data{suffix}", home.root / "data.toml", home.root / "data.probes.jsonl"]
        for f, b in zip(files, (body, side, probes)):
            f.write_bytes(b)
        r = CliRunner().invoke(main, ["check", "--home", str(home.root), *map(str, files)])
        assert r.exit_code in (0, 1) and not isinstance(r.exception, Exception), (r.exception, r.output)
        assert "Traceback" not in r.output
        if r.exit_code:
            assert "Fix:" in r.output, r.output


# --- control files ------------------------------------------------------------------------------------------
targets = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["a-1", "q-1", "modèle-ß-20260101-000000", "模型-20260101-000000", " a-1 ", "a-1\nq-1",
                     "a-1 5", "../a-1", "a/1", "\u202ea-1", "A-1", "a-1\x00", "ａ-1", "e\u0301-1"]),
    st.builds(lambda n: "x" * n, st.sampled_from([200, 5000, 70_000])),
)


# numbers int() and str.isdigit() disagree on
DIGITS = st.sampled_from(["²", "³", "¹⁰", "٣", "१०", "Ⅻ", "½", "1_000", "0x10", "+-1", "1e3", "  7  "])


@st.composite
def control_file(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(list(control.COMMANDS) + ["bogus", "PAUSE", "pause.txt"] +
                                [f"{k}.20260101-000000-000001-7-abcdef" for k in control.COMMANDS]))  # the CLI's
    shapes = {"priority": ["priority"] * 3, "activate": ["model"] * 3, "delete": ["model"] * 3}.get(kind, [])
    how = draw(st.sampled_from(shapes + ["empty", "target", "target", "lines", "priority", "model", "binary"]))
    if how == "empty":
        text = draw(st.sampled_from(["", "\n", "  \n", "# a comment\n"]))
    elif how == "target":
        text = draw(targets)
    elif how == "lines":
        text = "\n".join(draw(st.lists(targets, min_size=2, max_size=4)))
    elif how == "priority":
        text = "\n".join(f"{draw(targets)} {draw(st.one_of(st.integers(), st.text(max_size=5), DIGITS))}"
                         for _ in range(draw(st.integers(1, 3))))
    elif how == "model":
        text = f"{draw(targets)} {draw(st.one_of(st.integers(-5, 10**30), st.text(max_size=5), DIGITS))}"
    else:
        return kind, draw(st.binary(max_size=100))
    body = text.encode("utf-8", "surrogateescape")
    return kind, draw(byte_mutations(body)) if draw(st.booleans()) else body


@settings(max_examples=int(150 * SCALE), **SETTINGS)
@given(control_file())
def test_a_junk_control_file_parses_or_is_refused_with_a_fix(cf: tuple[str, bytes]) -> None:
    kind, body = cf
    with Scratch() as home:
        path = home.control / kind
        path.write_bytes(body)
        try:
            cmd = control.parse(path)
        except control.ControlError as e:
            assert f"control/{control.shown(kind)}" in str(e) and "Fix" in str(e), str(e)
            assert "\n" not in str(e).strip() or kind == "priority", str(e)
            return
        assert cmd.kind == control.split_name(kind)[0]
        if cmd.target is not None:
            assert control.RUN_ID.fullmatch(cmd.target)


class _Stub:
    def __init__(self, run_id: str) -> None:
        self.run_id, self.requested, self.paused = run_id, None, False

    def request_stop(self, reason: str) -> str:
        self.requested = stop_request(self.requested, reason)
        return self.requested

    def set_paused(self, paused: bool) -> None:
        self.paused = paused


@settings(max_examples=int(100 * SCALE), **SETTINGS)
@given(st.lists(control_file(), min_size=1, max_size=3), st.booleans())
def test_the_controller_applies_or_rejects_junk_and_keeps_every_byte(files: list[tuple[str, bytes]],
                                                                     running: bool) -> None:
    with Scratch() as home:
        store = Store(home.db)
        try:
            for rid, state in (("a-1", "training" if running else "queued"), ("q-1", "queued"),
                               ("modèle-ß-20260101-000000", "stopped")):
                (home.runs / rid).mkdir()
                store.insert_run({"id": rid, "name": rid.split("-")[0], "dataset": f"{rid}.jsonl", "state": state,
                                  "priority": 0, "seq": store.next_seq(), "run_dir": str(home.runs / rid)})
            ctl = Controller(home, store, lambda rid, state, reason, **f: store.set_state(rid, state, reason, **f))
            written: dict[str, bytes] = {}
            for kind, body in files:
                path = home.control / kind
                path.write_bytes(body)
                old = time.time() - 5
                os.utime(path, (old, old))
                written[kind] = body
            ctl.apply([_Stub("a-1")] if running else [])
            ctl.apply([_Stub("a-1")] if running else [])  # a second pass changes nothing it should not
            rejected = sorted(p for p in home.control_rejected.iterdir() if not p.name.endswith(".error.txt"))
            kept = [p.read_bytes() for p in rejected]
            events = list(store.db.query("SELECT * FROM control_events"))
            for p in rejected:
                error = p.with_name(p.name + ".error.txt").read_text()
                assert "control/" in error and "Fix:" in error, error
            for kind, body in written.items():
                where = [home.control / kind] + sorted(home.control_done.iterdir()) + rejected
                assert any(q.exists() and q.read_bytes() == body for q in where), (kind, body)
                if (home.control / kind).exists():  # still in place: only a held pause or stop stays
                    assert kind in ("pause", "stop"), (kind, body, events)
            assert len(kept) == len([e for e in events if e["status"] == "rejected"])
        finally:
            store.close()


# --- through the real daemon ------------------------------------------------------------------------------
@pytest.mark.e2e
def test_the_daemon_takes_or_rejects_generated_drops_and_keeps_every_byte(home: Path, tiny_model: Path, daemon_proc,
                                                                          tmp_path: Path) -> None:
    """Generated drops (a dataset, sometimes a sidecar) all at once into a running daemon's inbox: each is taken
    into a run folder or lies byte-identical in inbox/rejected/ beside an error file that names it with a Fix."""
    drops: list[tuple[tuple[str, bytes], bytes | None]] = []

    @settings(max_examples=int(20 * SCALE), **SETTINGS)
    @given(dataset_file(), st.one_of(st.none(), sidecar_file()))
    def collect(ds: tuple[str, bytes], side: bytes | None) -> None:
        drops.append((ds, side))

    collect()
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "control" / "stop").write_text("")  # intake only: nothing trains
    d = daemon_proc()
    staging = tmp_path / "staging"
    staging.mkdir()
    originals: dict[str, bytes] = {}
    for i, ((suffix, body), side) in enumerate(drops):
        for name, data in ((f"junk{i}.toml", side), (f"junk{i}{suffix}", body)):  # a sidecar first: it waits
            if data is not None:
                (staging / name).write_bytes(data)
                os.rename(staging / name, home / "inbox" / name)
                originals[name] = data
    wait_until(lambda: not any((home / "inbox" / n).exists() for n in originals), 90, what="every drop handled")
    assert d.proc.poll() is None
    rejected = home / "inbox" / "rejected"
    taken = {p.name: p.read_bytes() for p in (home / "runs").glob("*/dataset/*")}
    for name, data in originals.items():
        if (rejected / name).exists():
            assert (rejected / name).read_bytes() == data, name
            stem = name.split(".")[0]
            error = (rejected / f"{stem}.error.txt").read_text()
            assert stem in error and "Fix" in error and "Traceback" not in error, error
        else:
            assert taken.get(name) == data, (name, data[:80])
    log = (home / "overnight.log").read_text()
    assert not [sign for sign in BUG_SIGNS if sign in log], log


# What overnight.log says when a drop hits a bug instead of a Fix: intake's catch-all (daemon/engine/intake.py) and the
# daemon loop's guard (daemon/engine/scheduler.py), each with a traceback.
BUG_SIGNS = ("inbox: unexpected error", "inbox: could not create a run", "internal error in", "Traceback")


def test_the_bug_signs_are_what_intake_writes_when_a_drop_breaks_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The property above looks for BUG_SIGNS: intake's catch-all must write one, or that check could never fail."""
    from daemon.engine import intake as intake_mod
    from daemon.core.log import log

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug in validation")

    monkeypatch.setattr(intake_mod, "validate", broken)
    home = Home(tmp_path / "home")
    home.create()
    (home.inbox / "x.jsonl").write_text('{"text": "x"}\n')
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    log.addHandler(handler)
    store = Store(home.db)
    intake = intake_mod.Intake(home, store)
    try:
        verdict = intake._judge({"dataset": home.inbox / "x.jsonl"})
    finally:
        intake.close()
        store.close()
        log.removeHandler(handler)
    assert "likely a bug in overnight" in verdict.error
    written = "\n".join(lines)
    assert [sign for sign in BUG_SIGNS if sign in written] == ["inbox: unexpected error", "Traceback"], written


# --- what hypothesis found: the minimal examples, as regular tests ------------------------------------------
DEEP = "[" * 5000 + '"x"' + "]" * 5000


@pytest.mark.parametrize("name, body", [
    ("data.jsonl", '{"instruction": "q", "input": ' + DEEP + ', "output": "a"}\n'),
    ("data.json", "[" + DEEP + "]"),
    ("data.csv", 'messages\n"' + DEEP.replace('"', '""') + '"\n'),
    ("data.probes.jsonl", '{"messages": ' + DEEP + "}\n"),
    ("data.jsonl", json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
                               "tools": "[" * 5000}) + "\n"),
])
def test_json_nested_too_deeply_is_refused_with_a_fix_not_a_recursion_error(tmp_path: Path, name: str,
                                                                              body: str) -> None:
    f = tmp_path / name
    f.write_text(body)
    verdict = check_file(f, Home(tmp_path))
    assert not verdict.ok and "nested too deeply" in verdict.problems[0].message, verdict.problems
    assert_answered(verdict, [f])


@pytest.mark.parametrize("name", ["data.jsonl", "data.probes.jsonl"])
@pytest.mark.parametrize("speaker", [[], {}])
def test_a_sharegpt_speaker_that_is_a_list_is_refused_not_a_type_error(tmp_path: Path, name: str,
                                                                       speaker: Any) -> None:
    f = tmp_path / name
    f.write_text(json.dumps({"conversations": [{"from": speaker, "value": "0"}, {"from": "gpt", "value": "0"}]}))
    verdict = check_file(f, Home(tmp_path))
    assert not verdict.ok and "'from' must be a string" in verdict.problems[0].message, verdict.problems
    assert_answered(verdict, [f])


def test_an_unknown_sidecar_option_says_the_fix(tmp_path: Path) -> None:
    f = tmp_path / "data.toml"
    f.write_text("0 = []\n")
    assert_answered(check_file(f, Home(tmp_path)), [f])


def test_a_control_file_over_64_kib_says_the_fix(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.create()
    (home.control / "pause").write_text("x" * 70_000)
    with pytest.raises(control.ControlError, match="Fix: echo RUN_ID > control/pause"):
        control.parse(home.control / "pause")
