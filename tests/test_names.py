"""Model names in any script: `name = "模型"` in a sidecar, init_adapter "modèle-ß:1", `overnight activate/delete`
and `overnight models`, the registry's trash folders, export by a unicode run id; NFC everywhere (an é typed
decomposed, as macOS writes it, is the same name); paths, '..', control characters and over-long names refused
with the fix. Sweep tags keep letters as run ids do; systemd unit names stay ASCII."""
from __future__ import annotations

import json
import time
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon.core import control, sweep
from daemon.client.cli import main
from daemon.engine.controller import Controller
from daemon.core.home import Home
from daemon.engine.intake import Intake
from daemon.engine.lineage import resolve_parent
from daemon.core.options import OptionsError, load_sidecar
from daemon.client.service import unit_name
from daemon.engine.store import Store
from daemon.core.errors import SubmissionError
from daemon.engine.submission import validate

NFD = unicodedata.normalize("NFD", "modèle-ß")  # 'e' + U+0300, as a Mac keyboard writes it


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.create()
    return h


def register(home: Home, name: str, base: str = "tiny") -> str:
    """A completed run with an adapter, registered as the next version of `name`; returns its run id."""
    store = Store(home.db)
    try:
        rid = f"{name[:20]}-20260101-00000{len(store.models(name))}"
        adapter = home.runs / rid / "adapter"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
        (adapter / "adapter_model.safetensors").write_bytes(b"weights")
        store.insert_run({"id": rid, "name": name, "dataset": f"{name}.jsonl", "state": "completed", "priority": 0,
                          "seq": store.next_seq(), "run_dir": str(home.runs / rid), "base_model": base})
        store.add_model({"name": name, "run_id": rid, "base_model": base, "metrics": {"final_loss": 1.5},
                         "adapter_path": str(adapter)})
    finally:
        store.close()
    return rid


