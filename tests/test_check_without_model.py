"""`overnight check` with no base model configured (outside a home, or an overnight.toml without base_model): a good
file is OK, exit 0, whatever its schema (conversations included: their template is the base model's, not known yet),
with the line saying what a drop still needs; `--show` says it needs a base model too."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import overnight

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
RECORDS = {
    "messages": CHAT,
    "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    "preference": {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}],
                   "rejected": [{"role": "assistant", "content": "b"}]},
    "preference_implicit": {"chosen": [*CHAT["messages"][:1], {"role": "assistant", "content": "a"}],
                            "rejected": [*CHAT["messages"][:1], {"role": "assistant", "content": "b"}]},
    "sharegpt_preference": {"conversations": [{"from": "human", "value": "hi"}],
                            "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}},
    "prompt_completion": {"prompt": "hi", "completion": "hello"},
    "text": {"text": "hello"},
}
NEEDS = "a drop also needs a base model: set base_model in overnight.toml or the sidecar data.toml"


@pytest.mark.parametrize("schema", sorted(RECORDS))
def test_a_good_file_is_ok_without_a_base_model(schema: str, home: Path, tmp_path: Path):
    f = tmp_path / "data.jsonl"
    f.write_text(json.dumps(RECORDS[schema]) + "\n")
    res = overnight("check", str(f), home=home)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "data.jsonl: OK" in res.stdout and f"schema: {schema}" in res.stdout, res.stdout
    assert "ERROR" not in res.stdout and "has no chat template" not in res.stdout, res.stdout
    assert res.stdout.rstrip().endswith(NEEDS), res.stdout
    assert "tokens per example" not in res.stdout  # token counts need the base model's tokenizer
    verdict = json.loads(overnight("check", "--json", str(f), home=home).stdout)[0]
    assert verdict["ok"] and verdict["needs"] == [NEEDS] and "as_trained" not in verdict
    assert verdict["report"]["tokens"] is None


def test_chat_outside_any_home_is_ok(tmp_path: Path):
    """The repro: an empty folder, no overnight.toml anywhere, one conversation."""
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps(CHAT) + "\n")
    res = overnight("check", str(f), home=tmp_path / "nowhere")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "chat.jsonl: OK" in res.stdout and "a drop also needs a base model" in res.stdout
    assert "chat template: the base model's (no base model set yet)" in res.stdout, res.stdout


def test_a_bad_chat_file_is_still_refused_without_a_base_model(home: Path, tmp_path: Path):
    f = tmp_path / "data.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "bot", "content": "hi"}]}) + "\n")
    res = overnight("check", str(f), home=home)
    assert res.returncode == 1 and "unknown role 'bot'" in res.stdout and "Fix:" in res.stdout, res.stdout


def test_a_named_chat_template_without_a_base_model_is_said(home: Path, tmp_path: Path):
    """chat_template named in overnight.toml: the records go through it (one it refuses is an error, as in the
    daemon), though the base model, whose special tokens the template writes (mistral's bos_token), is still to be
    set."""
    (home / "overnight.toml").write_text('chat_template = "mistral"\n')
    f = tmp_path / "data.jsonl"
    f.write_text(json.dumps(CHAT) + "\n")
    res = overnight("check", str(f), home=home)
    assert res.returncode == 0 and res.stdout.rstrip().endswith(NEEDS), res.stdout
    assert "chat template: mistral" in res.stdout, res.stdout
    f.write_text(json.dumps({"messages": [CHAT["messages"][1], CHAT["messages"][0]]}) + "\n")  # assistant first
    res = overnight("check", str(f), home=home)  # one the template refuses: an error, as the daemon would say
    assert res.returncode == 1 and "record 1: the chat template refuses this conversation" in res.stdout, res.stdout


@pytest.mark.parametrize("schema", ["messages", "prompt_completion", "text"])
def test_show_says_it_needs_a_base_model(schema: str, home: Path, tmp_path: Path):
    """Examples as the model sees them are laid out by its chat template and special tokens: without a base model
    check shows none, and says so, rather than a layout the run would not use."""
    f = tmp_path / "data.jsonl"
    f.write_text(json.dumps(RECORDS[schema]) + "\n")
    res = overnight("check", str(f), "--show", "1", home=home)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "--- example" not in res.stdout, res.stdout
    assert "--show needs a base model too" in res.stdout, res.stdout
    verdict = json.loads(overnight("check", "--json", "--show", "1", str(f), home=home).stdout)[0]
    assert verdict["ok"] and "examples" not in verdict
    assert any("--show needs a base model" in n for n in verdict["needs"])
