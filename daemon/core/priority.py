"""What a priority command names: one rule for `overnight priority REF N` and `POST /api/runs/REF/priority?value=N`,
so the CLI and the HTTP API never disagree on which runs a sweep's group id or shared name re-orders."""
from __future__ import annotations

from daemon.core.dropfiles import dataset_waiting
from daemon.core.errors import RefError
from daemon.core.home import Home
from daemon.core.queries import Reader
from daemon.core.states import LIVE


def prioritised(h: Home, ref: str) -> list[str]:
    """What `ref` names for control/priority: one run, else the live runs of a group (by its id, or by the name they
    share), else the name of a drop still in the inbox (the daemon keeps it for its run). RefError otherwise."""
    rd = Reader(h.db)
    try:
        return [rd.named_run(ref)["id"]]
    except RefError as not_one:
        named = [r for r in rd.runs(LIVE) if r["group_id"] and ref in (r["group_id"], r["name"])]
        if named and len({r["group_id"] for r in named}) == 1:  # one sweep: all of it; runs of several: ambiguous
            return [r["id"] for r in named]
        if not named and h.inbox.is_dir() and dataset_waiting(h.inbox, ref):
            return [ref]
        raise not_one from None
    finally:
        rd.close()
