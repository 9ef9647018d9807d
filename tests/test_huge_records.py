"""One huge record (a multi-MB answer on one line): `overnight check` and the trainer tokenise only what max_length
can keep, so the check is quick and small in memory, says the record is cut, and the tokens trained are exactly
those of the whole record."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import REPO

HUGE = 8_000_000  # characters of the one answer: 8 MB on one line


def check_measured(*args: str, home: Path) -> tuple[subprocess.CompletedProcess, int]:
    """`overnight check ARGS --home HOME` as a user runs it, with its peak memory (MB), sampled every 20 ms: a
    child's ru_maxrss would count the pytest worker it was forked from."""
    cmd = [sys.executable, "-m", "daemon", "check", *args, "--home", str(home)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=REPO)
        watched, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                peak = max(peak, watched.memory_info().rss)
            time.sleep(0.02)
        out.seek(0), err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read()), peak // 2**20


def test_check_of_one_huge_record_is_quick_small_and_says_it_is_cut(home: Path, tiny_model: Path, tmp_path: Path):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    f = tmp_path / "huge.jsonl"
    f.write_text(json.dumps({"prompt": "Say hello.", "completion": "hello world " * (HUGE // 12)}) + "\n")
    res, rss = check_measured(str(f), home=home)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "records: 1" in res.stdout
    assert "max_length 1024: 1 record(s) cut, 0 of them dropped" in res.stdout, res.stdout
    assert "tokenised only that far" in res.stdout and "lower bounds" in res.stdout, res.stdout
    # tokenising all 8 MB took ~15 s and ~2 GB; the first max_length tokens are a fraction of a second
    assert rss < 800, f"overnight check peaked at {rss} MB on one 8 MB record"
    data = json.loads(check_measured("--json", str(f), home=home)[0].stdout)[0]
    assert data["ok"] and data["as_trained"]["truncated"] == 1 and data["as_trained"]["dropped"] == 0
    assert data["as_trained"]["counted_in_part"] == 1
    assert data["as_trained"]["tokens"]["max"] > 1024


def test_a_huge_prompt_fills_max_length_the_same_as_a_long_one(home: Path, tiny_model: Path, tmp_path: Path):
    """A record whose prompt alone is longer than max_length is dropped (nothing of its answer left), cut or not."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmax_length = 64\nallow_truncation = true\n')
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "b" * HUGE, "completion": "ok"}) + "\n"
                 + json.dumps({"prompt": "a", "completion": "fine"}) + "\n")
    res, rss = check_measured(str(f), home=home)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "max_length 64: 1 record(s) cut, 1 of them dropped" in res.stdout, res.stdout
    assert rss < 800, rss


class Counting:
    """A tokenizer that notes the length of every text it is given (through either way the encoder calls it)."""

    def __init__(self, tokenizer: Any, seen: list[int], outer: bool = True) -> None:
        self._inner, self._seen = tokenizer, seen
        if outer:
            self.backend_tokenizer = Counting(tokenizer.backend_tokenizer, seen, outer=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __call__(self, text: str, **kwargs: Any) -> Any:
        self._seen.append(len(text))
        return self._inner(text, **kwargs)

    def encode_batch(self, texts: list[str], **kwargs: Any) -> Any:
        self._seen.extend(len(t) for t in texts)
        return self._inner.encode_batch(texts, **kwargs)


def test_the_tokens_trained_of_a_huge_record_are_those_of_the_whole_record(tiny_model: Path):
    """What the trainer keeps of a huge record (its first max_length tokens, labels and all) is what it keeps of a
    prefix that is itself longer than max_length, and the tokenizer never sees the whole record: tokenising less
    changed no token."""
    from transformers import AutoTokenizer

    from daemon.core.templating import for_run
    from daemon.trainer.sequences import Encoder

    tokenised: list[int] = []  # the characters of each text the tokenizer was given
    tok = Counting(AutoTokenizer.from_pretrained(tiny_model), tokenised)
    fmt = for_run("auto", tiny_model, ())
    answer = "hello world, " * (HUGE // 13)
    prefix = answer[:3000]  # a normal-length record, already longer than max_length tokens
    for ml in (16, 256):
        enc = Encoder(tok, max_length=ml, model_name="tiny", chat=fmt)
        for example in ({"kind": "prompt", "prompt": "Say hello.", "completion": answer},
                        {"kind": "chat", "messages": [{"role": "user", "content": "Say hello."},
                                                      {"role": "assistant", "content": answer}]},
                        {"kind": "prompt", "prompt": answer, "completion": "b"}):
            tokenised.clear()
            huge = enc.encode(example)
            assert tokenised and max(tokenised) < HUGE // 100, max(tokenised)
            short = {**example, **{k: prefix for k in ("prompt", "completion") if example.get(k) is answer}}
            if example["kind"] == "chat":
                short["messages"] = [example["messages"][0], {"role": "assistant", "content": prefix}]
            normal = enc.encode(short)
            if normal is None:  # a prompt filling max_length: dropped both times
                assert huge is None
                continue
            assert huge is not None and len(huge.input_ids) == ml
            assert huge.input_ids.tolist() == normal.input_ids.tolist()
            assert huge.labels.tolist() == normal.labels.tolist()
        assert enc.truncated == 6  # every one of them counted as cut


def test_plain_text_records_are_never_cut(tiny_model: Path):
    """A text record is trained whole (cut into blocks of max_length): all of its tokens, however long."""
    from transformers import AutoTokenizer

    from daemon.trainer.sequences import Encoder

    tok = AutoTokenizer.from_pretrained(tiny_model)
    text = "hello world " * 20_000
    ids = Encoder(tok, max_length=16, model_name="tiny").text_ids({"kind": "text", "text": text})
    assert ids[:-1] == tok(text)["input_ids"]


def test_a_huge_probe_is_asked_as_a_whole_one_without_tokenising_it_all(tiny_model: Path):
    """A probe (or eval record) far longer than max_length: the snapshots and the eval report ask it with the end of
    its prompt and the start of its reference, the same ids as when the whole of it is tokenised, which is not."""
    from transformers import AutoTokenizer

    from daemon.trainer.snapshots import encode_probe, fit_to_length

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenised: list[int] = []
    tok = Counting(tokenizer, tokenised)
    long_text = " ".join(f"word{i}" for i in range(20_000))  # ~190,000 characters, each part of it distinct
    for probe in ({"prompt": long_text, "reference": long_text},
                  {"prompt": "Say it.", "reference": long_text},
                  {"messages": [{"role": "user", "content": long_text}], "reference": long_text}):
        for ml in (16, 256):
            tokenised.clear()
            bounded, cut = fit_to_length(encode_probe(tok, probe, None, ml), ml)
            assert tokenised and max(tokenised) < len(long_text) // 4, max(tokenised)
            whole, whole_cut = fit_to_length(encode_probe(tokenizer, probe), ml)
            assert (bounded.prompt_ids, bounded.reference_ids, cut) == (whole.prompt_ids, whole.reference_ids, True)


def test_stats_json_marks_the_token_counts_of_records_tokenised_in_part(tiny_model: Path):
    """The trainer's stats.json names how many records were counted in part (their token counts are lower bounds),
    as `overnight check --json` does; a run of normal records has no such key."""
    from transformers import AutoTokenizer

    from daemon.trainer.sequences import Encoder, prepare

    tok = AutoTokenizer.from_pretrained(tiny_model)
    normal = [{"kind": "prompt", "prompt": f"Say {i}.", "completion": f"ok {i}"} for i in range(6)]

    def stats(records: list[dict]) -> dict:
        return prepare(lambda: iter(records), len(records), Encoder(tok, max_length=32, model_name="tiny"),
                       eval_fraction=0.0, seed=0, probe_holdout=set(), probe_from_example=lambda ex: None,
                       file_probes=[], log=lambda line: None).stats

    assert "counted_in_part" not in stats(normal)
    huge = {"kind": "prompt", "prompt": "Say hello.", "completion": "hello world " * 10_000}
    marked = stats([*normal, huge, huge])
    assert marked["counted_in_part"] == 2 and marked["truncated"] == 2
