"""`overnight export RUN OUT [--merge]` (and its model card) through the CLI, on a run the real daemon trained on the tiny model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import overnight

pytestmark = pytest.mark.e2e

PROMPT = "add 3 1:"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A home whose overnight.toml names the tiny model by a path relative to the home, and one completed run."""
    from daemon.client.tinymodel import ensure_tiny_model
    home = tmp_path_factory.mktemp("export") / "home"
    for d in ("inbox", "control", "runs"):
        (home / d).mkdir(parents=True)
    shutil.copytree(ensure_tiny_model(tmp_path_factory.getbasetemp() / "models"), home / "models" / "tiny")
    (home / "overnight.toml").write_text('base_model = "models/tiny"\n')  # resolved against the home
    (home / "inbox" / "add.toml").write_text("max_steps = 8\nbatch_size = 4\nmax_length = 32\nlearning_rate = 3e-3\n"
                                             "save_every = 100\nprobe_count = 0\neval_fraction = 0\n")
    (home / "inbox" / "add.jsonl").write_text(
        "".join(json.dumps({"prompt": f"add {i} 1:", "completion": f" {i + 1}"}) + "\n" for i in range(40)))
    res = overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    [run] = json.loads(overnight("runs", "--json", home=home, check=True).stdout)
    assert run["state"] == "completed", run["reason"]
    return home, run


def set_option(run: dict[str, Any], **options: Any) -> None:
    config = Path(run["run_dir"]) / "config.json"
    raw = json.loads(config.read_text())
    raw["options"].update(options)
    config.write_text(json.dumps(raw))


def test_export_adapter_and_merged_model(trained: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    home, run = trained
    res = overnight("export", run["id"], str(tmp_path / "adapter"), home=home)
    assert res.returncode == 0 and f"adapter of {run['id']} written to {tmp_path / 'adapter'}" in res.stdout
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    # readable by another account (a server, a hook): the safetensors library writes 0600
    for weights in (tmp_path / "adapter" / "adapter_model.safetensors",
                    Path(run["run_dir"]) / "adapter" / "adapter_model.safetensors",
                    *Path(run["run_dir"]).glob("checkpoints/*/adapter_model.safetensors")):
        assert weights.stat().st_mode & 0o777 == 0o644, (weights, oct(weights.stat().st_mode))
    # it names its base where a loader outside the home finds it (the run named it relative to the home)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((home / "models" / "tiny").resolve())
    for inside in ("inbox", "control", "runs"):  # where the daemon would take it for a drop, a command, a run's own
        res = overnight("export", run["id"], str(home / inside / "exported"), home=home)
        assert res.returncode == 1 and f"is inside the home's {inside}/" in res.stderr, res.stderr
        assert not (home / inside / "exported").exists()

    res = overnight("export", run["id"], str(tmp_path / "merged"), "--merge", home=home, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "merged into the base (fp32)" in res.stdout and "Failed to load" not in res.stderr
    assert not (tmp_path / ".merged.partial").exists()
    assert (tmp_path / "merged" / "model.safetensors").stat().st_mode & 0o777 == 0o644

    tiny = home / "models" / "tiny"
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny), Path(run["run_dir"]) / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny)
    ids = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        logits = [m(**ids).logits for m in (merged, peft, base)]
        generated = [m.generate(**ids, max_new_tokens=4, do_sample=False) for m in (merged, peft)]
    assert (logits[0] - logits[1]).abs().max() < 1e-4  # the merge is the adapter, folded in
    assert (logits[1] - logits[2]).abs().max() > 1e-2  # and the adapter changed something to fold in
    assert torch.equal(generated[0], generated[1])
    card = (tmp_path / "merged" / "README.md").read_text()
    assert f"# overnight run `{run['id']}`: its LoRA adapter merged into" in card and "final training loss" in card
    assert "| learning_rate | 0.003 |" in card and "PeftModel" not in card
    _run_card_snippet(tmp_path / "merged" / "README.md", "PATH/TO/merged", tmp_path / "merged", home)


