"""Deleting the active version: nothing takes over silently, and what needed it says what to do."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from daemon.engine.controller import Controller
from daemon.core.home import Home
from daemon.engine.store import Store
from tests.conftest import overnight
from tests.conftest_trainer import reversal_records

RECORDS = "".join(json.dumps(r) + "\n" for r in reversal_records(20, seed=3))
FIX = "Fix: activate one (overnight activate support V) or name a version support:V"


def _register(home: Path, base: Path) -> str:
    """A completed run of `support` with an adapter, registered as its next version (which becomes active)."""
    store = Store(home / "overnight.db")
    try:
        rid = f"support-20260101-00000{len(store.models('support'))}"
        adapter = home / "runs" / rid / "adapter"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 8,
                                                                 "target_modules": ["v_proj", "q_proj"]}))
        (adapter / "adapter_model.safetensors").write_bytes(b"weights")
        store.insert_run({"id": rid, "name": "support", "dataset": "support.jsonl", "state": "completed",
                          "priority": 0, "seq": store.next_seq(), "run_dir": str(home / "runs" / rid),
                          "base_model": str(base)})
        store.add_model({"name": "support", "run_id": rid, "base_model": str(base), "metrics": {"final_loss": 1.5},
                         "adapter_path": str(adapter)})
    finally:
        store.close()
    return rid


def _apply_control(home: Path) -> None:
    """What the daemon's next pass does with control/ (a file counts once it has stopped changing)."""
    for p in (home / "control").iterdir():
        if p.is_file():
            os.utime(p, (time.time() - 5, time.time() - 5))
    store = Store(home / "overnight.db")
    try:
        Controller(Home(home), store, lambda *a, **k: None).apply([])
    finally:
        store.close()


