"""The real daemon as a subprocess on a temp home: drops by mv, where they end up, byte-identical."""
from __future__ import annotations

import json
import re
import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, budget, drop, overnight, wait_until
from tests.test_junk import BUG_SIGNS


@pytest.fixture
def model_home(home, tiny_model):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "control" / "stop").write_text("")  # hold the queue: these tests look at intake only
    return home


def _run_dirs(home):
    return sorted(p for p in (home / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))


def test_good_and_bad_drops_end_up_in_the_right_place(model_home, daemon_proc, tmp_path):
    home = model_home
    daemon_proc()
    good = tmp_path / "qa.jsonl"
    good.write_text('{"prompt": "2+2=", "completion": "4"}\n' * 20)
    (tmp_path / "qa.toml").write_text("learning_rate = 1e-3\nlora_r = 4\n")
    bad = tmp_path / "broken.jsonl"
    bad.write_bytes(b'{"text": "fine"}\n{"text": "oops"\n')
    drop(tmp_path / "qa.toml", home / "inbox")   # sidecar first: it waits for its dataset
    drop(good, home / "inbox")
    drop(bad, home / "inbox")

    runs = wait_until(lambda: _run_dirs(home), 30, what="a run folder")
    err = wait_until(lambda: (home / "inbox" / "rejected" / "broken.error.txt").exists(), 30, what="rejection")
    assert err
    run = runs[0]
    assert run.name.startswith("qa-") and len(run.name.split("-")) == 3
    assert (run / "dataset" / "qa.jsonl").read_bytes() == good.read_bytes()
    assert (run / "dataset" / "qa.toml").exists()
    assert (home / "inbox" / "rejected" / "broken.jsonl").read_bytes() == bad.read_bytes()
    message = (home / "inbox" / "rejected" / "broken.error.txt").read_text()
    assert "broken.jsonl" in message and "line 2" in message
    assert sorted(p.name for p in (home / "inbox").iterdir()) == ["rejected"]

    config = json.loads((run / "config.json").read_text())
    assert config["options"]["learning_rate"] == 1e-3 and config["sources"]["learning_rate"] == "sidecar"
    assert config["sources"]["base_model"] == "toml" and config["dataset"]["schema"] == "prompt_completion"
    stats = json.loads((run / "stats.json").read_text())
    assert stats["records"] == 20
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["status"] == "queued" and len(meta["dataset"]["sha256"]) == 64
    assert "queued" in (run / "console.log").read_text()

    status = json.loads(overnight("status", "--json", home=home, check=True).stdout)
    assert status["daemon"] and [r["state"] for r in status["runs"]] == ["queued"]
    listing = overnight("runs", home=home, check=True).stdout
    assert run.name in listing and "queued" in listing
    # a sidecar that comes after its dataset was taken: said, with the run that does not use it and the fix
    drop(tmp_path / "qa.toml", home / "inbox")
    said = wait_until(lambda: "came after its dataset was taken" in (home / "overnight.log").read_text()
                      and (home / "overnight.log").read_text(), 30, what="the late sidecar said")
    assert f"taken as run {run.name}, which does not use it" in said and "Fix: to train with it" in said


