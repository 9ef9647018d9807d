"""The CLI as a user types it: check, add, logs, status without a daemon."""
from __future__ import annotations

import json

from tests.conftest import overnight


def test_check_ok_prints_format_schema_counts_and_lengths(home, tiny_model, tmp_path):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    f = tmp_path / "qa.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n' * 5)
    res = overnight("check", str(f), home=home)
    assert res.returncode == 0, res.stdout
    assert "format: jsonl" in res.stdout and "schema: prompt_completion" in res.stdout and "records: 5" in res.stdout
    assert "characters per example" in res.stdout
    assert "tokens per example (tiny-qwen2 tokenizer" in res.stdout  # the base model's tokenizer is known
    data = json.loads(overnight("check", "--json", str(f), home=home).stdout)[0]
    assert data["ok"] and data["report"]["records"] == 5


def test_check_error_exit_1_with_line_and_field(home, tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                 '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}\n')
    res = overnight("check", str(f), home=home)
    assert res.returncode == 1
    assert "line 2" in res.stdout and "messages[1].role" in res.stdout and "Fix:" in res.stdout
    [verdict] = json.loads(overnight("check", "--json", str(f), home=home).stdout)
    [problem] = verdict["problems"]
    assert not verdict["ok"] and problem["place"] == "chat.jsonl, line 2, field 'messages[1].role'"
    assert problem["fix"].startswith("use one of the expected roles") and problem["message"] == verdict["error"]


def test_check_without_base_model_says_how_to_name_one(home, tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"text": "x"}\n')
    res = overnight("check", str(f), home=home)
    assert res.returncode == 1 and "records: 1" in res.stdout and "base_model" in res.stdout


def test_check_sidecar_beside_dataset_and_alone(home, tiny_model, tmp_path):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "t.toml").write_text("lora_rank = 8\n")
    res = overnight("check", str(tmp_path / "t.jsonl"), home=home)
    assert res.returncode == 1 and "unknown option 'lora_rank'" in res.stdout and "lora_r" in res.stdout
    res = overnight("check", str(tmp_path / "t.toml"), home=home)
    assert res.returncode == 1 and "unknown option 'lora_rank'" in res.stdout
    (tmp_path / "t.toml").write_text('base_model = "/no/such/model"\n')
    res = overnight("check", str(tmp_path / "t.toml"), home=home)
    assert res.returncode == 1 and "/no/such/model" in res.stdout and "was not found" in res.stdout


def test_check_a_symlink_notes_the_daemon_refuses_links(home, tiny_model, tmp_path):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "l.jsonl").symlink_to(tmp_path / "t.jsonl")
    res = overnight("check", str(tmp_path / "l.jsonl"), home=home)
    assert res.returncode == 0 and "symbolic link" in res.stdout and "overnight add" in res.stdout
    (home / "inbox" / "l.jsonl").symlink_to(tmp_path / "t.jsonl")
    res = overnight("check", str(home / "inbox" / "l.jsonl"), home=home)
    assert res.returncode == 1 and "symbolic link" in res.stdout


def test_add_copies_sidecar_first_and_keeps_the_original(home, tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "d.toml").write_text("lora_r = 4\n")
    res = overnight("add", str(tmp_path / "d.jsonl"), home=home, check=True)
    assert res.stdout.index("d.toml") < res.stdout.index("d.jsonl ->")
    assert (home / "inbox" / "d.jsonl").read_text() == (tmp_path / "d.jsonl").read_text()
    assert (home / "inbox" / "d.toml").exists() and (tmp_path / "d.jsonl").exists()
    again = overnight("add", str(tmp_path / "d.jsonl"), home=home)
    assert again.returncode != 0 and "already exists" in again.stderr
    side = overnight("add", str(tmp_path / "d.toml"), home=home)
    assert side.returncode != 0 and "--sidecar" in side.stderr


def test_status_without_daemon_says_how_to_start_one(home):
    res = overnight("status", home=home, check=True)
    assert "daemon: not running (start it with: overnight daemon)" in res.stdout
    assert json.loads(overnight("status", "--json", home=home, check=True).stdout)["daemon"] is None


def test_logs_tail_and_unknown_run(home):
    res = overnight("logs", "nope", home=home)
    assert res.returncode != 0 and "no run matches 'nope'" in res.stderr


def test_steering_without_daemon_writes_the_file_and_says_so(home):
    res = overnight("pause", home=home, check=True)
    assert (home / "control" / "pause").exists() and "no daemon is running" in res.stdout
