"""`overnight check` says what the daemon will do: for bad and good drops, check exits 1 exactly when the daemon
rejects the drop, and its first error line is the first line of the drop's NAME.error.txt."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from tests.conftest import overnight
from tests.test_junk import SCALE, SETTINGS, dataset_file, sidecar_file

QA = '{"prompt": "2+2=", "completion": "4"}\n'
# as a chat exchange about 56 tokens: cut to max_length = 24, nothing of its answer is left
LONG_PROMPT = json.dumps({"prompt": "a " * 40, "completion": "b"}) + "\n"


def _named_cases(tmp_path: Path) -> dict[str, dict[str, bytes]]:
    """Drops by stem, each {file name: bytes}: the reviewer's cases, good ones beside them."""
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text('{"model_type": "qwen2"}')
    return {
        "good": {"good.jsonl": QA.encode() * 5},
        "broken": {"broken.jsonl": b'{"text": "fine"}\n{"text": "oops"\n'},
        "role": {"role.jsonl": b'{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}\n'},
        "many": {"many.jsonl": QA.encode(), "many.toml": b'lora_rank = 8\nlearning_rate = -1\nmax_length = "a"\n'},
        "context": {"context.jsonl": QA.encode(), "context.toml": b"max_length = 99999\n"},
        "same": {"same.jsonl": QA.encode(), "same.csv": b"prompt,completion\na,b\n", "same.toml": b"lora_r = 4\n"},
        "weightless": {"weightless.jsonl": QA.encode(),
                       "weightless.toml": f'base_model = "{no_weights}"\n'.encode()},
        "cut": {"cut.jsonl": QA.encode() + LONG_PROMPT.encode() * 3, "cut.toml": b"max_length = 24\n"},
        "cutok": {"cutok.jsonl": QA.encode() + LONG_PROMPT.encode() * 3,
                  "cutok.toml": b"max_length = 24\nallow_truncation = true\n"},
        "chat": {"chat.jsonl": b'{"messages": [{"role": "user", "content": "hi"}, '
                               b'{"role": "assistant", "content": "yo"}]}\n'},
        # preference data (issue 24): a good pair file, a pair that teaches nothing, an objective that does not fit
        "pairs": {"pairs.jsonl": b'{"prompt": "2+2=", "chosen": "4", "rejected": "5"}\n' * 3},
        "pairsame": {"pairsame.jsonl": b'{"prompt": "2+2=", "chosen": "4", "rejected": "5"}\n'
                                       b'{"prompt": "2+2=", "chosen": "4", "rejected": "4"}\n'},
        "pairsft": {"pairsft.jsonl": b'{"prompt": "2+2=", "chosen": "4", "rejected": "5"}\n',
                    "pairsft.toml": b'objective = "sft"\n'},
        # ranked by an eval report's score with no eval file to score: refused, not ranked by the loss unsaid
        "scored": {"scored.jsonl": QA.encode() * 5, "scored.toml": b'select_metric = "exact"\n'},
        "scoredok": {"scoredok.jsonl": QA.encode() * 5, "scoredok.toml": b'select_metric = "exact"\n',
                     "scoredok.eval.jsonl": b'{"prompt": "2+2=", "reference": "4"}\n'},
    }


def _junk_cases() -> dict[str, dict[str, bytes]]:
    """Generated drops (tests/test_junk.py): a near-valid or junk dataset, sometimes a sidecar."""
    drops: list[tuple[tuple[str, bytes], bytes | None]] = []

    @settings(max_examples=int(25 * SCALE), **SETTINGS)
    @given(dataset_file(), st.one_of(st.none(), sidecar_file()))
    def collect(ds: tuple[str, bytes], side: bytes | None) -> None:
        drops.append((ds, side))

    collect()
    cases = {}
    for i, ((suffix, body), side) in enumerate(drops):
        files = {f"junk{i}{suffix}": body}
        if side is not None:
            files[f"junk{i}.toml"] = side
        cases[f"junk{i}"] = files
    return cases


def _first_line(problem: dict) -> str:
    return problem["message"].splitlines()[0]


