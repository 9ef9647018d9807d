"""Continuing from yesterday's adapter (`init_adapter`), through the CLI and the real daemon on the tiny model."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.conftest import overnight
from tests.conftest_trainer import reversal_records, tiny_model as build_tiny

pytestmark = pytest.mark.e2e

RECORDS = "".join(json.dumps(r) + "\n" for r in reversal_records(40, seed=2))
PROBES = "".join(json.dumps({"prompt": r["prompt"], "reference": r["completion"]}) + "\n"
                 for r in reversal_records(3, seed=8))
FAST = ("max_steps = 6\nbatch_size = 4\nmax_length = 48\nlog_every = 1\nsave_every = 3\nlearning_rate = 3e-3\n"
        "probe_max_new_tokens = 4\neval_fraction = 0\nlora_dropout = 0.0\n")


def _drop(home: Path, stem: str, sidecar: str) -> None:
    (home / "inbox" / f"{stem}.toml").write_text(sidecar)
    (home / "inbox" / f"{stem}.probes.jsonl").write_text(PROBES)
    (home / "inbox" / f"{stem}.jsonl").write_text(RECORDS)
    overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=300, check=True)


def _evolution_losses(run_dir: Path, step: int) -> dict[int, float]:
    records = [json.loads(x) for x in (run_dir / "evolution.jsonl").read_text().splitlines()]
    return {r["probe"]: r["loss"] for r in records if r["step"] == step}


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_run_continues_from_the_active_version_and_records_its_parent(home: Path, tiny_model: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    _drop(home, "support", FAST)
    runs = json.loads(overnight("runs", "--json", home=home, check=True).stdout)
    first = Path(runs[0]["run_dir"])
    assert runs[0]["state"] == "completed"
    before = _digest(first / "adapter")

    _drop(home, "support", FAST + 'init_adapter = "support"\nlora_r = 4\n')  # lora_r: the parent's shape wins
    runs = {r["id"]: r for r in json.loads(overnight("runs", "--json", home=home, check=True).stdout)}
    second = Path(next(r["run_dir"] for r in runs.values() if Path(r["run_dir"]) != first))
    assert (second / "init_adapter" / "adapter_config.json").exists()
    config = json.loads((second / "config.json").read_text())
    assert config["init_adapter"]["parent"] == "support:1" and config["sources"]["init_adapter"] == "sidecar"
    made = json.loads((first / "adapter" / "adapter_config.json").read_text())
    assert (config["options"]["lora_r"], config["sources"]["lora_r"]) == (made["r"], "parent") and made["r"] != 4
    assert config["options"]["lora_targets"] == sorted(made["target_modules"])
    # the new run starts where the parent ended: its step-0 probe losses are the parent's final ones
    parent_final, child_start = _evolution_losses(first, 6), _evolution_losses(second, 0)
    assert parent_final.keys() == child_start.keys() and len(child_start) == 3
    assert max(abs(parent_final[p] - child_start[p]) for p in child_start) < 1e-4
    assert _digest(first / "adapter") == before  # the parent is never modified
    assert "continuing" in (second / "console.log").read_text() or "the adapter of support:1" in \
        (second / "console.log").read_text()

    models = json.loads(overnight("models", "--json", home=home, check=True).stdout)
    assert [(m["version"], m["parent"]) for m in models] == [(1, None), (2, "support:1")]
    assert "support v2 ← v1" in overnight("models", home=home, check=True).stdout


def test_a_continuation_trains_through_its_parents_template_and_tokens(home: Path, tiny_model: Path) -> None:
    """Yesterday's adapter trained through Gemma 3's template, whose turn tokens it added to the tiny model: today's
    drop naming no template continues through the same one (its rows for those tokens loaded), check says so."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmax_length = 96\n')
    _drop(home, "support", FAST + 'chat_template = "gemma3"\n')
    (home / "next.toml").write_text(FAST + 'init_adapter = "support"\n')
    (home / "next.jsonl").write_text(RECORDS)
    said = overnight("check", str(home / "next.jsonl"), home=home, check=True).stdout
    assert "chat template: gemma3" in said and "chat_template = 'gemma3' is taken from the adapter it continues " \
        "from" in said, said
    _drop(home, "next", FAST + 'init_adapter = "support"\n')
    run = next(r for r in json.loads(overnight("runs", "--json", home=home, check=True).stdout) if r["name"] == "next")
    console = (Path(run["run_dir"]) / "console.log").read_text()
    assert run["state"] == "completed", console[-3000:]
    assert "chat template: gemma3" in console and "added the special tokens <start_of_turn>, <end_of_turn>" in console

    # another template than the parent's would load its token rows at the ids that template's tokens take: refused
    (home / "other.toml").write_text(FAST + 'init_adapter = "support"\nchat_template = "llama3"\n')
    (home / "other.jsonl").write_text(RECORDS)
    refused = overnight("check", str(home / "other.jsonl"), home=home)
    assert refused.returncode == 1 and "trained through chat template 'gemma3'" in refused.stdout and \
        "Fix: remove chat_template" in refused.stdout, refused.stdout
    # plain text trains through no template, yet loads the parent's rows: the template's tokens are added for them
    (home / "inbox" / "notes.toml").write_text(FAST + 'init_adapter = "support"\n')
    (home / "inbox" / "notes.txt").write_text("the quick brown fox jumps over the lazy dog. " * 100)
    overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=300, check=True)
    text = next(r for r in json.loads(overnight("runs", "--json", home=home, check=True).stdout) if r["name"] == "notes")
    assert text["state"] == "completed", (Path(text["run_dir"]) / "console.log").read_text()[-3000:]


