"""Sidecars as people write them: a UTF-8 byte-order mark (Windows Notepad) is accepted, in a sidecar and in
overnight.toml; a control character (a NUL) in a value naming a file or a model is a sidecar error naming the
file, never a traceback or a "likely a bug"; and every error about a value a sidecar sets (chat_template,
init_adapter, base_model) starts with the sidecar's name, as the options' own errors do."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemon.core.options import OptionsError, load_sidecar
from tests.conftest import overnight

BOM = b"\xef\xbb\xbf"
GOOD = '{"prompt": "2+2=", "completion": "4"}\n'


def drop(folder: Path, stem: str, sidecar: bytes | str) -> Path:
    data = folder / f"{stem}.jsonl"
    data.write_text(GOOD)
    (folder / f"{stem}.toml").write_bytes(sidecar if isinstance(sidecar, bytes) else sidecar.encode())
    return data


def test_a_byte_order_mark_is_accepted_in_a_sidecar_and_in_overnight_toml(tmp_path: Path, tiny_model: Path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "overnight.toml").write_bytes(BOM + f'base_model = "{tiny_model}"\n'.encode())
    data = drop(tmp_path, "notepad", BOM + b"epochs = 1\r\nlearning_rate = 1e-4\r\n")
    res = overnight("check", str(data), "--json", home=home)
    verdict = json.loads(res.stdout)[0]
    assert res.returncode == 0 and verdict["ok"], res.stdout + res.stderr
    assert verdict["base_models"] == [str(tiny_model)], verdict
    assert load_sidecar(tmp_path / "notepad.toml") == {"epochs": 1, "learning_rate": 1e-4}


def test_a_bom_elsewhere_is_still_a_toml_error(tmp_path: Path):
    f = tmp_path / "x.toml"
    f.write_bytes(b"epochs = 1\n" + BOM + b"seed = 2\n")
    with pytest.raises(OptionsError, match=r"x\.toml: not valid TOML"):
        load_sidecar(f)


@pytest.mark.parametrize("key", ["chat_template", "init_adapter", "base_model"])
def test_a_nul_in_a_path_value_is_a_sidecar_error(tmp_path: Path, key: str):
    f = tmp_path / "d.toml"
    f.write_text(f'{key} = "/tmp/x\\u0000y.jinja"\n')
    with pytest.raises(OptionsError) as e:
        load_sidecar(f)
    assert str(e.value) == (f"{f}: option '{key}' = \"/tmp/x\\u0000y.jinja\" holds a NUL character (\\u0000), which "
                            f"no file path or model name can hold. Fix: remove it, e.g. {key} = \"/tmp/xy.jinja\".")


def test_check_says_which_sidecar_holds_the_bad_value(tmp_path: Path, tiny_model: Path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    adapter = tmp_path / "other-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "org/other"}')
    moved = tmp_path / "moved-adapter"  # trained on a model folder since moved away
    moved.mkdir()
    (moved / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "gone")}))
    cases = {  # the sidecar's text, and what its error says after "STEM.toml: "
        "nul": ('chat_template = "/tmp/x\\u0000y.jinja"\n', "option 'chat_template' = \"/tmp/x\\u0000y.jinja\" holds a NUL"),
        "family": ('chat_template = "qwen9"\n', 'chat_template = "qwen9" is not a chat template family overnight knows'),
        "adapter": (f'init_adapter = "{tmp_path}"\n', f"init_adapter {tmp_path}: {tmp_path} holds no "
                                                       "adapter_config.json"),
        "unknown": ('init_adapter = "nosuch"\n', 'init_adapter = "nosuch": no registered model named'),
        "mismatch": (f'init_adapter = "{adapter}"\n', f"init_adapter {adapter} was trained on base model 'org/other', "
                                                      f"but this run's base_model is '{tiny_model}' (set in "
                                                      f"{home / 'overnight.toml'})"),
        "moved": (f'init_adapter = "{moved}"\n', f"init_adapter {moved} was trained on base model "
                                                 f"'{tmp_path / 'gone'}', a folder no longer there, but this run's"),
        "model": ('base_model = "x\\u0000y"\n', "option 'base_model' = \"x\\u0000y\" holds a NUL character"),
    }
    files = [drop(tmp_path, stem, text) for stem, (text, _) in cases.items()]
    res = overnight("check", *map(str, files), "--json", home=home)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    verdicts = {Path(v["file"]).stem: v for v in json.loads(res.stdout)}
    for stem, (_, expected) in cases.items():
        error = verdicts[stem]["error"]
        assert error.startswith(f"{tmp_path / stem}.toml: {expected}"), (stem, error)
    assert f"Fix: put that model back at {tmp_path / 'gone'} (or a symbolic link" in verdicts["moved"]["error"]


def test_the_daemon_rejects_a_nul_chat_template_as_a_sidecar_error(home: Path):
    (home / "overnight.toml").write_text('')  # no model: refused before any model is needed
    drop(home / "inbox", "d", 'chat_template = "/tmp/x\\u0000y.jinja"\n')
    res = overnight("daemon", "--once", "--settle", "0.1", home=home, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    rejected = home / "inbox" / "rejected"
    assert sorted(p.name for p in rejected.iterdir()) == ["d.error.txt", "d.jsonl", "d.toml"]
    error = (rejected / "d.error.txt").read_text()
    assert error.startswith(f"{rejected / 'd.toml'}: option 'chat_template' = \"/tmp/x\\u0000y.jinja\" holds "
                            f"a NUL character"), error
    log = (home / "overnight.log").read_text()
    assert "likely a bug" not in error and "Traceback" not in log and "unexpected error" not in log, log
