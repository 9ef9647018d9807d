"""`overnight service install|print|uninstall`: a systemd unit that starts one home's daemon (or, with --serve, its
HTTP server, `overnight serve`) at boot.

One unit per home, named after it: `overnight-<home folder name>-<8 hex of the home's path hash>.service`, so two
homes (even two called `train`) each get their own. `--user` writes a user unit into
`$XDG_CONFIG_HOME/systemd/user/` (default `~/.config/systemd/user/`); without it a system unit goes into
`/etc/systemd/system/` (root needed) and runs as the owner of the home folder.
"""
from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from daemon.core.atomic import write_text
from daemon.core.errors import ServiceError

MARKER = "# Written by `overnight service install`"
STOP_TIMEOUT_S = 600  # SIGTERM → the daemon checkpoints the running job (it waits up to 330 s for the trainer)
SERVE_STOP_TIMEOUT_S = 15  # SIGTERM → the server gives open log streams 3 s (GRACE_S in daemon/web/server.py)
SYSTEM_DIR = Path("/etc/systemd/system")
# Carried into the unit when set where `install` runs: where the base models are found.
CARRIED_ENV = ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class Unit:
    """The unit of one home: its name, where it lives and its text."""

    home: Path
    user: bool
    name: str
    path: Path
    text: str
    serve: bool = False  # the unit of `overnight serve`, not the daemon's


def unit_name(home: Path, serve: bool = False) -> str:
    """`overnight-<home folder name>-<hash>.service` (`overnight-serve-…` for the server): readable, and distinct for
    every home path."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", home.name).strip("-.")[:40] or "home"
    return f"overnight-{'serve-' if serve else ''}{base}-{hashlib.sha256(str(home).encode()).hexdigest()[:8]}.service"


def unit_dir(user: bool) -> Path:
    """Where systemd reads the unit: the user's unit folder with --user, else /etc/systemd/system."""
    if not user:
        return SYSTEM_DIR
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def daemon_command(home: Path, verb: str = "daemon") -> list[str]:
    """`overnight daemon --home H` (or another verb: serve) with this environment's console script (else its
    python -m daemon)."""
    bindir = Path(os.path.abspath(sys.executable)).parent  # not resolved: a venv's python is a symlink
    script = bindir / "overnight"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), verb, "--home", str(home)]
    return [os.path.abspath(sys.executable), "-m", "daemon", verb, "--home", str(home)]


def _exec_arg(arg: str) -> str:
    """One ExecStart= word: % and $ escaped for systemd, quoted when it holds spaces or quotes."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./$-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _env_line(key: str, value: str) -> str:
    value = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'Environment="{key}={value}"'


def _home_owner(home: Path) -> str | None:
    """The user owning the home folder (a system unit runs the daemon as them), None for root."""
    try:
        uid = home.stat().st_uid
        return None if uid == 0 else pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return None


def render(home: Path, user: bool, serve: bool = False) -> str:
    """The unit file's text for `home` (an absolute path); `serve`: the unit of its HTTP server."""
    bindir = Path(os.path.abspath(sys.executable)).parent
    path_var = ":".join(dict.fromkeys([str(bindir), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                                        "/sbin", "/bin"]))
    flag = (" --user" if user else "") + (" --serve" if serve else "")
    verb = "serve" if serve else "daemon"
    unit = [
        f"{MARKER} for the home {home}.",
        f"# It starts `overnight {verb} --home {home}` at boot and restarts it when it fails.",
        f"# Remove it with: overnight service uninstall --home {home}{flag}",
        "[Unit]",
        f"Description=overnight {'HTTP server (API and dashboard)' if serve else 'training daemon'} for {home}"
        .replace("%", "%%"),
    ]
    if not user:  # a user manager has no network-online.target of its own
        unit += ["Wants=network-online.target", "After=network-online.target"]
    service = ["", "[Service]", "Type=simple"]
    owner = None if user else _home_owner(home)
    if owner:
        service.append(f"User={owner}")
    service += [
        f"WorkingDirectory={str(home).replace('%', '%%')}",
        _env_line("OVERNIGHT_HOME", str(home)),
        _env_line("PATH", path_var),
        "Environment=PYTHONUNBUFFERED=1",
        *(_env_line(k, os.environ[k]) for k in CARRIED_ENV if os.environ.get(k)),
        "ExecStart=" + " ".join(_exec_arg(a) for a in daemon_command(home, verb)),
        "Restart=on-failure",
        "RestartSec=10",
        *_stopping(serve),
        "",
        "[Install]",
        f"WantedBy={'default.target' if user else 'multi-user.target'}",
    ]
    return "\n".join(unit + service) + "\n"