def test_files_present_at_start_are_taken_and_realdata_is_judged(model_home, daemon_proc, realdata):
    home = model_home
    names = ["alpaca_en_demo.json", "c4_demo.jsonl", "wiki_demo.txt", "glaive_toolcall_en_demo.json",
             "v1_sft_demo.jsonl", "mllm_demo.json", "dpo_en_demo.json", "identity.json", "alpaca_zh_demo.json"]
    for n in names:
        shutil.copy(realdata / n, home / "inbox" / n)
    d = daemon_proc()
    rejected = home / "inbox" / "rejected"
    wait_until(lambda: len(_run_dirs(home)) == 8 and len(list(rejected.glob("*.error.txt"))) == 1, 60,
               what="8 runs and 1 rejection")
    assert "images are not supported" in (rejected / "mllm_demo.error.txt").read_text()
    # preference pairs: those whose prompt alone fills max_length with the tiny model's 512-token vocabulary are
    # dropped (fewer than half), as the trainer drops them
    dpo = next(r for r in _run_dirs(home) if r.name.startswith("dpo_en_demo"))
    assert re.search(r"max_length 1024: \d+ record\(s\) cut, \d+ of them dropped",
                     overnight("check", str(dpo / "dataset" / "dpo_en_demo.json"), home=home).stdout)
    schemas = {json.loads((r / "config.json").read_text())["dataset"]["file"]:
               json.loads((r / "config.json").read_text())["dataset"]["schema"] for r in _run_dirs(home)}
    assert schemas == {"alpaca_en_demo.json": "alpaca", "alpaca_zh_demo.json": "alpaca", "identity.json": "alpaca",
                       "c4_demo.jsonl": "text", "wiki_demo.txt": "plain_text",
                       "glaive_toolcall_en_demo.json": "sharegpt", "v1_sft_demo.jsonl": "messages",
                       "dpo_en_demo.json": "sharegpt_preference"}
    # `overnight check` agrees with the daemon on every file
    for r in _run_dirs(home):
        f = next((r / "dataset").iterdir())
        assert overnight("check", str(f), home=home).returncode == 0
    res = overnight("check", str(rejected / "mllm_demo.json"), home=home)
    assert res.returncode == 1 and (rejected / "mllm_demo.error.txt").read_text().splitlines()[0] in res.stdout
    assert d.stop() == 0


def test_missing_base_model_and_bad_sidecar_are_rejected(home, daemon_proc, tmp_path):
    (home / "control" / "stop").write_text("")
    daemon_proc()
    (tmp_path / "a.jsonl").write_text('{"text": "hello"}\n')
    drop(tmp_path / "a.jsonl", home / "inbox")
    (tmp_path / "b.toml").write_text('base_model = "/x"\ntrust_remote_code = true\n')
    (tmp_path / "b.jsonl").write_text('{"text": "hello"}\n')
    drop(tmp_path / "b.toml", home / "inbox")
    drop(tmp_path / "b.jsonl", home / "inbox")
    rej = home / "inbox" / "rejected"
    wait_until(lambda: (rej / "a.error.txt").exists() and (rej / "b.error.txt").exists(), 30, what="rejections")
    assert "no base model is named" in (rej / "a.error.txt").read_text()
    assert "trust_remote_code" in (rej / "b.error.txt").read_text()
    assert (rej / "b.toml").exists() and (rej / "b.jsonl").exists()