def sidecar(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "d.toml"
    f.write_text(text, encoding="utf-8")
    return f


# --- the name option -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["modèle-ß", "模型", "données_v2.1", "Модель-7", "a"])
def test_a_name_in_any_script_is_a_valid_name_option(tmp_path: Path, name: str) -> None:
    assert load_sidecar(sidecar(tmp_path, f'name = "{name}"\n'))["name"] == name


def test_a_decomposed_name_is_stored_composed(tmp_path: Path) -> None:
    assert load_sidecar(sidecar(tmp_path, f'name = "{NFD}"\n'))["name"] == "modèle-ß"


@pytest.mark.parametrize("name, why, fix", [
    ("a/b", "path separator", 'name = "a-b"'),
    ("..", "'..'", 'name = "model"'),
    ("v1..2", "'..'", 'name = "v1.2"'),
    ("a\\u0000b", "U+0000", 'name = "a-b"'),
    ("a\\tb", "U+0009", 'name = "a-b"'),
    ("\\u202emodel", "U+202E", 'name = "model"'),
    ("has space", "' '", 'name = "has-space"'),
    ("-lead", "starts with '-'", 'name = "lead"'),
    ("模" * 65, "65 characters", 'name = "' + "模" * 64 + '"'),
])
def test_a_bad_name_is_refused_with_why_and_the_fix(tmp_path: Path, name: str, why: str, fix: str) -> None:
    with pytest.raises(OptionsError) as e:
        load_sidecar(sidecar(tmp_path, f'name = "{name}"\n'))
    msg = str(e.value)
    assert "d.toml" in msg and why in msg and "letters and digits of any script" in msg, msg
    assert f"Fix: {fix}" in msg, msg


def test_overnight_check_accepts_a_unicode_name_and_refuses_a_path(tmp_path: Path) -> None:
    runner = CliRunner()
    good = sidecar(tmp_path, 'name = "模型"\n')
    r = runner.invoke(main, ["check", "--home", str(tmp_path), str(good)])
    assert r.exit_code == 0 and "OK" in r.output, r.output
    bad = sidecar(tmp_path, 'name = "../x"\n')
    r = runner.invoke(main, ["check", "--home", str(tmp_path), str(bad)])
    assert r.exit_code == 1 and "path separator" in r.output and "Fix:" in r.output, r.output


# --- run ids and sweep tags keep letters -----------------------------------------------------------------------
def test_a_unicode_name_and_model_keep_their_letters_in_the_run_ids_of_a_sweep(home: Home) -> None:
    (home.root / "data.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    (home.root / "data.toml").write_text(f'name = "{NFD}"\nbase_model = ["/m/模型-7B", "/m/Qwen"]\n'
                                         'learning_rate = [1e-4, 3e-4]\n', encoding="utf-8")
    sub = validate(home.root / "data.jsonl", home.root / "data.toml", None, home.toml, require_model=False)
    assert sub.name == "modèle-ß"
    store = Store(home.db)
    try:
        ids = Intake(home, store).accept(sub)
        assert [i.rsplit("-", 2)[0] for i in ids] == [
            "modèle-ß-模型-7B-lr1e-4", "modèle-ß-模型-7B-lr3e-4", "modèle-ß-Qwen-lr1e-4", "modèle-ß-Qwen-lr3e-4"]
        assert all(control.RUN_ID.fullmatch(i) and (home.runs / i).is_dir() for i in ids)
        assert {r["name"] for r in store.runs_in(["queued"])} == {"modèle-ß"}
    finally:
        store.close()


def test_two_models_whose_folders_share_a_name_get_two_runs(home: Home) -> None:
    """Two checkouts of one model (/a/tiny, /b/tiny) tag their runs alike: the second run's id gets its own -2
    instead of the drop being rejected; one model listed twice is refused with the fix."""
    (home.root / "data.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    (home.root / "data.toml").write_text('base_model = ["/a/tiny", "/b/tiny"]\n')
    sub = validate(home.root / "data.jsonl", home.root / "data.toml", None, home.toml, require_model=False)
    store = Store(home.db)
    try:
        first, second = Intake(home, store).accept(sub)
    finally:
        store.close()
    assert second == f"{first}-2" and (home.runs / first).is_dir() and (home.runs / second).is_dir()
    (home.root / "data.toml").write_text('base_model = ["/a/tiny", "/a/tiny"]\n')
    with pytest.raises(SubmissionError, match='lists "/a/tiny" twice. Fix: list each value once'):
        validate(home.root / "data.jsonl", home.root / "data.toml", None, home.toml, require_model=False)


def test_a_model_tag_is_composed_and_keeps_letters() -> None:
    assert sweep.run_suffix(sweep.Point(unicodedata.normalize("NFD", "/m/modèle 7B/")), True) == "-modèle-7B"
    assert sweep.run_suffix(sweep.Point("/m/★★/"), True) == "-model"


def test_a_default_name_from_a_decomposed_file_name_is_composed(home: Home) -> None:
    f = home.root / f"{NFD}.jsonl"
    f.write_text('{"text": "x"}\n')
    assert validate(f, None, None, home.toml, require_model=False).name == "modèle-ß"



def test_a_model_named_after_a_file_with_spaces_is_spelled_as_its_run_ids(home: Home) -> None:
    from daemon.core import log
    from daemon.engine import registry
    log.setup(home.root / "overnight.log", echo=False)
    home.toml.write_text('base_model = "/m/tiny"\n')
    f = home.root / f"{unicodedata.normalize('NFD', 'données')} 日本.txt"
    f.write_text("some text to learn\n" * 5, encoding="utf-8")
    store = Store(home.db)
    try:
        [rid] = Intake(home, store).accept(validate(f, None, None, home.toml, require_model=False))
        run = store.get_run(rid)
        (home.runs / rid / "adapter").mkdir()
        (home.runs / rid / "adapter" / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny"}')
        registry.register(store, run)
    finally:
        store.close()
    # the name a user reads in the run id is the name init_adapter and activate take
    assert rid.startswith("données-日本-") and run["name"] == "données-日本"
    assert resolve_parent("données-日本", home.root).label == "données-日本:1"
    r = CliRunner().invoke(main, ["models", "--home", str(home.root)])
    assert "données-日本 v1" in r.output, r.output
    said = "model name: données-日本 (from the file name)"
    assert (home.root / "overnight.log").read_text(encoding="utf-8").count(said) == 1
    assert (home.runs / rid / "console.log").read_text(encoding="utf-8").count(said) == 1


def _accepted(home: Home, file_name: str) -> tuple[str, str]:
    """(run id, model name) of a one-record drop named `file_name`, taken by the intake."""
    home.toml.write_text('base_model = "/m/tiny"\n')
    f = home.root / file_name
    f.write_text('{"text": "x"}\n', encoding="utf-8")
    store = Store(home.db)
    try:
        [rid] = Intake(home, store).accept(validate(f, None, None, home.toml, require_model=False))
        return rid, store.get_run(rid)["name"]
    finally:
        store.close()


def test_a_file_name_that_is_already_a_model_name_is_kept_without_a_note(home: Home) -> None:
    rid, name = _accepted(home, "模型_v2.1.jsonl")
    assert name == "模型_v2.1"
    assert "model name:" not in (home.runs / rid / "console.log").read_text(encoding="utf-8")


def test_a_file_name_with_dot_dot_gives_a_model_name_that_can_be_activated(home: Home) -> None:
    """'..' is in no registered name (activate and delete refuse it): the name from the file name drops it."""
    rid, name = _accepted(home, "a%2F..%2Fb.jsonl")
    assert name == "a-2F.-2Fb" and rid.startswith(name)
    assert control.parse_text("activate", f"{name} 1").model == (name, 1)


def test_a_file_name_the_name_option_would_refuse_gives_a_model_name_that_can_be_named(home: Home) -> None:
    """`_notes.jsonl`: a model named `_notes` could not be named again (init_adapter read it as a path)."""
    rid, name = _accepted(home, "_notes.jsonl")
    assert name == "notes" and control.parse_text("activate", f"{name} 1").model == (name, 1)
    assert "model name: notes (from the file name)" in (home.runs / rid / "console.log").read_text()


# --- init_adapter ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["modèle-ß", "modèle-ß:1", NFD + ":1"])
def test_init_adapter_finds_a_unicode_registered_name(home: Home, spec: str) -> None:
    register(home, "modèle-ß")
    parent = resolve_parent(spec, home.root)
    assert parent.label == "modèle-ß:1" and parent.base_model == "tiny"


def test_init_adapter_with_a_cjk_name_that_is_not_registered_says_so(home: Home) -> None:
    register(home, "模型")
    from daemon.engine.submission import SubmissionError
    with pytest.raises(SubmissionError, match="no registered model named '模型2'. Fix:"):
        resolve_parent("模型2:1", home.root)
    assert resolve_parent("模型:1", home.root).label == "模型:1"


def test_init_adapter_finds_a_name_taken_from_a_long_file_name(home: Home) -> None:
    """A model named after its dataset's file may be longer than the `name` option's 64 characters."""
    long = "b" * 100
    register(home, long)
    assert resolve_parent(f"{long}:1", home.root).label == f"{long}:1"
    assert resolve_parent(long, home.root).label == f"{long}:1"
    with pytest.raises(SubmissionError, match="runs/nosuch/adapter does not exist. Fix: point init_adapter"):
        resolve_parent("runs/nosuch/adapter", home.root)


def test_check_and_add_refuse_a_file_name_the_daemon_would_refuse(home: Home, tmp_path: Path) -> None:
    data = tmp_path / ("a" * 200 + ".jsonl")
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    for args in (["check", str(data)], ["add", str(data)]):
        res = CliRunner().invoke(main, [*args, "--home", str(home.root)])
        assert res.exit_code == 1 and "the file name is too long (206 bytes; overnight takes at most 200" in \
            res.output and "Fix: rename it to a shorter name" in res.output, res.output
    assert not [p for p in home.inbox.iterdir() if p.is_file()]


# --- activate / delete, models, trash --------------------------------------------------------------------------
def _pass(home: Home) -> list[dict]:
    store = Store(home.db)
    try:
        for p in home.control.iterdir():
            if p.is_file():
                old = time.time() - 5
                import os
                os.utime(p, (old, old))
        Controller(home, store, lambda *a, **k: None).apply([])
        return [dict(r) for r in store.db.query("SELECT * FROM control_events ORDER BY id")]
    finally:
        store.close()


def test_activate_and_delete_a_unicode_name_through_the_cli_and_the_controller(home: Home) -> None:
    register(home, "modèle-ß")
    register(home, "modèle-ß")
    runner = CliRunner()
    r = runner.invoke(main, ["activate", "--home", str(home.root), NFD, "1"])  # typed decomposed
    assert r.exit_code == 0 and "wrote" in r.output, r.output
    [event] = _pass(home)
    assert event["status"] == "applied" and event["message"].startswith("activate modèle-ß v1"), event

    r = runner.invoke(main, ["models", "--home", str(home.root)])
    assert r.exit_code == 0 and "* modèle-ß v1" in r.output and "  modèle-ß v2" in r.output, r.output
    rows = json.loads(runner.invoke(main, ["models", "--home", str(home.root), "--json"]).output)
    assert [(m["name"], m["version"], m["active"]) for m in rows] == [("modèle-ß", 1, 1), ("modèle-ß", 2, 0)]

    runner.invoke(main, ["delete", "--home", str(home.root), "modèle-ß", "2"])
    event = _pass(home)[-1]
    assert event["status"] == "applied", event
    [trash] = home.trash.iterdir()
    assert trash.name.startswith("modèle-ß-v2-") and (trash / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("line, why", [
    ("../../etc 1", "path separator"),
    (".. 1", "'..'"),
    ("a\u202e 1", "U+202E"),
    ("模型 ²", "expected one line 'NAME VERSION'"),  # found by reasoning on isdigit(): int('²') raised ValueError
    ("模型 1\n模型 2", "expected one line 'NAME VERSION'"),
])
def test_a_bad_activate_file_is_rejected_with_the_fix_and_kept(home: Home, line: str, why: str) -> None:
    (home.control / "activate").write_text(line, encoding="utf-8")
    [event] = _pass(home)
    assert event["status"] == "rejected" and why in event["message"] and "Fix:" in event["message"], event
    [kept] = [p for p in home.control_rejected.iterdir() if not p.name.endswith(".error.txt")]
    assert kept.read_text(encoding="utf-8") == line


def test_a_model_named_after_a_file_with_spaces_can_still_be_activated(home: Home) -> None:
    register(home, "my data")
    register(home, "my data")
    (home.control / "activate").write_text("my data 1\n")
    [event] = _pass(home)
    assert event["status"] == "applied" and "activate my data v1" in event["message"], event


def test_a_long_name_gets_a_trash_folder_that_fits(home: Home) -> None:
    name = "模" * 150  # a dataset file name's stem: 450 bytes would not fit in one file name with the date
    register(home, name)
    (home.control / "delete").write_text(f"{name} 1\n")
    [event] = _pass(home)
    assert event["status"] == "applied", event
    [trash] = home.trash.iterdir()
    assert len(trash.name.encode()) <= 255 and (trash / "adapter").is_dir()


# --- export and run lookup by a unicode run id -----------------------------------------------------------------
def test_export_finds_a_unicode_run_typed_decomposed(home: Home, tmp_path: Path) -> None:
    rid = register(home, "modèle-ß")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["export", "--home", str(home.root), unicodedata.normalize("NFD", rid), str(out)])
    assert r.exit_code == 0, r.output
    assert f"adapter of {rid} written" in r.output and (out / "adapter_model.safetensors").exists()


# --- systemd units stay ASCII ----------------------------------------------------------------------------------
def test_unit_names_of_unicode_homes_are_ascii_and_distinct(tmp_path: Path) -> None:
    names = {unit_name(tmp_path / h) for h in ("模型", "模型2", "modèle", "données")}
    assert len(names) == 4
    for n in names:
        assert n.isascii() and n.endswith(".service") and all(c.isalnum() or c in "-_.@" for c in n), n


def test_tables_keep_columns_straight_with_wide_letters() -> None:
    from daemon.core.render import cells, table
    lines = table([["NAME", "V"], ["模型", "1"], ["modèle-ß", "2"], [unicodedata.normalize("NFD", "é"), "3"]])
    assert cells("模型") == 4 and cells(unicodedata.normalize("NFD", "é")) == 1
    assert [cells(ln[:ln.rindex(" ") + 1]) for ln in lines] == [10] * 4, lines


@pytest.mark.parametrize("name, why", [("../x", "path separator"), ("a\u202e", "U+202E"), ("..", "'..'")])
def test_overnight_activate_refuses_a_bad_name_before_writing_anything(home: Home, name: str, why: str) -> None:
    r = CliRunner().invoke(main, ["activate", "--home", str(home.root), name, "1"])
    assert r.exit_code == 1 and why in r.output and "Fix:" in r.output, r.output
    assert not (home.control / "activate").exists()
