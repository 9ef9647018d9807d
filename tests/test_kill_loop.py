"""kill -9 at random moments: a few trials of bench/kill_loop.py in CI (the full 20-kill loops are the bench's), and
the rule that bounds a crash loop without failing a run that keeps making progress."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import kill_loop
from daemon.engine.endstate import MAX_ATTEMPTS
from daemon.engine.scheduler import Daemon
from daemon.engine.supervisor import Supervisor


def _daemon_with(run: dict) -> Supervisor:
    d = Supervisor.__new__(Supervisor)  # only _attempts is exercised: it reads the run's row and its folder
    d.store = SimpleNamespace(get_run=lambda _run_id: run)
    return d


def _checkpoint(run_dir: Path, step: int) -> None:
    folder = run_dir / "checkpoints" / f"step-{step}"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")


def test_only_attempts_that_made_no_new_checkpoint_count(tmp_path: Path) -> None:
    run = {"run_dir": str(tmp_path), "resume_from": None, "attempts": 2}
    d = _daemon_with(run)
    assert d._attempts("r") == 2  # killed twice before its first checkpoint: a crash loop so far
    _checkpoint(tmp_path, 5)
    assert d._attempts("r") == 0  # this attempt checkpointed: whatever ended it, the count starts again
    run["resume_from"] = "step-5"
    assert d._attempts("r") == 2  # resumed from step-5 and made no newer one
    _checkpoint(tmp_path, 7)  # e.g. the checkpoint a trainer writes when its daemon goes away
    assert d._attempts("r") == 0
    run.update(resume_from="step-7", attempts=MAX_ATTEMPTS)
    assert d._attempts("r") == MAX_ATTEMPTS  # bounded: the next kill without progress fails the run


@pytest.mark.e2e
def test_kills_of_the_daemon_the_trainer_and_both_lose_nothing(tmp_path: Path, tiny_model: Path,
                                                              reference_run: kill_loop.Reference) -> None:
    """One kill of each kind, the last as the trainer ends (its result.json written, the process not gone yet).
    Each of these ended the run failed before: the trainer kill (the run's third start after a daemon kill and a
    kill of both: 3 attempts in all), and one after a stop's result.json of an earlier attempt."""
    home = kill_loop.Home(tmp_path / "home", tiny_model)
    ref = reference_run
    steps = len(ref.losses)  # its drop, under another name: each kill lands within 2 checkpoints of the last
    plan = [("daemon", "training"), ("both", "training"), ("trainer", "saving"), ("trainer", "ending")]
    lines: list[str] = []
    try:
        home.start_daemon()
        t = kill_loop.trial(home, "mixed", len(plan), random.Random(12), steps, ref, plan=plan, say=lines.append)
        run_dir = Path(home.run(t.name)["run_dir"])
    finally:
        home.stop_daemon()
        for pid in home.trainers():
            os.kill(pid, signal.SIGKILL)
    print("\n".join(lines))
    assert [k.target for k in t.kills] == ["daemon", "both", "trainer", "trainer"], lines
    assert t.violations == [], lines
    assert t.state == "completed" and t.steps == steps and t.max_trainers == 1
    assert t.trainer_starts == 4  # the first start and one after each kill but the last (the run was done)

    # A trainer resumed from the run's last step (its daemon was killed before it saw the run end) finishes from
    # that checkpoint: no step past max_steps, the same adapter. (This run's folder: the reference's is shared.)
    before = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "adapter" / "adapter_model.safetensors").unlink()
    proc = subprocess.run([sys.executable, "-m", "daemon.trainer", str(run_dir), "--ignore-stdin"],
                          cwd=kill_loop.REPO, env=kill_loop.env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"step-{steps} is the run's last step: nothing left to train" in proc.stdout
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert kill_loop.read_json(run_dir / "result.json")["outcome"] == "completed"
    assert kill_loop.same_adapter(run_dir / "adapter", ref.run_dir / "adapter")


def test_a_broken_overnight_toml_keeps_the_last_good_owner_options(tmp_path: Path) -> None:
    from daemon.core.home import Home
    d = Daemon.__new__(Daemon)
    d.home, d._owner = Home(tmp_path), None
    d.home.toml.write_text('hook_timeout_s = 5\n[hooks]\non_fail = ["true"]\n')
    assert d._owner_options()["hooks"] == {"on_fail": ["true"]}
    d.home.toml.write_text('hook_timeout_s = 5\n[hooks\non_fail = ["true"]\n')  # an edit half done
    assert d._owner_options()["hooks"] == {"on_fail": ["true"]}  # hooks and notifications go on as they were