def test_symlink_and_unsupported_refused_temp_names_ignored(model_home, daemon_proc, tmp_path):
    home = model_home
    daemon_proc()
    (tmp_path / "secret.jsonl").write_text('{"text": "x"}\n')
    (home / "inbox" / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    (home / "inbox" / "notes.docx").write_bytes(b"PK\x03\x04")
    (home / "inbox" / "big.jsonl.part").write_text('{"text": "still downloading"}\n')
    (home / "inbox" / ".hidden.jsonl").write_text('{"text": "x"}\n')
    (home / "inbox" / "shards").mkdir()
    (home / "inbox" / "shards" / "part-0.jsonl").write_text('{"text": "x"}\n')
    # options beside a dataset of their name: a YAML config, and a sidecar whose extension is upper-case
    (home / "inbox" / "cfg.yaml").write_text("max_steps: 3\n")
    (home / "inbox" / "up.TOML").write_text("bogus = 1\n")
    for name in ("cfg", "up"):
        (home / "inbox" / f"{name}.jsonl").write_text('{"text": "x"}\n')
    rej = home / "inbox" / "rejected"
    wait_until(lambda: all((rej / f"{n}.error.txt").exists() for n in ("link", "notes", "shards", "cfg", "up")), 30,
               what="refusals")
    cfg = (rej / "cfg.error.txt").read_text()  # not trained without the options it was dropped with
    assert "unsupported file type '.yaml'" in cfg and "cfg.jsonl of the same name was set aside" in cfg, cfg
    assert (rej / "cfg.yaml").exists() and (rej / "cfg.jsonl").exists() and "drop the files into" in cfg
    up = (rej / "up.error.txt").read_text()  # read as the sidecar it is, and named where it lies now
    assert f"{rej / 'up.TOML'}: unknown option 'bogus'" in up, up
    assert "symbolic link" in (rej / "link.error.txt").read_text()
    assert "is a folder" in (rej / "shards.error.txt").read_text()
    assert (rej / "shards" / "part-0.jsonl").read_text() == '{"text": "x"}\n'  # moved whole, nothing lost
    assert (tmp_path / "secret.jsonl").exists() and (rej / "link.jsonl").is_symlink()
    assert (home / "inbox" / "big.jsonl.part").exists() and (home / "inbox" / ".hidden.jsonl").exists()
    assert not _run_dirs(home)


def test_a_name_that_is_not_utf8_is_refused_and_kept(model_home, daemon_proc, tmp_path):
    home = model_home
    daemon_proc()
    name = b"caf\xe9.jsonl"
    src = bytes(tmp_path) + b"/" + name
    with open(src, "wb") as f:
        f.write(b'{"text": "x"}\n')
    os.rename(src, bytes(home / "inbox") + b"/" + name)
    rej = home / "inbox" / "rejected"
    err = wait_until(lambda: next(rej.glob("*.error.txt"), None) if rej.exists() else None, 30, what="refusal")
    assert "not valid UTF-8" in err.read_text() and "rename" in err.read_text()
    assert os.path.exists(bytes(rej) + b"/" + name)
    assert not _run_dirs(home) and not list((home / "runs").iterdir())


def test_a_broken_owner_toml_holds_drops_instead_of_rejecting_them(home, daemon_proc, tiny_model, tmp_path):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nlearning_rat = 1e-3\n')
    (home / "control" / "stop").write_text("")
    daemon_proc()
    (tmp_path / "good.jsonl").write_text('{"text": "x"}\n')
    drop(tmp_path / "good.jsonl", home / "inbox")
    status = wait_until(lambda: json.loads(overnight("status", "--json", home=home).stdout)["problem"], 30,
                        what="the problem in status")
    assert "learning_rat" in status and "learning_rate" in status
    assert "PROBLEM" in overnight("status", home=home).stdout
    assert (home / "inbox" / "good.jsonl").exists() and not list((home / "inbox" / "rejected").glob("*"))
    (tmp_path / "fixed.toml").write_text(f'base_model = "{tiny_model}"\n')
    os.replace(tmp_path / "fixed.toml", home / "overnight.toml")  # as an editor saves it: never half-written
    wait_until(lambda: _run_dirs(home), 30, what="the drop taken once the toml is fixed")


def test_an_owner_base_model_not_there_yet_holds_drops_and_the_queue(home, daemon_proc, tiny_model, tmp_path):
    """A base model on a disk not mounted yet: drops wait instead of being rejected one by one, queued runs wait
    instead of failing to load it, and status says so; the model appearing lets both go on."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmax_steps = 2\n')
    (home / "control" / "stop").write_text("")
    daemon_proc()
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    drop(tmp_path / "a.jsonl", home / "inbox")
    wait_until(lambda: _run_dirs(home), 30, what="a queued")
    mount = tmp_path / "mnt" / "model"
    (home / "overnight.toml").write_text(f'base_model = "{mount}"\nmax_steps = 2\n')
    (home / "control" / "stop").unlink()
    (tmp_path / "b.jsonl").write_text('{"text": "y"}\n')
    drop(tmp_path / "b.jsonl", home / "inbox")
    problem = wait_until(lambda: json.loads(overnight("status", "--json", home=home).stdout)["problem"], 30,
                         what="the problem in status")
    assert str(mount) in problem and "not found" in problem, problem
    out = overnight("status", home=home).stdout
    assert "queue held by the PROBLEM above" in out and " held " in out, out
    (home / "control" / "launch").write_text("")  # a control file answered: the daemon has passed its loop since
    wait_until(lambda: not (home / "control" / "launch").exists(), 30, what="a pass of the daemon")
    assert [r["state"] for r in json.loads(overnight("runs", "--json", home=home).stdout)] == ["queued"]
    assert (home / "inbox" / "b.jsonl").exists() and not list((home / "inbox" / "rejected").glob("*"))
    mount.parent.mkdir()
    mount.symlink_to(tiny_model)  # mounted
    wait_until(lambda: len(_run_dirs(home)) == 2, 60, what="b taken once the model is there")
    wait_until(lambda: {r["state"] for r in json.loads(overnight("runs", "--json", home=home).stdout)} ==
               {"completed"}, budget(300), what="both trained")


def test_control_is_answered_while_a_big_drop_is_validated(model_home, daemon_proc, tmp_path):
    """Validation streams the whole file off the daemon's loop: a control file is handled meanwhile."""
    home = model_home
    daemon_proc()
    big = tmp_path / "big.jsonl"
    line = json.dumps({"prompt": "p " * 20, "completion": "c " * 20}) + "\n"
    with open(big, "w") as f:
        f.write(line * 300_000)  # ~30 MB: tens of seconds of validation, rendering and hashing
    drop(big, home / "inbox")
    wait_until(lambda: "validating big.jsonl" in (home / "overnight.log").read_text(), 30, what="validation begun")
    (home / "control" / "launch").write_text("now")
    rej = home / "control" / "rejected"
    wait_until(lambda: rej.exists() and any(rej.glob("*.error.txt")), 30, what="the control file answered")
    assert not _run_dirs(home), "the control file waited for the validation to end"
    # every record is rendered and counted as the run will train it (~10k records/s on a busy 2-core machine)
    wait_until(lambda: _run_dirs(home), budget(300), what="the big drop accepted")


def test_two_datasets_with_one_name_are_refused_together(model_home, daemon_proc, tmp_path):
    home = model_home
    (home / "inbox" / "x.jsonl").write_text('{"text": "a"}\n')
    (home / "inbox" / "x.csv").write_text("text\nb\n")
    (home / "inbox" / "x.toml").write_text("lora_r = 4\n")
    daemon_proc()
    rej = home / "inbox" / "rejected"
    err = wait_until(lambda: (rej / "x.error.txt").exists() and rej / "x.error.txt", 30, what="refusal")
    assert "x.csv and x.jsonl" in err.read_text() and "rename" in err.read_text()
    assert sorted(p.name for p in rej.iterdir()) == ["x.csv", "x.error.txt", "x.jsonl", "x.toml"]
    assert not _run_dirs(home)


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_second_daemon_refuses_and_names_the_pid(home, daemon_proc):
    d = daemon_proc()
    res = overnight("daemon", home=home, timeout=30)
    assert res.returncode != 0 and f"PID {d.proc.pid}" in res.stderr
    # overnight.lock removed by hand: a second daemon is still refused, and the first writes the file again
    (home / "overnight.lock").unlink()
    res = overnight("daemon", home=home, timeout=30)
    assert res.returncode != 0 and "another overnight daemon already serves" in res.stderr
    assert f"PID {d.proc.pid}" in res.stderr and f"kill -TERM {d.proc.pid}" in res.stderr  # the kernel's lock says
    wait_until(lambda: f'"pid": {d.proc.pid}' in _text(home / "overnight.lock"), 30, what="the lock file again")
    assert f"daemon: running (PID {d.proc.pid}" in overnight("status", home=home, check=True).stdout
    assert d.stop(signal.SIGTERM) == 0
    # after kill -9 the lock is free again
    d2 = DaemonProcess(home)
    d2.proc.kill()
    d2.proc.wait()
    d3 = DaemonProcess(home)
    assert d3.stop() == 0


def test_a_db_removed_under_the_daemon_is_rebuilt_by_it(model_home, daemon_proc):
    """`rm overnight.db*` while the daemon runs: it notices, starts again (the same process, by exec) and rebuilds
    the DB from runs/, so the CLI lists the runs again; it wrote to a file nobody could read."""
    home = model_home
    d = daemon_proc()
    (home / "kept.jsonl").write_text('{"text": "hello"}\n')
    drop(home / "kept.jsonl", home / "inbox")
    wait_until(lambda: len(json.loads(overnight("runs", "--json", home=home).stdout or "[]")) == 1, 60,
               what="the run queued")
    for p in home.glob("overnight.db*"):
        p.unlink()
    wait_until(lambda: "removed or replaced while the daemon ran" in _text(home / "overnight.log"), 30,
               what="the removal noticed")
    runs = wait_until(lambda: json.loads(overnight("runs", "--json", home=home).stdout or "[]"), 60,
                      what="the DB rebuilt")
    assert [r["id"].split("-")[0] for r in runs] == ["kept"] and d.proc.poll() is None
    assert f"PID {d.proc.pid}" in overnight("status", home=home, check=True).stdout


def test_datasets_sharing_a_stem_alone_are_two_drops(model_home, daemon_proc, tmp_path):
    home = model_home
    (home / "inbox" / "data.jsonl").write_text('{"text": "a"}\n')
    (home / "inbox" / "data.csv").write_text("text\nb\n")
    daemon_proc()
    runs = wait_until(lambda: len(_run_dirs(home)) == 2 and _run_dirs(home), 30, what="two runs")
    files = sorted(next((r / "dataset").iterdir()).name for r in runs)
    assert files == ["data.csv", "data.jsonl"] and all(r.name.startswith("data-") for r in runs)
    assert len({r.name for r in runs}) == 2 and not list((home / "inbox" / "rejected").iterdir())


def test_a_name_too_long_is_rejected_with_a_short_error_file(model_home, daemon_proc, tmp_path):
    home = model_home
    name = "n" * 244 + ".jsonl"  # 250 bytes: a legal file name, too long to grow a date or .error.txt
    (tmp_path / name).write_text('{"text": "x"}\n')
    d = daemon_proc()
    drop(tmp_path / name, home / "inbox")
    rej = home / "inbox" / "rejected"
    err = wait_until(lambda: next(rej.glob("*.error.txt"), None) if rej.exists() else None, 30, what="refusal")
    assert len(err.name.encode()) <= 255 and err.name.startswith("nnnn")
    text = err.read_text()
    assert "too long" in text and "250 bytes" in text and "Fix: rename it to a shorter name" in text
    assert (rej / name).read_text() == '{"text": "x"}\n'
    log = (home / "overnight.log").read_text()
    assert not [sign for sign in BUG_SIGNS if sign in log] and not _run_dirs(home), log
    assert d.proc.poll() is None


def test_a_unicode_name_keeps_its_letters_in_the_run_id(model_home, daemon_proc, tmp_path):
    home = model_home
    daemon_proc()
    (tmp_path / "données-日本.jsonl").write_text('{"text": "x"}\n')
    drop(tmp_path / "données-日本.jsonl", home / "inbox")
    [run] = wait_until(lambda: _run_dirs(home), 30, what="a run folder")
    assert run.name.startswith("données-日本-")
    # the run id is accepted back in a control file, even typed decomposed (as macOS writes é)
    out = overnight("skip", run.name, "--wait", "60", home=home, check=True).stdout
    assert "applied" in out and "skipped" in out
    (home / "control" / "resume").write_text(run.name.replace("é", "e\u0301") + "\n")
    wait_until(lambda: _state(home, run.name) == "queued", 15, what="queued again by control/resume")
    assert not (home / "control" / "rejected").exists() or not list((home / "control" / "rejected").iterdir())


def _state(home, rid):
    from daemon.core.queries import Reader
    return Reader(home / "overnight.db").run(rid)["state"]


def test_a_folder_that_is_not_a_model_is_rejected_with_the_fix(home, daemon_proc, tmp_path):
    (home / "control" / "stop").write_text("")
    (home / "inbox" / "m.toml").write_text('base_model = "/etc"\n')
    (home / "inbox" / "m.jsonl").write_text('{"text": "x"}\n')
    daemon_proc()
    err = wait_until(lambda: (home / "inbox" / "rejected" / "m.error.txt").exists()
                     and home / "inbox" / "rejected" / "m.error.txt", 30, what="rejection")
    text = err.read_text()
    assert "/etc has no config.json" in text and "Fix: point base_model at the folder that holds config.json" in text
