"""config.json typed (daemon/core/runconfig.py): the file the intake writes, read back by every reader alike."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.core.atomic import write_json
from daemon.core.options import resolve
from daemon.core.runconfig import ConfigError, RunConfig
from daemon.core.rundir import RunFolder
from daemon.trainer.config import RunConfig as TrainerConfig, RunError


def _as_intake_wrote_it(run_dir: Path) -> dict:
    """config.json as daemon/engine/intake.py wrote it before RunConfig existed (an inline dict), key order included."""
    return {"run_id": run_dir.name, "name": "support", "group": "support-20261206-120000",
            "sweep": {"lora_r": 8}, **resolve(None, {"base_model": "/m", "lora_r": 8}).to_config(),
            "dataset": {"path": "dataset/support.jsonl", "file": "support.jsonl", "format": "jsonl",
                        "schema": "messages", "records": 12, "sha256": "ab" * 32},
            "init_adapter": {"parent": "support:3", "source": "/h/runs/x/adapter", "path": "init_adapter"},
            "probes": "dataset/support.probes.jsonl", "sidecar": None}


def test_round_trip_writes_the_same_bytes_as_before(tmp_path: Path) -> None:
    old = _as_intake_wrote_it(tmp_path)
    write_json(tmp_path / "old.json", old)
    config = RunConfig.from_json(old)
    assert config.to_json() == old and list(config.to_json()) == list(old)
    assert RunConfig.from_json(config.to_json()) == config
    config.write(tmp_path)
    assert RunFolder(tmp_path).config.read_bytes() == (tmp_path / "old.json").read_bytes()
    assert RunConfig.read(tmp_path) == RunConfig.load(tmp_path) == config
    assert config.parent == "support:3" and config.options["lora_r"] == 8 and config.sources["lora_r"] == "sidecar"


def test_a_key_this_version_does_not_know_is_kept(tmp_path: Path) -> None:
    data = {**_as_intake_wrote_it(tmp_path), "objective": {"kind": "dpo"}}
    config = RunConfig.from_json(data)
    assert config.extra == {"objective": {"kind": "dpo"}} and config.to_json() == data


def test_an_old_config_without_the_newer_keys_reads_as_before(tmp_path: Path) -> None:
    old = {"run_id": "old-1", "options": {"base_model": "/m", "seed": 3},
           "dataset": {"path": "dataset/d.jsonl", "schema": "prompt_completion"}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    config = RunConfig.read(tmp_path)
    assert (config.name, config.group, config.sweep, config.sources, config.init_adapter, config.probes,
            config.sidecar, config.parent) == (None, None, None, {}, None, None, None, None)
    assert RunFolder(tmp_path).options() == {"base_model": "/m", "seed": 3}
    trainer = TrainerConfig.load(tmp_path)
    assert trainer.run_id == "old-1" and trainer.options.seed == 3 and trainer.probes_path is None
    assert trainer.init_adapter is None and trainer.parent is None and trainer.schema == "prompt_completion"
    assert trainer.file.options == old["options"] and trainer.file.sources == {}


@pytest.mark.parametrize("text", ['{"run_id": "x", "options": {"se', "[1, 2]", b"\xff\xfe{}"])
def test_a_damaged_config_is_one_clear_message_for_the_trainer_and_empty_for_readers(tmp_path: Path,
                                                                                    text: str | bytes) -> None:
    folder = RunFolder(tmp_path)
    (folder.config.write_bytes if isinstance(text, bytes) else folder.config.write_text)(text)
    with pytest.raises(RunError, match=f"^{folder.config}: not valid JSON \\("):
        TrainerConfig.load(tmp_path)
    with pytest.raises(ConfigError):
        RunConfig.load(tmp_path)
    assert RunConfig.read(tmp_path).empty and folder.options() == {}  # a reader of the folder never stops on it


def test_a_missing_config_is_the_trainers_message_and_empty_for_readers(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="config.json does not exist. Fix: the trainer runs on a run folder"):
        TrainerConfig.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        RunConfig.load(tmp_path)
    assert RunConfig.read(tmp_path) == RunConfig() and RunConfig().empty


def test_values_of_the_wrong_type_read_as_missing() -> None:
    config = RunConfig.from_json({"run_id": 5, "options": "lots", "sources": [], "init_adapter": "x", "probes": 3})
    assert config == RunConfig(extra={}) and config.options == {} and config.parent is None
    with pytest.raises(ConfigError):
        RunConfig.from_json([])  # type: ignore[arg-type]


def test_the_module_imports_only_the_standard_library_and_atomic() -> None:
    code = ("import sys; before = set(sys.modules); import daemon.core.runconfig; "
            "print(sorted(m for m in set(sys.modules) - before if m.startswith(('daemon', 'torch', 'click'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "['daemon', 'daemon.core', 'daemon.core.atomic', 'daemon.core.errors', 'daemon.core.runconfig']"