def test_deleting_the_active_version_leaves_none_active_and_a_bare_name_is_refused(home: Path,
                                                                                      tiny_model: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    first = _register(home, tiny_model)
    second = _register(home, tiny_model)
    out = overnight("delete", "support", "--wait", "0", home=home)
    assert out.returncode == 2 and "give the version: overnight delete support VERSION (or support:VERSION)" in \
        out.stderr, out.stderr
    overnight("delete", "support:2", "--wait", "0", home=home, check=True)  # NAME:V, as ask and export take it
    _apply_control(home)
    out = overnight("delete", "support", "2", "--wait", "0", home=home)
    assert out.returncode == 1 and "support v2 is already in the trash" in out.stderr, out.stderr
    # the version's run, by the version, where a run is asked for
    assert overnight("evolution", "support:2", home=home, check=True).stdout.startswith(second)
    compared = json.loads(overnight("compare", "support:1", "support:2", "--json", home=home, check=True).stdout)
    assert sorted(r["run_id"] for r in compared) == sorted([first, second]), compared

    models = overnight("models", home=home, check=True).stdout
    assert "* support" not in models and "support: no active version" in models, models
    assert not any(m["active"] for m in json.loads(overnight("models", "--json", home=home, check=True).stdout))

    # asking by name answers with no other version in its place, and a deleted version is refused by its number too
    out = overnight("ask", "support", "a question", home=home)
    assert out.returncode == 1 and "no active version of support" in out.stderr and FIX in out.stderr, out.stderr
    out = overnight("ask", "support:2", "a question", home=home)
    trashed = home / "trash"
    assert out.returncode == 1 and "support v2 was deleted" in out.stderr and str(trashed) in out.stderr, out.stderr
    # nor can a deleted version become the active one, from the CLI or by a hand-written control file
    out = overnight("activate", "support", "2", "--wait", "0", home=home)
    assert out.returncode == 1 and "support v2 was deleted" in out.stderr and "Fix:" in out.stderr, out.stderr
    (home / "control" / "activate").write_text("support 2\n")
    _apply_control(home)
    [why] = (home / "control" / "rejected").glob("*.error.txt")
    assert "support v2 was deleted" in why.read_text()
    assert not any(m["active"] for m in json.loads(overnight("models", "--json", home=home, check=True).stdout))

    (home / "support.toml").write_text('init_adapter = "support"\n')
    (home / "support.jsonl").write_text(RECORDS)
    out = overnight("check", str(home / "support.jsonl"), home=home)
    assert out.returncode == 1 and "no active version of support" in out.stdout and FIX in out.stdout, out.stdout
    assert "continues from" not in out.stdout

    for written in ("support:1", "support:v1"):  # NAME:vV too, as ask and export take it
        (home / "support.toml").write_text(f'init_adapter = "{written}"\n')
        out = overnight("check", str(home / "support.jsonl"), home=home)
        assert out.returncode == 0 and "continues from: support:1" in out.stdout, out.stdout
    # LoRA options beside init_adapter shape nothing: check says so, with the parent's own shape
    (home / "support.toml").write_text('init_adapter = "support:1"\nlora_r = 4\nlora_targets = ["q_proj"]\n')
    out = overnight("check", str(home / "support.jsonl"), home=home)
    assert out.returncode == 0 and "note: lora_r, lora_targets unused: a continuation trains its parent's adapter " \
        "as it was made (lora_r 8, lora_targets q_proj,v_proj)" in out.stdout, out.stdout

    # at the drop: the same refusal, with the same fix, beside the rejected drop
    (home / "inbox" / "support.toml").write_text('init_adapter = "support"\n')
    (home / "inbox" / "support.jsonl").write_text(RECORDS)
    overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=300, check=True)
    error = (home / "inbox" / "rejected" / "support.error.txt").read_text()
    assert "no active version of support" in error and FIX in error, error
    assert [r["id"] for r in json.loads(overnight("runs", "--json", home=home, check=True).stdout)
            if r["state"] != "completed"] == []

    # export by model version: a bare name with no active version and a deleted version are refused as ask refuses
    out = overnight("export", "support", str(home / "out"), home=home)
    assert out.returncode == 1 and "no active version of support" in out.stderr and FIX in out.stderr, out.stderr
    out = overnight("export", "support:2", str(home / "out"), home=home)
    [in_trash] = [p / "adapter" for p in (home / "trash").iterdir()]
    assert out.returncode == 1 and "was deleted (overnight delete): it is in the trash" in out.stderr, out.stderr
    assert f"Fix: export it from there (cp -r {in_trash} OUT)" in out.stderr, out.stderr
    out = overnight("export", "support:1", str(home / "v1"), home=home, check=True)
    assert f"adapter of support v1 (run {first}) written to {home / 'v1'}" in out.stdout, out.stdout
    assert not (home / "out").exists()

    # the deleted version's run: export says where its adapter went and how to get it back
    out = overnight("export", second, str(home / "out"), home=home)
    assert out.returncode == 1 and "only completed runs" not in out.stderr, out.stderr
    [trashed] = [p / "adapter" for p in (home / "trash").iterdir()]
    assert f"in the trash, at {trashed}" in out.stderr and "Fix:" in out.stderr, out.stderr
    shutil.copytree(trashed, home / "runs" / second / "adapter")  # the restore the fix proposes
    overnight("export", second, str(home / "out"), home=home, check=True)
    assert (home / "out" / "adapter_model.safetensors").read_bytes() == b"weights"

    # with every version deleted there is nothing to activate: models says so, and how to go on
    overnight("delete", "support", "1", "--wait", "0", home=home, check=True)
    _apply_control(home)
    models = overnight("models", home=home, check=True).stdout
    assert "support: every version deleted (continue from one: init_adapter = its folder above" in models, models
    assert "overnight activate" not in models, models


def test_a_delete_that_cannot_reach_the_trash_keeps_the_version_and_says_the_fix(home: Path, tiny_model: Path) -> None:
    _register(home, tiny_model)
    (home / "trash").write_text("a file where the trash folder belongs\n")
    overnight("delete", "support", "1", "--wait", "0", home=home, check=True)
    _apply_control(home)
    [why] = (home / "control" / "rejected").glob("*.error.txt")
    text = why.read_text()
    assert "cannot move the adapter of support v1 into" in text and "the version is kept as it was" in text, text
    assert f"Fix: make {home / 'trash'} a folder overnight can write to" in text, text
    [model] = json.loads(overnight("models", "--json", home=home, check=True).stdout)
    assert not model["deleted"] and Path(model["adapter_path"], "adapter_model.safetensors").exists()
