"""`trust_remote_code = true` in overnight.toml: a base model that ships its own Python code (config.json `auto_map`)
is loaded with that code and trains; without the option the run fails saying so, and the code never runs.

(A sidecar setting trust_remote_code is refused: tests/test_options.py and tests/test_intake_e2e.py.)"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from daemon.core.queries import Reader
from tests.conftest import DaemonProcess, budget, drop, overnight, wait_until

pytestmark = pytest.mark.e2e

MARKER = "custom model code ran: MarkedQwen2ForCausalLM"

CONFIGURATION = '''from transformers import Qwen2Config


class MarkedQwen2Config(Qwen2Config):
    model_type = "marked_qwen2"
'''

MODELING = f'''from transformers import Qwen2ForCausalLM

from .configuration_marked import MarkedQwen2Config


class MarkedQwen2ForCausalLM(Qwen2ForCausalLM):
    """The tiny Qwen2 under a model type transformers does not know: only this file can build it."""

    config_class = MarkedQwen2Config

    def __init__(self, config):
        super().__init__(config)
        print("{MARKER}", flush=True)
'''


def custom_code_model(tiny: Path, dest: Path) -> Path:
    """The tiny model's weights and tokenizer, its config pointing at modeling/configuration files beside them."""
    shutil.copytree(tiny, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(model_type="marked_qwen2", architectures=["MarkedQwen2ForCausalLM"],
                  auto_map={"AutoConfig": "configuration_marked.MarkedQwen2Config",
                            "AutoModelForCausalLM": "modeling_marked.MarkedQwen2ForCausalLM"})
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    (dest / "configuration_marked.py").write_text(CONFIGURATION)
    (dest / "modeling_marked.py").write_text(MODELING)
    return dest


def _dataset(tmp: Path, name: str) -> None:
    rows = [json.dumps({"prompt": f"say {w}\n", "completion": w}) for w in ("one", "two", "three", "four") * 5]
    (tmp / f"{name}.jsonl").write_text("\n".join(rows) + "\n")
    (tmp / f"{name}.toml").write_text("max_steps = 3\nbatch_size = 4\nmax_length = 64\nprobe_count = 0\n"
                                      "eval_fraction = 0.0\nlearning_rate = 3e-3\nlog_every = 1\n")


def _ended(home: Path, name: str) -> dict | None:
    reader = Reader(home / "overnight.db")
    try:
        run = reader.find_run(name)
    finally:
        reader.close()
    return run if run and run["state"] in ("completed", "failed") else None


@pytest.fixture(scope="module")
def two_runs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, dict]:
    """One daemon, one custom-code model: a run with trust_remote_code = true, then one after the owner removed it.

    Returns the home, the model, and both runs' final DB rows."""
    tmp = tmp_path_factory.mktemp("remote-code")
    home = tmp / "home"
    model = custom_code_model(tiny_model, tmp / "marked-qwen2")
    (home / "overnight.toml").parent.mkdir()
    (home / "overnight.toml").write_text(f'base_model = "{model}"\ntrust_remote_code = true\n')
    for name in ("trusted", "untrusted"):
        _dataset(tmp, name)
    # transformers copies the model's code into HF_MODULES_CACHE to import it: the test's folder, not ~/.cache
    d = DaemonProcess(home, env={**os.environ, "HF_MODULES_CACHE": str(tmp / "hf-modules")})
    try:
        drop(tmp / "trusted.toml", home / "inbox")
        drop(tmp / "trusted.jsonl", home / "inbox")
        trusted = wait_until(lambda: _ended(home, "trusted"), budget(120), interval=0.5, what="the trusted run")
        (home / "overnight.toml").write_text(f'base_model = "{model}"\n')  # the owner takes the option away
        drop(tmp / "untrusted.toml", home / "inbox")
        drop(tmp / "untrusted.jsonl", home / "inbox")
        untrusted = wait_until(lambda: _ended(home, "untrusted"), budget(120), interval=0.5,
                               what="the untrusted run")
    finally:
        d.stop()
    return home, model, trusted, untrusted


def test_trust_remote_code_loads_the_model_with_its_own_code_and_trains(two_runs):
    home, model, trusted, _ = two_runs
    run_dir = Path(trusted["run_dir"])
    console = (run_dir / "console.log").read_text()
    assert trusted["state"] == "completed", console
    assert MARKER in console  # the class from modeling_marked.py built the model that trained
    assert "step 3/3" in console
    assert list((home.parent / "hf-modules").rglob("modeling_marked.py")), "imported from the model's own file"
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(model)


def test_without_trust_remote_code_the_run_fails_naming_the_option(two_runs):
    home, _, _, failed = two_runs
    console = (Path(failed["run_dir"]) / "console.log").read_text()
    assert failed["state"] == "failed", console
    assert MARKER not in console  # the model's code never ran
    assert "custom code" in failed["reason"] and "trust_remote_code" in failed["reason"], failed["reason"]
    shown = overnight("runs", home=home)
    assert shown.returncode == 0 and "failed" in shown.stdout


def test_without_trust_remote_code_the_fix_says_where_to_set_it(two_runs):
    reason = two_runs[3]["reason"]
    assert "trust_remote_code = true" in reason and "overnight.toml" in reason, reason
    assert "complete causal-LM download" not in reason, reason


def test_export_merge_uses_the_trust_remote_code_the_run_trained_with(two_runs, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    """trust_remote_code is fixed when the run is queued: the owner has since removed it from overnight.toml, yet the
    run that trained with the model's code exports merged with it (and config.json says so), one value per run."""
    home, _, trusted, _ = two_runs
    assert "trust_remote_code" not in (home / "overnight.toml").read_text()
    config = json.loads((Path(trusted["run_dir"]) / "config.json").read_text())
    assert config["options"]["trust_remote_code"] is True
    monkeypatch.setenv("HF_MODULES_CACHE", str(home.parent / "hf-modules"))  # the model's code: not into ~/.cache
    res = overnight("export", trusted["id"], str(tmp_path / "merged"), "--merge", home=home, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    assert "Traceback" not in res.stderr and (tmp_path / "merged" / "config.json").is_file()
