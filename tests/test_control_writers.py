"""Control files written slowly, by hand, by a real shell: each is applied once it is complete, as what it says
in the end, never first as the file's empty beginning ("every run"). The Controller with stub trainers and a real
state DB (tests/test_controller.py's Bench): the writer is a real process, the passes run every 0.1 s meanwhile."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from daemon.core import control
from tests.conftest import budget
from tests.test_controller import Bench, messages

TRICKLE_S = 2.0  # longer than the 0.3 s settle time of a control file


@pytest.fixture
def b(tmp_path: Path) -> Bench:
    bench = Bench(tmp_path / "home")
    for adapter in ("adapter", "adapter2"):  # an activation checks the adapter is there
        (tmp_path / adapter).mkdir()
        (tmp_path / adapter / "adapter_config.json").write_text("{}")
    bench.store.add_model({"name": "m", "version": 1, "run_id": "m-1", "base_model": "tiny",
                           "adapter_path": str(tmp_path / "adapter"), "metrics": {}}, activate=True)
    bench.store.add_model({"name": "m", "version": 2, "run_id": "m-2", "base_model": "tiny",
                           "adapter_path": str(tmp_path / "adapter2"), "metrics": {}}, activate=False)
    yield bench
    bench.store.close()


def trickle(path: Path, text: str) -> subprocess.Popen:
    """`( sleep 1; printf FIRST-HALF; sleep 1; printf REST ) > PATH`: the shell creates the file empty at once."""
    half = len(text) // 2
    script = (f"sleep {TRICKLE_S / 2}; printf '%s' '{text[:half]}'; sleep {TRICKLE_S / 2}; "
              f"printf '%s' '{text[half:]}'")
    return subprocess.Popen(["bash", "-c", f"( {script} ) > '{path}'"])


def passes_while(b: Bench, writer: subprocess.Popen) -> list[dict]:
    """Passes every 0.1 s while the writer writes, then until the command is answered (and three more)."""
    events = []
    while writer.poll() is None:
        events += b.step()
        time.sleep(0.1)
    end = time.monotonic() + budget(15)
    while not events and time.monotonic() < end:
        events += b.step()
        time.sleep(0.1)
    for _ in range(3):
        events += b.step()
    return events


@pytest.mark.parametrize("kind", ["stop", "skip", "pause"])
def test_a_slowly_written_command_naming_a_run_acts_on_that_run_only(b: Bench, kind: str) -> None:
    q2, q3 = b.running("q2-1"), b.running("q3-1")
    said = messages(passes_while(b, trickle(b.home.control / kind, "q3-1\n")))
    assert (q2.calls, q3.calls) == ([], ["pause" if kind == "pause" else f"request_stop {kind}"]), said
    assert not any(s.startswith("rejected") for s in said), said


def test_a_slowly_written_priority_applies_every_line(b: Bench) -> None:
    b.run("x-1")
    b.run("y-1")
    said = messages(passes_while(b, trickle(b.home.control / "priority", "x-1 5\ny-1 7\n")))
    assert said == ["applied: priority x-1: 0 -> 5", "applied: priority y-1: 0 -> 7"]


def test_a_slowly_written_resume_queues_its_run_again(b: Bench) -> None:
    b.run("s-1", "stopped")
    said = messages(passes_while(b, trickle(b.home.control / "resume", "s-1\n")))
    assert said == ["applied: resume s-1: queued again"] and b.state("s-1") == "queued"


@pytest.mark.parametrize("kind", ["activate", "delete"])
def test_a_slowly_written_registry_command_is_read_whole(b: Bench, kind: str) -> None:
    said = messages(passes_while(b, trickle(b.home.control / kind, "m 2\n")))
    assert len(said) == 1 and said[0].startswith(f"applied: {kind} m v2"), said


def test_an_id_file_written_by_the_cli_needs_no_settling(b: Bench) -> None:
    t = b.running("a-1")
    control.send(b.home, "skip", "a-1")
    assert messages(b.step()) == ["applied: skip a-1: checkpointing at the next step, then skipped"]
    assert t.requested == "skip"
