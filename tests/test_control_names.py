"""A dropped file whose name holds a line break or another control character is refused at intake, like a link or a
name that is not UTF-8: moved to inbox/rejected/ beside NAME.error.txt, the name shown escaped (\\n) in the error
and the log, so that no name splits a log line or fakes one. Nothing is lost, and the daemon goes on."""
from __future__ import annotations

import pytest

from daemon.core.fsutil import shown_name
from tests.conftest import overnight

GOOD = '{"prompt": "2+2=", "completion": "4"}\n'
FAKE = "2026-01-01 00:00:00 inbox: accepted x.jsonl"


@pytest.mark.parametrize(("name", "shown"), [("a\nb.jsonl", "a\\nb.jsonl"), ("a\x1b[31mb", "a\\x1b[31mb"),
                                             ("a\u2028b", "a\\u2028b"), ("a\tb", "a\\tb"), ("plain é.jsonl", None),
                                             ("bad\udcff.jsonl", "bad\ufffd.jsonl")])
def test_shown_names_never_break_a_line(name: str, shown: str | None) -> None:
    assert shown_name(name) == (shown or name)


def test_a_name_with_a_control_character_is_refused_and_kept(home) -> None:
    names = [f"evil\n{FAKE}.jsonl", "tab\tname.jsonl", "esc\x1b[2Jname.toml"]
    for name in names:
        (home / "inbox" / name).write_text(GOOD)
    res = overnight("daemon", "--once", "--settle", "0.1", home=home, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    rejected = home / "inbox" / "rejected"
    assert sorted(p.name for p in rejected.iterdir() if not p.name.endswith(".error.txt")) == sorted(names)
    assert not any((home / "inbox").glob("*.jsonl")) and not list(home.joinpath("runs").iterdir())
    errors = "\n".join(p.read_text() for p in rejected.glob("*.error.txt"))
    assert len(list(rejected.glob("*.error.txt"))) == 3, errors
    assert f"evil\\n{FAKE}.jsonl: the file name holds a line break (\\n, U+000A)" in errors, errors
    assert "tab\\tname.jsonl: the file name holds a tab (\\t, U+0009)" in errors, errors
    assert "esc\\x1b[2Jname.toml: the file name holds an escape character (\\x1b, U+001B)" in errors, errors
    assert "Fix: rename it without control characters (e.g. 'evil_2026" in errors, errors
    log = (home / "overnight.log").read_text()
    assert not any(line.startswith(FAKE[:10]) for line in log.splitlines()), log  # no faked line
    assert all(line.startswith("[") for line in log.splitlines() if line), log
    assert "\x1b" not in log and "\t" not in log, log
