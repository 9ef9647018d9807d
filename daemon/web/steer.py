"""The commands a client sends over HTTP, written exactly as the CLI writes them (daemon/core/control.py: the
daemon's own parser first, then `control/KIND.ID`) and answered with the daemon's acknowledgement of that id."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from daemon.core import control
from daemon.core.errors import RefError
from daemon.core.home import Home, daemon_alive
from daemon.core.queries import Reader

MAX_WAIT_S = 60.0


def model_version(h: Home, kind: str, name: str, version: int) -> str:
    """`NAME VERSION` for activate/delete, refused when the registry has no such version (as the CLI refuses it)."""
    content = f"{name} {version}"
    name, version = control.parse_text(kind, content).model
    reader = Reader(h.db)
    try:
        versions = [m for m in reader.models() if m["name"] == name]
    finally:
        reader.close()
    if not any(m["version"] == version for m in versions):
        known = ", ".join(f"v{m['version']}" for m in versions)
        raise RefError(f"no model {name} version {version} "
                           f"({f'{name} has {known}' if known else 'no model has that name'}). "
                           f"Fix: use a NAME and VERSION that GET /api/models lists.")
    return content


async def answers(h: Home, ticket: control.Ticket, wait: float, poll: float = 0.1) -> list[dict[str, Any]]:
    """The daemon's answers to `ticket` within `wait` seconds, polled without holding a thread while waiting (many
    clients may wait at once)."""
    end = time.monotonic() + wait
    while True:
        found = await asyncio.to_thread(ticket.wait, h, 0)
        if found or time.monotonic() >= end:
            return found
        await asyncio.sleep(poll)


async def send(h: Home, kind: str, content: str, wait: float) -> dict[str, Any]:
    """Write the command and wait up to `wait` seconds for the daemon's answers (the CLI's `_send`)."""
    control.parse_text(kind, content)  # a command the daemon would reject is never written
    h.create()  # as the CLI does: a control/ removed by hand is made again, not a 500 (HomeDamaged when it cannot be)
    ticket = control.send(h, kind, content)
    out: dict[str, Any] = {"command": kind, "content": content, "command_id": ticket.id, "wrote": str(ticket.path),
                           "answers": [], "acknowledged": False, "rejected": False, "note": None}
    if not daemon_alive(h):
        out["note"] = "no daemon is running: it applies this when it starts (overnight daemon)"
        return out
    wait = min(wait, MAX_WAIT_S)  # the note says the wait that was
    found = await answers(h, ticket, wait) if wait > 0 else []
    out.update(answers=found, acknowledged=bool(found), rejected=any(e["status"] == "rejected" for e in found))
    if not found:
        out["note"] = (f"not acknowledged yet (waited {wait:g} s); see GET /api/status" if daemon_alive(h) else
                       "the daemon stopped before it answered: it applies this when it starts (overnight daemon)")
    return out


async def stop_all(h: Home, wait: float) -> dict[str, Any]:
    """A stop naming no run also holds the queue; a second one is answered at once (the daemon answers a held
    control/stop once)."""
    if control.held(h, "stop") == "*":
        return {"command": "stop", "content": "", "command_id": None, "wrote": None, "answers": [],
                "acknowledged": True, "rejected": False,
                "note": f"already stopped: {h.control / 'stop'} is in place; no new job starts until resume"}
    out = await send(h, "stop", "", wait)
    out["note"] = (out["note"] + "; " if out["note"] else "") + "no new job starts until resume"
    return out
