"""daemon/core/basemodel.py: one rule for where a base model is (intake, check, trainer and export all use it)."""
from __future__ import annotations

from pathlib import Path

import pytest

from daemon.core.basemodel import ModelNotFound, locate_model, model_folder


def model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def cached(cache: Path, name: str, revision: str = "abc", main: bool = True) -> Path:
    entry = cache / f"models--{name.replace('/', '--')}"
    snapshot = model(entry / "snapshots" / revision)
    if main:
        (entry / "refs").mkdir(exist_ok=True)
        (entry / "refs" / "main").write_text(revision)
    return snapshot


def test_an_absolute_folder_is_the_model(tmp_path: Path, cache: Path) -> None:
    folder = model(tmp_path / "m")
    found = locate_model(str(folder), tmp_path / "home")
    assert (found.folder, found.cached, found.source) == (folder, False, str(folder))


def test_a_relative_folder_is_looked_for_in_the_home_then_the_run_folder_then_the_cwd(
        tmp_path: Path, cache: Path) -> None:
    home, run, cwd = tmp_path / "home", tmp_path / "home" / "runs" / "r1", tmp_path / "cwd"
    model(cwd / "models" / "m")
    assert locate_model("models/m", home, run, cwd).folder == cwd / "models" / "m"
    model(run / "models" / "m")
    assert locate_model("models/m", home, run, cwd).folder == run / "models" / "m"
    model(home / "models" / "m")
    assert locate_model("models/m", home, run, cwd).folder == home / "models" / "m"


def test_the_daemon_does_not_look_in_its_working_directory(tmp_path: Path, cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    model(tmp_path / "models" / "m")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFound):
        locate_model("models/m", tmp_path / "home")  # the trainer would run in the run folder, not here
    assert model_folder("models/m", tmp_path / "home") is None


def test_a_folder_without_config_json_is_not_a_model(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelNotFound) as e:
        locate_model(str(tmp_path / "m"), tmp_path)
    assert f"{tmp_path / 'm'} has no config.json" in str(e.value) and "Fix: point base_model" in str(e.value)


def test_a_hub_name_is_its_cache_snapshot_and_loads_by_name(tmp_path: Path, cache: Path) -> None:
    snapshot = cached(cache, "Org/Model-1.5B")
    cached(cache, "Org/Model-1.5B", "newer-but-not-main", main=False)
    found = locate_model("Org/Model-1.5B", tmp_path)
    assert (found.folder, found.cached, found.source) == (snapshot, True, "Org/Model-1.5B")
    assert model_folder("Org/Model-1.5B", tmp_path) == snapshot


def test_a_folder_in_the_home_wins_over_the_cache(tmp_path: Path, cache: Path) -> None:
    cached(cache, "org/m")
    folder = model(tmp_path / "org" / "m")
    assert locate_model("org/m", tmp_path).folder == folder


def test_a_missing_model_names_what_was_tried_and_the_fix(tmp_path: Path, cache: Path) -> None:
    (cache / "models--org--m" / "snapshots").mkdir(parents=True)  # an interrupted download: no snapshot
    with pytest.raises(ModelNotFound) as e:
        locate_model("org/m", tmp_path / "home", tmp_path / "run")
    text = str(e.value)
    assert "base model 'org/m' was not found" in text
    assert str(tmp_path / "home" / "org" / "m") in text and str(tmp_path / "run" / "org" / "m") in text
    assert str(cache / "models--org--m") in text and "Fix: " in text and "hf download org/m" in text


def test_a_missing_path_is_not_looked_for_in_the_cache(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ModelNotFound) as e:
        locate_model("/no/such/model", tmp_path)
    assert "no folder /no/such/model." in str(e.value) and "hf download" not in str(e.value)