def test_an_adapter_of_another_base_model_is_refused_with_both_names(
        home: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    llama = build_tiny(tmp_path_factory.getbasetemp(), "llama")
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    _drop(home, "support", FAST)
    sidecar = FAST + f'init_adapter = "support:1"\nbase_model = "{llama}"\n'
    (home / "other.toml").write_text(sidecar)
    (home / "other.jsonl").write_text(RECORDS)
    out = overnight("check", str(home / "other.jsonl"), home=home)
    assert out.returncode == 1
    assert f"trained on base model '{tiny_model}'" in out.stdout and f"base_model is '{llama}'" in out.stdout
    assert "Fix:" in out.stdout
    _drop(home, "other", sidecar)
    error = (home / "inbox" / "rejected" / "other.error.txt").read_text()
    assert "support:1" in error and str(tiny_model) in error and str(llama) in error
    missing = overnight("check", str(home / "other.toml"), home=home)
    assert missing.returncode == 1


def test_an_unknown_parent_is_a_clear_error(home: Path, tiny_model: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "x.toml").write_text('init_adapter = "nosuch:2"\n')
    (home / "x.jsonl").write_text(RECORDS)
    out = overnight("check", str(home / "x.jsonl"), home=home)
    assert out.returncode == 1 and "no registered model named 'nosuch'" in out.stdout and "Fix:" in out.stdout


def test_max_length_beyond_the_models_context_is_refused(home: Path, tiny_model: Path) -> None:
    context = json.loads((tiny_model / "config.json").read_text())["max_position_embeddings"]
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "x.toml").write_text(f"max_length = {context * 2}\n")
    (home / "x.jsonl").write_text(RECORDS)
    out = overnight("check", str(home / "x.jsonl"), home=home)
    assert out.returncode == 1
    assert f"max_length = {context * 2} is longer than the context" in out.stdout
    assert f"Fix: set max_length = {context} or less" in out.stdout


def test_a_deleted_parent_says_where_its_adapter_is_in_the_trash_and_how_to_use_it(home: Path,
                                                                                    tiny_model: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    _drop(home, "p2", FAST)
    overnight("delete", "p2", "1", "--wait", "0", home=home, check=True)
    overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=120, check=True)  # applies the delete
    [trashed] = list((home / "trash").glob("p2-v1-*/adapter"))
    (home / "x.jsonl").write_text(RECORDS)
    for spec, said in (("p2:1", "p2 v1 was deleted"), ("p2", "every version of p2 (the newest: v1) was deleted")):
        (home / "x.toml").write_text(f'init_adapter = "{spec}"\n')
        out = overnight("check", str(home / "x.jsonl"), home=home)
        assert out.returncode == 1 and "no registered model" not in out.stdout, out.stdout
        assert f'init_adapter = "{spec}": {said} (overnight delete); its adapter is kept in the trash, at ' \
               f'{trashed}' in out.stdout, out.stdout
        assert f'Fix: continue from that folder (init_adapter = "{trashed}")' in out.stdout
    (home / "x.toml").write_text(f'init_adapter = "{trashed}"\n')  # the fix works, and reads as the version
    out = overnight("check", str(home / "x.jsonl"), home=home)
    assert out.returncode == 0 and f"continues from: p2:1 (deleted) ({trashed})" in out.stdout, out.stdout


@pytest.mark.parametrize("targets, ok", [('["qproj", "vproj"]', False), ('"attn[("', False),
                                         ('["q_proj", "nosuch"]', True), ('"self_attn.q_proj"', True),
                                         ('["lm_head"]', True), ('["layers.1.mlp.up_proj"]', True)])
def test_lora_targets_naming_no_layer_of_the_base_model_are_refused_at_the_drop(home: Path, tiny_model: Path,
                                                                               targets: str, ok: bool) -> None:
    """Read from the weights' headers (no model is loaded): a sweep's every run would otherwise fail in PEFT after
    loading the model. PEFT's own rule: a list needs one name that matches, a string is a regular expression."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "x.toml").write_text(f"lora_targets = {targets}\nlearning_rate = [1e-3, 2e-3]\n")
    (home / "x.jsonl").write_text(RECORDS)
    out = overnight("check", str(home / "x.jsonl"), home=home)
    assert out.returncode == (0 if ok else 1), out.stdout
    if not ok:
        assert f"{home / 'x.toml'}: lora_targets = " in out.stdout
        assert ("no layer of the base model" if targets.startswith("[") else "not a regular expression") in out.stdout
        assert '"q_proj", "up_proj", "v_proj")' in out.stdout and 'e.g. lora_targets = ["q_proj", "v_proj"]' in out.stdout
        for f in ("x.toml", "x.jsonl"):
            (home / "inbox" / f).write_bytes((home / f).read_bytes())
        overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=120, check=True)
        error = (home / "inbox" / "rejected" / "x.error.txt").read_text()
        assert "lora_targets" in error and "Fix:" in error and not list((home / "runs").iterdir())
