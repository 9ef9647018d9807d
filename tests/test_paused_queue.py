"""A queued run that control/pause names is passed by: the runs behind it train, it reads `held` in status, and
`overnight resume RUN` lets it start (before, it took the slot only to halt in it, and the queue waited silently)."""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import overnight
from tests.conftest_trainer import reversal_records

RECORDS = "".join(json.dumps(r) + "\n" for r in reversal_records(12, seed=5))


def _runs(home: Path) -> dict[str, dict]:
    return {r["name"]: r for r in json.loads(overnight("runs", "--json", home=home, check=True).stdout)}


def test_a_paused_queued_run_is_passed_by_until_resumed(home: Path, tiny_model: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmax_steps = 2\nprobe_count = 0\n')
    (home / "control" / "stop").write_text("")  # hold the queue while both drops are taken
    for name in ("first", "second"):
        (home / "inbox" / f"{name}.jsonl").write_text(RECORDS)
    overnight("daemon", "--once", "--settle", "0.1", home=home, timeout=120, check=True)
    first = _runs(home)["first"]["id"]
    overnight("pause", first, "--wait", "0", home=home, check=True)
    (home / "control" / "stop").unlink()

    overnight("daemon", "--once", "--settle", "0.1", home=home, timeout=300, check=True)  # ends: first waits
    runs = _runs(home)
    assert (runs["first"]["state"], runs["second"]["state"]) == ("queued", "completed")
    status = overnight("status", home=home, check=True).stdout
    row = next(line for line in status.splitlines() if line.startswith(first))
    assert row.split()[1] == "held", status
    assert f"{first} held by control/pause (overnight resume {first} lets it start)" in status
    assert json.loads(overnight("status", "--json", home=home, check=True).stdout)["paused"] == [first]

    overnight("resume", first, "--wait", "0", home=home, check=True)
    overnight("daemon", "--once", "--settle", "0.1", home=home, timeout=300, check=True)
    assert _runs(home)["first"]["state"] == "completed"


def test_a_pause_of_every_run_starts_nothing_new(home: Path, tiny_model: Path) -> None:
    """`overnight pause` alone: no trainer starts (before, each queued run loaded its model only to halt at its
    first step: GPU memory taken while the owner had paused the box), and the queued runs read `held`."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\nmax_steps = 2\nprobe_count = 0\n')
    overnight("pause", "--wait", "0", home=home, check=True)
    (home / "inbox" / "first.jsonl").write_text(RECORDS)
    overnight("daemon", "--once", "--settle", "0.1", home=home, timeout=120, check=True)  # ends: nothing to start
    run = _runs(home)["first"]
    assert run["state"] == "queued" and run["started"] is None
    assert "starting trainer" not in (Path(run["run_dir"]) / "console.log").read_text()
    status = overnight("status", home=home, check=True).stdout
    assert next(line for line in status.splitlines() if line.startswith(run["id"])).split()[1] == "held", status

    overnight("resume", "--wait", "0", home=home, check=True)
    overnight("daemon", "--once", "--settle", "0.1", home=home, timeout=300, check=True)
    assert _runs(home)["first"]["state"] == "completed"