def _said(error_file: Path, home: Path) -> str:
    """The error's first line, its paths where check read the files: the error file names them where they were
    moved (inbox/rejected/)."""
    return error_file.read_text().splitlines()[0].replace(f"{error_file.parent}/", f"{home / 'inbox'}/")


@pytest.mark.e2e
def test_check_exits_1_exactly_when_the_daemon_rejects_the_drop_and_says_the_same_first(home: Path, tiny_model: Path,
                                                                                         tmp_path: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "control" / "stop").write_text("")  # intake only: nothing trains
    cases = {**_named_cases(tmp_path), **_junk_cases()}
    for files in cases.values():
        for name, data in files.items():
            (home / "inbox" / name).write_bytes(data)
    # checked where the daemon will find them: the messages name the same paths
    names = [name for files in cases.values() for name in files]
    res = overnight("check", "--json", *(str(home / "inbox" / n) for n in names), home=home, timeout=600)
    verdicts = {Path(v["file"]).name: v for v in json.loads(res.stdout)}
    assert overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600).returncode == 0

    rejected = home / "inbox" / "rejected"
    taken = {p.name for p in (home / "runs").glob("*/dataset/*")}
    for stem, files in cases.items():
        error_file = rejected / f"{stem}.error.txt"
        datasets = [n for n in files if not n.endswith(".toml")]
        for name in datasets:
            v = verdicts[name]
            if error_file.exists():
                assert not v["ok"], (name, error_file.read_text())
                assert _first_line(v["problems"][0]) == _said(error_file, home), name
            else:
                assert v["ok"] and name in taken, (name, v["problems"])

    # a sidecar checked on its own gets the checks it gets beside its dataset
    for stem in ("many", "context", "same", "weightless"):
        v = verdicts[f"{stem}.toml"]
        assert not v["ok"] and _first_line(v["problems"][0]) == _said(rejected / f"{stem}.error.txt", home)
    assert verdicts["cutok.toml"]["ok"]
    # every bad key of a sidecar, each with its fix, in the error file as in check
    many = (rejected / "many.error.txt").read_text().split("\n\n")[0].replace(f"{rejected}/", f"{home / 'inbox'}/")
    many = many.splitlines()
    assert many == [p["message"] for p in verdicts["many.toml"]["problems"]] and len(many) == 3
    assert all("Fix:" in line for line in many)


def test_the_reviewers_cases_say_what_is_wrong_and_the_fix(home: Path, tiny_model: Path, tmp_path: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    for files in _named_cases(tmp_path).values():
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
    out = {n: overnight("check", str(tmp_path / n), home=home) for n in
           ("many.toml", "context.toml", "same.csv", "weightless.jsonl", "cut.jsonl", "cutok.jsonl", "scored.jsonl",
            "scoredok.jsonl")}
    many = out["many.toml"].stdout
    assert "unknown option 'lora_rank'" in many and "'learning_rate' = -1" in many and "'max_length' = 'a'" in many
    assert many.count("Fix:") == 3
    assert "max_length = 99999 is longer than the context" in out["context.toml"].stdout
    assert "same.csv and same.jsonl are both named same" in out["same.csv"].stdout
    assert f"{tmp_path / 'no-weights'} has a config.json but no weights" in out["weightless.jsonl"].stdout
    cut = out["cut.jsonl"].stdout
    assert "3 of 4 records would be dropped" in cut and "Fix: raise max_length (the longest record has " in cut
    assert "or set allow_truncation = true" in cut and out["cut.jsonl"].returncode == 1
    assert out["cutok.jsonl"].returncode == 0, out["cutok.jsonl"].stdout
    assert 'select_metric = "exact" (set in scored.toml) ranks by the eval report\'s scores on an eval file, and ' \
           "none applies (no scored.eval.jsonl beside the dataset" in out["scored.jsonl"].stdout
    assert out["scoredok.jsonl"].returncode == 0, out["scoredok.jsonl"].stdout
    assert all(o.returncode == 1 for n, o in out.items() if n not in ("cutok.jsonl", "scoredok.jsonl"))
