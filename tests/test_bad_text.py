"""Text that is not Unicode: a lone UTF-16 surrogate (`"\\ud800"` without its other half) passes `json.loads`, but
no tokenizer, log or report can encode it. It is refused where the file is validated — datasets of every format
that can hold one, probe files and eval files — with the file, the line or record, the field and the fix, by
`overnight check` (with or without a base model) and by the daemon alike, never as a traceback or a "likely a bug"."""
from __future__ import annotations

import json
from pathlib import Path

from daemon.core.dataformats import surrogate_problem
from tests.conftest import overnight

SURROGATE = "unpaired UTF-16 surrogate"


def jsonl(path: Path, *raw_lines: str) -> Path:
    """Lines written as given (the surrogate escapes stay escapes: json.dumps would write them the same way)."""
    path.write_text("".join(line + "\n" for line in raw_lines), encoding="utf-8")
    return path


def write_drops(folder: Path) -> dict[str, Path]:
    """One bad file per place a string comes from, and one with a correct surrogate pair."""
    folder.mkdir(parents=True, exist_ok=True)
    good = '{"prompt": "2+2=", "completion": "4"}'
    files = {
        "prompt": jsonl(folder / "prompt.jsonl", good, '{"prompt": "x\\ud800", "completion": "b"}'),
        "json": folder / "chat.json",
        "csv": folder / "table.csv",
        "key": jsonl(folder / "key.jsonl", '{"pro\\ud800mpt": "x", "completion": "b"}'),
        "paired": jsonl(folder / "paired.jsonl", '{"prompt": "smile \\ud83d\\ude00", "completion": "b"}'),
    }
    files["json"].write_text('[{"messages": [{"role": "user", "content": "hi"}, '
                             '{"role": "assistant", "content": "\\udc00!"}]}]', encoding="utf-8")
    cell = '[{"role": "user", "content": "a\\ud800"}, {"role": "assistant", "content": "b"}]'  # JSON in a cell
    files["csv"].write_text('messages\n"' + cell.replace('"', '""') + '"\n', encoding="utf-8")
    return files


def by_file(stdout: str) -> dict[str, dict]:
    return {Path(v["file"]).name: v for v in json.loads(stdout)}


def test_a_lone_surrogate_is_found_in_any_field_and_a_pair_is_text() -> None:
    assert surrogate_problem({"messages": [{"role": "user", "content": "é\udc00"}]})[0] == "messages[0].content"
    assert surrogate_problem({"history": [["a", "b\ud800"]]})[0] == "history[0][1]"
    assert surrogate_problem({"prompt": "😀 é ü", "completion": json.loads('"\\ud83d\\ude00"')}) is None
    field, problem = surrogate_problem({"x\ud800": 1})
    assert field is None and "'x\\ud800'" in problem  # shown escaped: printing it raw would fail


def test_check_names_file_place_field_and_fix_in_every_format(tmp_path: Path) -> None:
    files = write_drops(tmp_path)
    res = overnight("check", *(str(p) for p in files.values()), "--json")
    verdicts = by_file(res.stdout)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    expected = {"prompt.jsonl": "prompt.jsonl, line 2, field 'prompt'",
                "chat.json": "chat.json, record 1 (line 1), field 'messages[1].content'",
                "table.csv": "table.csv, row 2, field 'messages[0].content'",
                "key.jsonl": "key.jsonl, line 1"}
    for name, place in expected.items():
        v = verdicts[name]
        assert not v["ok"], v
        assert v["error"].startswith(place + ":") and SURROGATE in v["error"], v["error"]
        assert "Fix: remove the escape, or write the full surrogate pair" in v["error"], v["error"]
    assert verdicts["paired.jsonl"]["ok"], verdicts["paired.jsonl"]


def test_check_with_a_base_model_says_the_error_not_a_traceback(tmp_path: Path, tiny_model: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    data = jsonl(tmp_path / "s.jsonl", '{"prompt": "x\\ud800", "completion": "b"}')
    res = overnight("check", str(data), home=home)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr and "TypeError" not in res.stdout + res.stderr
    assert "s.jsonl, line 1, field 'prompt'" in res.stdout and SURROGATE in res.stdout, res.stdout


def probe_and_eval_drops(folder: Path) -> None:
    good = '{"prompt": "2+2=", "completion": "4"}'
    jsonl(folder / "probed.jsonl", good)
    jsonl(folder / "probed.probes.jsonl", '{"prompt": "1+1=", "reference": "2"}',
          '{"prompt": "x\\ud800", "reference": "b"}')
    jsonl(folder / "scored.jsonl", good)
    jsonl(folder / "scored.eval.jsonl", '{"messages": [{"role": "user", "content": "q"}, '
                                        '{"role": "assistant", "content": "\\udbff"}]}')


def test_probe_and_eval_files_refuse_a_lone_surrogate(tmp_path: Path) -> None:
    probe_and_eval_drops(tmp_path)
    res = overnight("check", str(tmp_path / "probed.jsonl"), str(tmp_path / "scored.jsonl"), "--json")
    verdicts = by_file(res.stdout)
    assert res.returncode == 1, res.stdout + res.stderr
    probed, scored = verdicts["probed.jsonl"]["error"], verdicts["scored.jsonl"]["error"]
    assert "probed.probes.jsonl, line 2, field 'prompt'" in probed and SURROGATE in probed, probed
    assert "scored.eval.jsonl, line 1, field 'messages[1].content'" in scored and SURROGATE in scored, scored


def test_the_daemon_rejects_them_with_the_place_and_keeps_every_file(home: Path, tmp_path: Path) -> None:
    (home / "overnight.toml").write_text('')  # no model: refused before any model is needed
    files = write_drops(tmp_path / "src")
    files.pop("paired").unlink()  # a good drop: it would wait for a model
    probe_and_eval_drops(tmp_path / "src")
    dropped = sorted(p.name for p in (tmp_path / "src").iterdir())
    for name in dropped:
        (home / "inbox" / name).write_bytes((tmp_path / "src" / name).read_bytes())
    res = overnight("daemon", "--once", "--settle", "0.1", home=home, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    rejected = home / "inbox" / "rejected"
    assert sorted(p.name for p in rejected.iterdir() if not p.name.endswith(".error.txt")) == dropped
    errors = {p.name: p.read_text() for p in rejected.glob("*.error.txt")}
    assert set(errors) == {"prompt.error.txt", "chat.error.txt", "table.error.txt", "key.error.txt",
                           "probed.error.txt", "scored.error.txt"}, errors
    for name, text in errors.items():
        assert SURROGATE in text and "Fix: remove the escape" in text, (name, text)
        assert "likely a bug" not in text and "TypeError" not in text, (name, text)
    assert "probed.probes.jsonl, line 2, field 'prompt'" in errors["probed.error.txt"]
    assert "scored.eval.jsonl, line 1, field 'messages[1].content'" in errors["scored.error.txt"]
    assert "Traceback" not in (home / "overnight.log").read_text()
