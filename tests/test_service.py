"""`overnight service print|install|uninstall`: the systemd unit that starts a home's daemon at boot."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def service(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`overnight service …` as a user types it, with extra environment variables."""
    return subprocess.run([sys.executable, "-m", "daemon", "service", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, **(env or {})})


def unit_text(stdout: str) -> str:
    return stdout.split("\n", 1)[1]  # the first line names where install would write it


def test_print_shows_a_unit_that_runs_the_daemon_of_this_home(home):
    res = service("print", "--home", str(home))
    assert res.returncode == 0, res.stderr
    first, text = res.stdout.split("\n", 1)
    name = re.search(r"(overnight-home-[0-9a-f]{8}\.service)$", first).group(1)
    assert first == f"# /etc/systemd/system/{name}"
    root = home.resolve()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    program = exec_start.split()[0].removeprefix("ExecStart=")
    assert os.path.isabs(program) and Path(program).parent == Path(os.path.abspath(sys.executable)).parent
    assert exec_start.endswith(f"daemon --home {root}")
    for line in ("Restart=on-failure", "KillSignal=SIGTERM", "KillMode=mixed", "TimeoutStopSec=600",
                 f"WorkingDirectory={root}", f'Environment="OVERNIGHT_HOME={root}"', "WantedBy=multi-user.target"):
        assert line in text.splitlines(), line
    assert f'Environment="PATH={Path(os.path.abspath(sys.executable)).parent}:' in text
    # another home gets another unit name
    other = service("print", "--home", str(home / "inbox")).stdout.split("\n", 1)[0]
    assert other != first and "overnight-inbox-" in other


def test_systemd_accepts_the_unit(home, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    for flags in ((), ("--user",)):
        res = service("print", "--home", str(home), *flags)
        name = res.stdout.split("\n", 1)[0].rsplit("/", 1)[1]
        path = tmp_path / name
        path.write_text(res.stdout)
        check = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
        if "Failed to initialize manager" in check.stderr:
            pytest.skip(f"systemd-analyze cannot run here: {check.stderr.strip()}")
        assert check.returncode == 0 and not check.stderr.strip(), check.stderr


def test_odd_home_names_are_quoted_for_systemd(tmp_path):
    odd = tmp_path / "my runs 100%"
    text = unit_text(service("print", "--home", str(odd), "--user").stdout)
    assert f'--home "{str(odd).replace("%", "%%")}"' in text
    assert re.search(r"overnight-my-runs-100-[0-9a-f]{8}\.service", service("print", "--home", str(odd)).stdout)


def test_install_and_uninstall_a_user_unit(home, tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    res = service("install", "--home", str(home), "--user", env=env)
    assert res.returncode == 0, res.stderr
    units = list((tmp_path / "config" / "systemd" / "user").glob("overnight-*.service"))
    assert len(units) == 1
    unit = units[0]
    assert unit.read_text() == unit_text(service("print", "--home", str(home), "--user", env=env).stdout)
    assert "WantedBy=default.target" in unit.read_text() and "User=" not in unit.read_text()
    lines = res.stdout.splitlines()
    assert f"wrote {unit}" in lines
    for cmd in ("systemctl --user daemon-reload", f"systemctl --user enable --now {unit.name}",
                f"journalctl --user -u {unit.name} -f"):
        assert f"  {cmd}" in lines, res.stdout
    assert "updated" in service("install", "--home", str(home), "--user", env=env).stdout  # idempotent

    res = service("uninstall", "--home", str(home), "--user", env=env)
    assert res.returncode == 0, res.stderr
    assert not unit.exists() and "systemctl --user daemon-reload" in res.stdout
    res = service("uninstall", "--home", str(home), "--user", env=env)
    assert res.returncode == 1 and "nothing to remove" in res.stderr


def test_a_unit_file_overnight_did_not_write_is_left_alone(home, tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    name = service("print", "--home", str(home), "--user", env=env).stdout.split("\n", 1)[0].rsplit("/", 1)[1]
    theirs = tmp_path / "config" / "systemd" / "user" / name
    theirs.parent.mkdir(parents=True)
    theirs.write_text("[Service]\nExecStart=/bin/true\n")
    for cmd in ("install", "uninstall"):
        res = service(cmd, "--home", str(home), "--user", env=env)
        assert res.returncode == 1 and "not written by overnight" in res.stderr
    assert theirs.read_text() == "[Service]\nExecStart=/bin/true\n"
