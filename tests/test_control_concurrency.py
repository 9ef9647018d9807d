"""Many CLI commands at once, through the real CLI and the real daemon: every command is applied exactly once, and
each CLI prints its own acknowledgement, never another command's. Without a daemon the commands wait as files of
their own and are applied, in the order written, when one starts.

The queue is held (an untargeted control/stop), so the dropped runs stay queued: the commands act on real runs
without any training."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.core import control
from daemon.core.queries import Reader
from tests.conftest import REPO, budget, drop, wait_until
from tests.test_control_e2e import state

N = 6


def _queued_runs(home: Path, tiny_model: Path, tmp_path: Path, daemon_proc) -> list[str]:
    """N runs queued behind a held queue; their ids, in drop order."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmax_steps = 1\nprobe_count = 0\n'
                                         f'eval_fraction = 0.0\n')
    (home / "control" / "stop").write_text("")
    d = daemon_proc()
    rows = "\n".join(json.dumps({"prompt": f"say {w}\n", "completion": w}) for w in ("a", "b", "c", "d")) + "\n"
    for i in range(N):
        (tmp_path / f"c{i}.jsonl").write_text(rows)
        drop(tmp_path / f"c{i}.jsonl", home / "inbox")
    wait_until(lambda: all(state(home, f"c{i}") == "queued" for i in range(N)), budget(60), what="runs queued")
    return d, [_run(home, f"c{i}")["id"] for i in range(N)]


def _run(home: Path, name: str) -> dict:
    r = Reader(home / "overnight.db")
    try:
        return next(x for x in r.runs() if x["name"] == name)
    finally:
        r.close()


def at_once(home: Path, commands: list[list[str]], wait: float) -> list[subprocess.CompletedProcess]:
    """Start every CLI command before any has finished; their outputs, in the same order."""
    procs = [subprocess.Popen([sys.executable, "-m", "daemon", *c, "--home", str(home), "--wait", str(wait)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    out = []
    for c, p in zip(commands, procs):
        stdout, stderr = p.communicate(timeout=wait + budget(120))
        out.append(subprocess.CompletedProcess(c, p.returncode, stdout, stderr))
    return out


def answers(res: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in res.stdout.splitlines() if ln.startswith(("applied:", "rejected:"))]


@pytest.mark.e2e
def test_commands_sent_at_once_are_each_applied_once_and_each_cli_prints_its_own_answer(home, tiny_model, tmp_path,
                                                                                       daemon_proc):
    _, ids = _queued_runs(home, tiny_model, tmp_path, daemon_proc)
    wait = budget(60)

    results = at_once(home, [["priority", rid, str(10 + i)] for i, rid in enumerate(ids)], wait)
    for i, (rid, res) in enumerate(zip(ids, results)):
        assert res.returncode == 0, res.stderr
        assert answers(res) == [f"applied: priority {rid}: 0 -> {10 + i}"], res.stdout
    assert [_run(home, f"c{i}")["priority"] for i in range(N)] == [10 + i for i in range(N)]

    half = N // 2
    results = at_once(home, [["pause", rid] for rid in ids[:half]] + [["stop", rid] for rid in ids[half:]], wait)
    for rid, res in zip(ids[:half], results[:half]):
        assert answers(res) == [f"applied: pause {rid}: queued; the queue passes it by while control/pause names "
                                f"it (overnight resume {rid} lets it start)"], res.stdout
    for rid, res in zip(ids[half:], results[half:]):
        assert answers(res) == [f"applied: stop {rid}: stopped (it was queued)"], res.stdout
    assert set((home / "control" / "pause").read_text().split()) == set(ids[:half])
    assert [state(home, f"c{i}") for i in range(N)] == ["queued"] * half + ["stopped"] * (N - half)

    results = at_once(home, [["resume", rid] for rid in ids], wait)  # un-pause three, queue three again
    for rid, res in zip(ids, results):
        assert len(answers(res)) == 1 and answers(res)[0].startswith(f"applied: resume {rid}: "), res.stdout
    assert not (home / "control" / "pause").exists() and [state(home, f"c{i}") for i in range(N)] == ["queued"] * N

    r = Reader(home / "overnight.db")
    events = [e for e in r.control_events(1000) if e["command_id"]]
    r.close()
    assert len(events) == 3 * N and len({e["command_id"] for e in events}) == 3 * N  # once each
    done = [p.name.split(".", 1) for p in (home / "control" / "done").iterdir()]
    assert len([cid for _, *cid in done if cid and control.COMMAND_ID.fullmatch(cid[0])]) == 3 * N  # kept, with ids


@pytest.mark.e2e
def test_commands_written_without_a_daemon_are_all_applied_in_order_when_one_starts(home, tiny_model, tmp_path,
                                                                                     daemon_proc):
    d, ids = _queued_runs(home, tiny_model, tmp_path, daemon_proc)
    assert d.stop() == 0
    results = at_once(home, [["priority", rid, str(20 + i)] for i, rid in enumerate(ids)], 0)
    results += at_once(home, [["priority", ids[0], "1"]], 0) + at_once(home, [["priority", ids[0], "2"]], 0)
    for res in results:
        assert res.returncode == 0 and "no daemon is running: it applies this when it starts" in res.stdout
    assert len(list((home / "control").glob("priority.*"))) == N + 2  # none overwrote another

    daemon_proc()
    wait_until(lambda: not list((home / "control").glob("priority.*")), budget(30), what="every command applied")
    assert [_run(home, f"c{i}")["priority"] for i in range(1, N)] == [20 + i for i in range(1, N)]
    assert _run(home, "c0")["priority"] == 2  # its three commands applied in the order written: 20, 1, 2
    r = Reader(home / "overnight.db")
    said = [e["message"] for e in reversed(r.control_events(1000)) if e["target"] == ids[0]]
    r.close()
    assert said == [f"priority {ids[0]}: 0 -> 20", f"priority {ids[0]}: 20 -> 1", f"priority {ids[0]}: 1 -> 2"]
