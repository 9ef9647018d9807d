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
    missing = service("print", "--home", str(odd), "--user")  # a mistyped --home: no unit for it
    assert missing.returncode == 1 and "no such folder" in missing.stderr
    odd.mkdir()
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


# The system unit folder is a constant (daemon/client/service.py SYSTEM_DIR = /etc/systemd/system). These tests run the
# same CLI with only that constant moved to a folder of the test's, so nothing is ever written into the real /etc.
_MOVED_SYSTEM_DIR = ("import sys; from pathlib import Path; import daemon.client.service as s; "
                     "s.SYSTEM_DIR = Path(sys.argv.pop(1)); from daemon.client.cli import main; main(prog_name='overnight')")


def system_service(unit_dir: Path, *args: str, env: dict[str, str] | None = None,
                   **popen: object) -> subprocess.CompletedProcess:
    """`overnight service …` without --user, its system unit folder being `unit_dir`."""
    return subprocess.run([sys.executable, "-c", _MOVED_SYSTEM_DIR, str(unit_dir), "service", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, **(env or {})},
                          **popen)


def test_install_and_uninstall_a_system_unit(home, tmp_path):
    import pwd

    units = tmp_path / "etc-systemd-system"
    units.mkdir()
    res = system_service(units, "install", "--home", str(home))
    assert res.returncode == 0, res.stderr
    [unit] = units.glob("overnight-*.service")
    assert not (Path("/etc/systemd/system") / unit.name).exists()
    text = unit.read_text()
    # what install writes is what print shows (print names the real folder: the seam moved only the folder)
    printed = service("print", "--home", str(home)).stdout
    assert printed.split("\n", 1)[0] == f"# /etc/systemd/system/{unit.name}" and text == unit_text(printed)
    lines = text.splitlines()
    for line in ("WantedBy=multi-user.target", "Wants=network-online.target", "After=network-online.target",
                 f"# Remove it with: overnight service uninstall --home {home.resolve()}"):
        assert line in lines, line
    uid = home.stat().st_uid
    users = [ln for ln in lines if ln.startswith("User=")]
    # the daemon runs as the home's owner, never as root because root installed it
    assert users == ([] if uid == 0 else [f"User={pwd.getpwuid(uid).pw_name}"])

    sudo = "" if os.geteuid() == 0 else "sudo "
    assert res.stdout.splitlines() == [f"wrote {unit}", "Enable and start it (and follow its log):",
                                       f"  {sudo}systemctl daemon-reload", f"  {sudo}systemctl enable --now {unit.name}",
                                       f"  {sudo}journalctl -u {unit.name} -f"]

    if os.geteuid() == 0:  # root installing for a home someone else owns (the usual sudo install)
        nobody = pwd.getpwnam("nobody")
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        res = system_service(units, "install", "--home", str(home))
        assert res.returncode == 0 and res.stdout.startswith(f"updated {unit}\n"), res.stdout + res.stderr
        assert [ln for ln in unit.read_text().splitlines() if ln.startswith("User=")] == ["User=nobody"]

    # the user-unit uninstall points at the system unit it cannot see
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    res = system_service(units, "uninstall", "--home", str(home), "--user", env=env)
    assert res.returncode == 1 and f"There is one at {unit}: drop --user." in res.stderr
    res = system_service(units, "uninstall", "--home", str(home))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"removed {unit}", f"Then run: {sudo}systemctl daemon-reload"]
    assert not unit.exists()


def test_install_a_system_unit_without_permission_says_how(home, tmp_path):
    """A user who may not write the system unit folder gets one line naming the fix, exit 1, and nothing written."""
    units = tmp_path / "etc-systemd-system"
    units.mkdir()
    root = os.geteuid() == 0
    if root:  # root writes through any mode bits; an immutable folder refuses even root (EPERM)
        locked = subprocess.run(["chattr", "+i", str(units)], capture_output=True, text=True)
        if locked.returncode != 0:
            pytest.skip(f"running as root and cannot make a folder immutable here: {locked.stderr.strip()}")
    else:
        units.chmod(0o555)
    try:
        res = system_service(units, "install", "--home", str(home))
        left = list(units.iterdir())
    finally:
        subprocess.run(["chattr", "-i", str(units)], check=True) if root else units.chmod(0o755)
    name = service("print", "--home", str(home)).stdout.split("\n", 1)[0].rsplit("/", 1)[1]
    program = Path(os.path.abspath(sys.executable)).parent / "overnight"
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr == (f"Error: cannot write {units / name}: permission denied. Fix: install the system unit as "
                          f"root (sudo {program} service install --home {home.resolve()}), or a user unit with "
                          f"--user.\n")
    assert res.stdout == "" and left == []


def test_install_refuses_a_home_that_does_not_exist(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    home = tmp_path / "typo" / "home"
    res = service("install", "--home", str(home), "--user", env=env)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"the home {home} does not exist: no unit was written" in res.stderr and f"mkdir -p {home}" in res.stderr
    assert not (tmp_path / "config").exists() and not home.parent.exists()  # nothing written, nothing created


def test_the_servers_unit_stops_as_a_server_not_as_the_daemon(home):
    """The HTTP server has no job to checkpoint: SIGTERM to it and its dashboard processes, and a short timeout."""
    text = unit_text(service("print", "--serve", "--home", str(home)).stdout)
    lines = text.splitlines()
    assert "checkpoints" not in text and "KillMode=control-group" in lines
    assert "TimeoutStopSec=15" in lines and "TimeoutStopSec=600" not in lines
    assert "KillMode=mixed" in unit_text(service("print", "--home", str(home)).stdout).splitlines()