def _stopping(serve: bool) -> list[str]:
    """How systemd stops the unit: the daemon alone gets SIGTERM and time to checkpoint its job (its trainer is left
    to it); the server and its dashboard processes all get SIGTERM and a few seconds (nothing of theirs to save)."""
    if serve:
        return ["# SIGTERM to the server and its dashboard processes: open log streams get 3 s, then it exits.",
                "KillSignal=SIGTERM", "KillMode=control-group", f"TimeoutStopSec={SERVE_STOP_TIMEOUT_S}"]
    return ["# SIGTERM to the daemon only: it checkpoints the running job, which resumes at the next start.",
            "KillSignal=SIGTERM", "KillMode=mixed", f"TimeoutStopSec={STOP_TIMEOUT_S}"]


def unit_for(home: Path, user: bool, serve: bool = False) -> Unit:
    """The unit `install` would write for `home` (its daemon, or with `serve` its HTTP server)."""
    name = unit_name(home, serve)
    return Unit(home, user, name, unit_dir(user) / name, render(home, user, serve), serve)


def _ours(path: Path) -> bool:
    try:
        return path.read_text(encoding="utf-8", errors="replace").startswith(MARKER)
    except OSError:
        return False


def install(unit: Unit) -> bool:
    """Write the unit file (replacing one overnight wrote before); True when it replaced one. A home that does not
    exist is refused: a unit for a mistyped path would start a daemon on a new, empty home at every boot."""
    if not unit.home.is_dir():
        what = "is not a folder" if unit.home.exists() else "does not exist"
        raise ServiceError(f"the home {unit.home} {what}: no unit was written (a unit for it would start a daemon on "
                           f"an empty home at every boot). Fix: check --home (or $OVERNIGHT_HOME); to start a new "
                           f"home there, create it first (mkdir -p {unit.home}) and install again.")
    if unit.path.exists() and not _ours(unit.path):
        raise ServiceError(f"{unit.path} exists and was not written by overnight; it is left alone. "
                           f"Fix: move it away, or install for another home.")
    replaced = unit.path.exists()
    try:
        unit.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(unit.path, unit.text)
    except PermissionError:
        raise ServiceError(f"cannot write {unit.path}: permission denied. Fix: install the system unit as root "
                           f"(sudo {daemon_command(unit.home)[0]} service install --home {unit.home}), or a user "
                           f"unit with --user.") from None
    return replaced


def uninstall(unit: Unit) -> None:
    """Remove the unit file overnight wrote for this home (only that file), once systemd no longer runs it."""
    if not unit.path.exists():
        other = unit_dir(not unit.user) / unit.name
        hint = (f" There is one at {other}: add --user." if unit.user is False and other.exists() else
                f" There is one at {other}: drop --user." if other.exists() else "")
        raise ServiceError(f"no unit {unit.name} for {unit.home} at {unit.path}: nothing to remove.{hint}")
    if not _ours(unit.path):
        raise ServiceError(f"{unit.path} was not written by overnight; it is left alone.")
    state = systemd_state(unit)
    if state:
        raise ServiceError(f"{unit.name} is still {state}. First run: {systemctl(unit)} disable --now {unit.name} "
                           f"— then uninstall again.")
    try:
        unit.path.unlink()
    except PermissionError:
        raise ServiceError(f"cannot remove {unit.path}: permission denied. Fix: run this as root "
                           f"(sudo {daemon_command(unit.home)[0]} service uninstall --home {unit.home}).") from None


def systemd_state(unit: Unit) -> str | None:
    """'enabled', 'active' or 'enabled and active' when systemd says so; None when not, or when it cannot tell."""
    if shutil.which("systemctl") is None:
        return None
    said = []
    for query, word in (("is-enabled", "enabled"), ("is-active", "active")):
        try:
            out = subprocess.run(["systemctl", *(["--user"] if unit.user else []), query, unit.name],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out == word:
            said.append(word)
    return " and ".join(said) or None


def systemctl(unit: Unit) -> str:
    """How the user calls systemctl for this unit."""
    if unit.user:
        return "systemctl --user"
    return "systemctl" if os.geteuid() == 0 else "sudo systemctl"


def enable_lines(unit: Unit) -> list[str]:
    """The three commands that load, start (now and at every boot) and follow the service."""
    journal = "journalctl --user" if unit.user else ("journalctl" if os.geteuid() == 0 else "sudo journalctl")
    return [f"{systemctl(unit)} daemon-reload", f"{systemctl(unit)} enable --now {unit.name}",
            f"{journal} -u {unit.name} -f"]
