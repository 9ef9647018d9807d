"""`overnight daemon --once` on a temp home: every schema trains on the tiny model; failures, registry, hooks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.core.queries import Reader
from tests.conftest import overnight

pytestmark = pytest.mark.e2e

FAST = "max_steps = 3\nbatch_size = 2\nmax_length = 48\nlog_every = 1\nsave_every = 2\nprobe_count = 2\n" \
       "probe_max_new_tokens = 4\neval_fraction = 0.1\n"

DATASETS = {
    "plain.jsonl": "\n".join(json.dumps({"text": f"the river and the stone number {i}"}) for i in range(20)),
    "pc.jsonl": "\n".join(json.dumps({"prompt": f"add {i} 1:", "completion": str(i + 1)}) for i in range(20)),
    "alp.json": json.dumps([{"instruction": "reverse", "input": f"a b {i}", "output": f"{i} b a"} for i in range(20)]),
    "chat.jsonl": "\n".join(json.dumps({"messages": [{"role": "system", "content": "be brief"},
                                                      {"role": "user", "content": f"hi {i}"},
                                                      {"role": "assistant", "content": f"hello {i}"}]})
                            for i in range(20)),
    "sg.jsonl": "\n".join(json.dumps({"conversations": [{"from": "human", "value": f"q {i}"},
                                                        {"from": "gpt", "value": f"a {i}"}]}) for i in range(20)),
    "wiki.txt": "\n".join(f"Line {i} of a plain text corpus about rivers and stones." for i in range(40)),
    "tab.csv": "prompt,completion\n" + "\n".join(f"q{i},a{i}" for i in range(20)),
}


def _runs(home: Path) -> dict[str, dict]:
    out = json.loads(overnight("runs", "--json", home=home, check=True).stdout)
    return {r["dataset"]: r for r in out}


def test_every_schema_trains_to_a_loadable_adapter_and_registers_a_model(home, tiny_model):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n[hooks]\n'
                                         f'on_complete = ["sh", "-c", "echo $OVERNIGHT_RUN_ID >> ../../hooked.txt"]\n')
    for name, text in DATASETS.items():
        (home / "inbox" / name).write_text(text + "\n")
        (home / "inbox" / (Path(name).stem + ".toml")).write_text(FAST)
    res = overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = _runs(home)
    assert {r["state"] for r in runs.values()} == {"completed"}, {k: (r["state"], r["reason"]) for k, r in runs.items()}
    assert {r["schema"] for r in runs.values()} == {"text", "prompt_completion", "alpaca", "messages", "sharegpt",
                                                   "plain_text"}
    for r in runs.values():
        d = Path(r["run_dir"])
        assert (d / "adapter" / "adapter_model.safetensors").exists() and (d / "adapter" / "README.md").exists()
        meta = json.loads((d / "metadata.json").read_text())
        assert meta["status"] == "completed" and meta["versions"]["torch"]
        steps = [json.loads(x)["step"] for x in (d / "metrics.jsonl").read_text().splitlines()]
        assert 3 in steps
        console = (d / "console.log").read_text()
        assert "=== end: completed" in console and console.startswith("[")
        text_only = r["schema"] in ("text", "plain_text")  # no answers to hold out as probes
        snapshots = [] if text_only else [json.loads(x) for x in (d / "evolution.jsonl").read_text().splitlines()]
        db_rows = Reader(home / "overnight.db").evolution(r["id"])  # the daemon mirrors the file into the DB
        assert [(x["step"], x["probe"], x["generation"], x["exact"]) for x in db_rows] == \
            sorted((x["step"], x["probe"], x["generation"], x["exact"]) for x in snapshots)
        assert text_only or {x["step"] for x in snapshots} >= {0, 3}
    models = json.loads(overnight("models", "--json", home=home, check=True).stdout)
    assert sorted(m["name"] for m in models) == sorted(Path(n).stem for n in DATASETS)
    assert all(m["version"] == 1 and m["active"] for m in models)
    hooked = (home / "hooked.txt").read_text().split()
    assert sorted(hooked) == sorted(r["id"] for r in runs.values())

    # the adapter loads on its base model and generates
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    run_dir = Path(runs["pc.jsonl"]["run_dir"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), run_dir / "adapter")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    out = model.generate(**tok("add 3 1:", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 3


def test_failing_trainer_is_failed_with_reason_and_the_next_run_is_served(home, tiny_model, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen2"}')  # passes intake (a config and a weights file)…
    (broken / "model.safetensors").write_bytes(b"not weights")  # …and fails when the trainer loads it
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "inbox" / "a.toml").write_text(FAST + f'base_model = "{broken}"\n')
    (home / "inbox" / "a.jsonl").write_text('{"text": "hello there"}\n' * 10)
    (home / "inbox" / "b.toml").write_text(FAST)
    (home / "inbox" / "b.jsonl").write_text('{"text": "hello there"}\n' * 10)
    res = overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600)
    assert res.returncode == 0
    runs = _runs(home)
    assert runs["a.jsonl"]["state"] == "failed" and runs["b.jsonl"]["state"] == "completed"
    assert str(broken) in runs["a.jsonl"]["reason"] or "broken-model" in runs["a.jsonl"]["reason"]
    console = (Path(runs["a.jsonl"]["run_dir"]) / "console.log").read_text()
    assert "=== end: failed" in console and "run failed" in console


def test_versions_activate_delete_through_the_daemon(home, tiny_model, daemon_proc):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    for i in range(2):
        (home / "inbox" / "m.toml").write_text(FAST + 'name = "assistant"\n')
        (home / "inbox" / "m.jsonl").write_text('{"text": "hello there"}\n' * 10)
        overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=300, check=True)
    models = json.loads(overnight("models", "--json", home=home, check=True).stdout)
    assert [(m["name"], m["version"], m["active"]) for m in models] == [("assistant", 1, 0), ("assistant", 2, 1)]
    daemon_proc()
    out = overnight("activate", "assistant", "1", "--wait", "60", home=home, check=True).stdout
    assert "applied" in out
    assert "* assistant v1" in overnight("models", home=home, check=True).stdout
    out = overnight("delete", "assistant", "2", "--wait", "60", home=home, check=True).stdout
    assert "trash" in out
    models = json.loads(overnight("models", "--json", home=home, check=True).stdout)
    trashed = Path(models[1]["adapter_path"])
    assert models[1]["deleted"] and trashed.exists() and "trash" in str(trashed)
    assert (trashed / "adapter_model.safetensors").exists()