def _run_card_snippet(card: Path, placeholder: str, path: Path, cwd: Path) -> None:
    """The "Load it" snippet of a README.md, run as written, loads the model and generates with it."""
    import re
    import subprocess
    import sys
    code = re.search(r"```python\n(.*?)```", card.read_text(), re.S).group(1)
    code = code.replace(placeholder, str(path)) + (
        "ids = tokenizer('add 3 1:', return_tensors='pt')\n"
        "print(model.generate(**ids, max_new_tokens=4, do_sample=False).shape[0])\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("1"), res.stderr[-2000:]


def test_export_merge_of_a_quantised_run_says_what_it_merged_into(trained: tuple[Path, dict[str, Any]],
                                                                  tmp_path: Path) -> None:
    home, run = trained
    set_option(run, quantization="4bit")
    try:
        res = overnight("export", run["id"], str(tmp_path / "merged"), "--merge", home=home, timeout=300)
    finally:
        set_option(run, quantization="none")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "merged into the unquantised base (fp32); the run trained on a 4-bit base" in res.stdout


@pytest.mark.parametrize("broken", ["missing", "no-weights"])
def test_export_merge_with_a_broken_base_model_is_one_clean_error(trained: tuple[Path, dict[str, Any]],
                                                                  tmp_path: Path, broken: str) -> None:
    home, run = trained
    if broken == "no-weights":
        (tmp_path / "no-weights").mkdir()
        (tmp_path / "no-weights" / "config.json").write_text('{"model_type": "qwen2"}')
    set_option(run, base_model=str(tmp_path / broken))
    try:
        res = overnight("export", run["id"], str(tmp_path / "merged"), "--merge", home=home, timeout=300)
    finally:
        set_option(run, base_model="models/tiny")
    assert res.returncode == 1
    assert "Traceback" not in res.stderr and "Fix: " in res.stderr and str(tmp_path / broken) in res.stderr
    assert len([line for line in res.stderr.splitlines() if line.startswith("Error: ")]) == 1
    assert not (tmp_path / "merged").exists() and not (tmp_path / ".merged.partial").exists()


def test_the_adapters_own_card_loads_it(trained: tuple[Path, dict[str, Any]]) -> None:
    """The "Load it" snippet of the adapter's README.md, run as written (from the home: the run named its base
    model relative to it), loads the adapter with the run's tokenizer and stops where the run stops."""
    home, run = trained
    adapter = Path(run["run_dir"]) / "adapter"
    _run_card_snippet(adapter / "README.md", "PATH/TO/adapter", adapter, home)
    # the tiny model has a chat template, so these prompt/completion records trained as chat: no raw-prompt note
    assert "Trained on raw prompts" not in (adapter / "README.md").read_text()


def test_an_export_that_cannot_be_written_leaves_nothing_at_out_and_says_why(trained: tuple[Path, dict[str, Any]],
                                                                           tmp_path: Path) -> None:
    """A full disk halfway through the copy: one error line with the fix, no half-written adapter at OUT (a second
    try is not refused as "not empty"), and a folder of the user's beside OUT is left as it was."""
    import subprocess
    from tests.conftest import unavailable
    home, run = trained
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True).returncode:
        unavailable("cannot mount a tmpfs here (needs root): the only real full-disk export test")
    try:
        (small / ".out.partial").mkdir()
        (small / ".out.partial" / "notes.txt").write_text("mine")
        res = overnight("export", run["id"], str(small / "out"), home=home)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert f"cannot write the adapter to {small / 'out'}: [Errno 28] No space left on device" in res.stderr
        assert "Fix: free disk space" in res.stderr
        assert sorted(p.name for p in small.iterdir()) == [".out.partial"]
        assert (small / ".out.partial" / "notes.txt").read_text() == "mine"
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)

    (tmp_path / "afile").write_text("x")
    for merge in ((), ("--merge",)):
        res = overnight("export", run["id"], str(tmp_path / "afile" / "out"), *merge, home=home)
        assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
        assert f"{tmp_path / 'afile'} is a file, not a folder. Fix: choose another folder." in res.stderr
