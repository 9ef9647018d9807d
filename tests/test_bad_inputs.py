"""A seeded corpus of pathological inputs through `overnight check` and the real daemon: a precise message with a
Fix, never a traceback, the daemon still up, every rejected file kept byte-identical beside its error file."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon.client.cli import main
from tests.conftest import wait_until

EXTS = [".jsonl", ".json", ".csv", ".txt", ".parquet", ".toml", ".probes.jsonl"]


def junk(rng: random.Random) -> bytes:
    """One pathological file body: random bytes, broken JSON, wrong types, BOMs, NULs, lone surrogates…"""
    makers = [
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))),
        lambda: b"\xef\xbb\xbf" + json.dumps({"prompt": "a", "completion": "b"}).encode() + b"\n",
        lambda: (json.dumps({"prompt": "x" * rng.randrange(1, 5), "completion": None}) + "\n").encode(),
        lambda: b'{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": 3}]}\n',
        lambda: b"\x00" * rng.randrange(1, 50),
        lambda: json.dumps([rng.random() for _ in range(5)]).encode(),
        lambda: b'{"text": "fine"}\n{"text": "oops"\n',
        lambda: "\n".join(json.dumps({"instruction": rng.choice(["", "q", 5, None]),
                                      "output": rng.choice(["", "a", [], {}])}) for _ in range(5)).encode(),
        lambda: b'a,b\n1\n"unterminated\n',
        lambda: "\u202e\ud800".encode("utf-8", "surrogatepass"),
        lambda: json.dumps({"conversations": [{"from": "human", "value": "q"}], "x": 1}).encode() + b"\n",
        lambda: b"{" * rng.randrange(1, 5000),
        lambda: b"lora_r = [\nbase_model = 5\n",
        lambda: b"learning_rate = -1\nmax_length = 99999999999999999999\n",
        lambda: b"",
    ]
    return rng.choice(makers)()


def corpus(root: Path, n: int, seed: int) -> list[Path]:
    rng = random.Random(seed)
    files = []
    for i in range(n):
        folder = root / f"c{i}"
        folder.mkdir(parents=True)
        f = folder / f"data{i}{rng.choice(EXTS)}"
        f.write_bytes(junk(rng))
        files.append(f)
    return files


def test_check_answers_every_bad_input_with_a_fix_and_no_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    for f in corpus(tmp_path, 150, seed=1):
        r = runner.invoke(main, ["check", str(f)])
        assert r.exit_code in (0, 1) and not isinstance(r.exception, Exception), (f.read_bytes()[:80], r.output)
        assert "Traceback" not in r.output
        if r.exit_code == 1:
            assert "Fix" in r.output, (f.name, f.read_bytes()[:80], r.output)


@pytest.mark.e2e
def test_the_daemon_rejects_a_bad_corpus_and_keeps_every_byte(home: Path, tiny_model: Path, daemon_proc,
                                                              tmp_path: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "control" / "stop").write_text("")  # intake only
    d = daemon_proc()
    files = [f for f in corpus(tmp_path, 30, seed=2) if not f.name.endswith((".toml", ".probes.jsonl"))]
    originals = {f.name: f.read_bytes() for f in files}
    for f in files:
        os.rename(f, home / "inbox" / f.name)
    wait_until(lambda: not any((home / "inbox" / n).exists() for n in originals), 60, what="every drop handled")
    assert d.proc.poll() is None
    rejected = home / "inbox" / "rejected"
    assert len([n for n in originals if (rejected / n).exists()]) >= len(originals) // 2
    for name, data in originals.items():
        kept = rejected / name
        if kept.exists():  # rejected: byte-identical, with the reason and its fix
            assert kept.read_bytes() == data
            error = (rejected / f"{Path(name).stem}.error.txt").read_text()
            assert "Fix" in error and "Traceback" not in error, error
    assert "internal error" not in (home / "overnight.log").read_text()
