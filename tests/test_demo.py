"""`overnight demo --no-tui`: the README's first command, on a fresh home, as a user runs it."""
from __future__ import annotations

import json
import re
import time

import pytest

from daemon.core.home import Home, daemon_alive
from tests.conftest import budget, overnight

STEPS = 20  # enough for the loss to fall clearly at the demo's learning rate; the 200-step default takes minutes


@pytest.mark.e2e
def test_demo_builds_the_model_drops_the_task_trains_and_reports_probes(tmp_path):
    home = tmp_path / "demo-home"  # does not exist yet: the demo makes its own home
    t0 = time.monotonic()
    # no --no-tui: with no terminal to draw on (stdout is a pipe here) the demo prints its progress lines instead
    res = overnight("demo", "--steps", str(STEPS), home=home, timeout=budget(240))
    took = time.monotonic() - t0
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    lines = out.splitlines()
    root = home.resolve()
    assert lines[0] == f"demo home: {root}"
    assert lines.pop(1).endswith("showing progress lines instead (--no-tui)"), lines

    model = root / ".overnight" / "models" / "tiny-qwen2"
    assert re.fullmatch(rf"tiny model ready: {re.escape(str(model))} \(\d+\.\d s\)", lines[1]), lines[1]
    assert json.loads((model / "config.json").read_text())["model_type"] == "qwen2"

    dropped = re.fullmatch(rf"dropped (reverse-\d{{6}})\.jsonl \(\+ \1\.toml, \1\.probes\.jsonl\) into "
                           rf"{re.escape(str(root / 'inbox'))}", lines[2])
    assert dropped, lines[2]
    name = dropped.group(1)
    assert not list((root / "inbox").glob(f"{name}*")), "the daemon took the drop out of the inbox"

    progress = [ln for ln in lines if re.match(rf"{name}-\d{{8}}-\d{{6}}: ", ln)]
    final = progress[-1]
    done = re.fullmatch(rf"({name}-\d{{8}}-\d{{6}}): completed  step {STEPS}/{STEPS}  loss (\S+)  "
                        r"probes: (\d+)/8 learned, (\d+) snapshots?, latest step (\d+)", final)
    assert done, final
    run_id, final_loss = done.group(1), float(done.group(2))
    # probes answered at the start, the end and between, however busy the machine (never fewer than 5 snapshots)
    assert int(done.group(4)) >= 5 and int(done.group(5)) == STEPS, final
    assert any(" training  step " in ln for ln in progress), progress

    run_dir = root / "runs" / run_id
    first_loss = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert final_loss < first_loss - 0.5, f"the loss did not fall: {first_loss} -> {final_loss}"
    shown = [float(m) for m in re.findall(r"  loss (\d\S*)  ", "\n".join(progress))]
    assert shown[0] >= shown[-1], shown

    assert f"{run_id} completed. Adapter: {run_dir / 'adapter'}" in lines
    assert f"See what it learned: overnight evolution {run_id} --home {root}" in lines
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    # the sidecar the demo dropped set the step count the user asked for
    assert json.loads((run_dir / "config.json").read_text())["options"]["max_steps"] == STEPS
    assert not daemon_alive(Home(root)), "the demo left its daemon running"
    print(f"demo --steps {STEPS}: {took:.1f} s")


def test_demo_refuses_a_step_count_below_one(tmp_path):
    res = overnight("demo", "--no-tui", "--steps", "0", home=tmp_path / "h")
    assert res.returncode == 2 and "--steps" in res.stderr
    assert not (tmp_path / "h").exists(), "nothing is built or dropped for a refused command"


def test_the_demo_never_takes_overnight_home_for_its_home():
    """$OVERNIGHT_HOME names the user's real home: the demo would drop its task there and train in it."""
    from click.testing import CliRunner

    from daemon.client.cli import main
    demo = main.commands["demo"]
    home = next(p for p in demo.params if p.name == "home")
    assert home.default == "overnight-demo" and home.envvar is None
    assert "$OVERNIGHT_HOME is not used" in CliRunner().invoke(main, ["demo", "--help"]).output
