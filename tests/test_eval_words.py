"""An eval file (NAME.eval.jsonl) is read as a probe file is, but its errors speak of eval records and of scoring,
never of probes: what a user reads must name the file they wrote."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.core.datasets import DatasetError
from daemon.core.evalfile import load_eval_file
from daemon.core.probes import load_probe_file
from tests.conftest import overnight

RECORDS = {  # a record that is neither a probe nor an eval record, and what the error says of it
    "text": ('{"text": "just text"}', "text", "a text record has no answer to score the model's output against",
             'write eval records as {"prompt": "...", "reference": "..."}'),
    "no_answer": ('{"messages": [{"role": "user", "content": "hi"}]}', "messages",
                  "the conversation has no assistant turn: an eval record needs the reference answer",
                  "give each line a prompt and the answer to score against"),
    "half": ('{"prompt": "2+2="}', "reference", "the required field is missing: an eval record is a prompt and the "
             "reference answer to score the model's output against", "the answer to score against"),
    "not_object": ("[1, 2]", None, "expected a JSON object", "the answer to score against"),
    "empty": ('{"prompt": "", "reference": "4"}', "prompt", "'prompt' must be a non-empty string",
              "the answer to score against"),
}


@pytest.mark.parametrize("case", sorted(RECORDS))
def test_eval_file_errors_speak_of_eval_records(tmp_path: Path, case: str) -> None:
    line, field, problem, fix = RECORDS[case]
    path = tmp_path / "x.eval.jsonl"
    path.write_text('{"prompt": "1+1=", "reference": "2"}\n' + line + "\n")
    with pytest.raises(DatasetError) as e:
        load_eval_file(path)
    err = e.value
    assert (err.file, err.location, err.field) == (str(path), "line 2", field)
    assert problem in err.problem and fix in err.fix, str(err)
    assert "probe" not in str(err).lower(), str(err)


def test_probe_files_keep_their_own_words(tmp_path: Path) -> None:
    path = tmp_path / "x.probes.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DatasetError, match="a probe needs the reference answer"):
        load_probe_file(path)
    path.write_text('{"text": "t"}\n')
    with pytest.raises(DatasetError, match=r'write probes as \{"prompt"'):
        load_probe_file(path)


def test_check_shows_the_eval_words(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"prompt": "2+2=", "completion": "4"}\n')
    (tmp_path / "d.eval.jsonl").write_text('{"text": "t"}\n')
    res = overnight("check", str(tmp_path / "d.jsonl"), "--json")
    error = json.loads(res.stdout)[0]["error"]
    assert res.returncode == 1 and error.startswith(f"{tmp_path / 'd.eval.jsonl'}, line 1, field 'text': a text "
                                                    "record has no answer to score"), error
    assert "Fix: write eval records as" in error and "probe" not in error, error
