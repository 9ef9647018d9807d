"""ASHA through the queue (the rule is daemon/core/asha.py): the daemon holds a trial that reached its rung, promotes
or prunes the waiting trials of a group whenever one of its runs changes, and tells each trainer where to stop."""
from __future__ import annotations

import logging
from typing import Any, Callable

from daemon.core import asha
from daemon.core.asha import Decision
from daemon.core.states import LIVE, State
from daemon.core.timefmt import iso
from daemon.engine.store import Store

log = logging.getLogger("overnight")

Options = Callable[[dict[str, Any]], dict[str, Any]]  # a run's resolved options (its config.json)
Transition = Callable[..., None]


def target_rung(store: Store, run: dict[str, Any], options: dict[str, Any]) -> int | None:
    """The rung a trial trains to next (None: to the end): one past the rungs it was promoted from."""
    if asha.settings(options) is None or not run.get("group_id"):  # no other trial to be compared with
        return None
    records = store.rungs([run["id"]])
    if any(r["decision"] in (Decision.PRUNED, Decision.RESUMED) for r in records):
        return None  # pruned, then resumed by the user: trained to the end
    return sum(r["decision"] == Decision.PROMOTED for r in records)


def hold(store: Store, run: dict[str, Any], options: dict[str, Any], step: int | None) -> str:
    """The trial stopped at its rung (`step`): record what it scored there; it waits (queued, held). Returns the
    reason shown beside it."""
    rung = target_rung(store, run, options) or 0
    metric, label = _metric_at(store, run["id"], step)
    store.record_rung(run["id"], rung, step, metric, Decision.WAITING)
    shown = f"{label} {metric:.4f}" if metric is not None else "no loss logged"
    return f"{asha.WAITS} {rung + 1} (step {step}, {shown}) for the group's other trials"


def _metric_at(store: Store, run_id: str, step: int | None) -> tuple[float | None, str]:
    """The eval loss logged at the rung's step; the training loss there when the run has no eval set; and which."""
    rows = store.metrics_at(run_id, step)
    for column, label in (("eval_loss", "eval loss"), ("loss", "loss")):
        values = [r[column] for r in rows if r[column] is not None]
        if values:
            return float(values[-1]), label
    return None, "eval loss"


def resumed(store: Store, run_id: str) -> None:
    """A pruned trial resumed by the user trains to the end."""
    for r in store.rungs([run_id]):
        if r["decision"] == Decision.PRUNED:
            store.record_rung(run_id, r["rung"], None, None, Decision.RESUMED)


def review(store: Store, group: str, options: Options, transition: Transition) -> list[str]:
    """Promote or prune the group's waiting trials; returns the log lines of what was decided."""
    members = store.runs_in_group(group)
    settings = asha.settings(options(members[0])) if members else None
    if settings is None:
        return []
    eta = settings[0]
    records = store.rungs([m["id"] for m in members])
    trials = []
    for m in members:
        mine = [r for r in records if r["run_id"] == m["id"]]
        waiting = next((r["rung"] for r in mine if r["decision"] == Decision.WAITING), None)
        trials.append(asha.Trial(m["id"], m["seq"] or 0, m["state"] in LIVE,
                                 {r["rung"]: r["metric"] for r in mine if r["metric"] is not None}, waiting))
    said = []
    for v in asha.decide(trials, eta):
        store.record_rung(v.run_id, v.rung, None, None, v.decision)
        where = f"rung {v.rung + 1}: place {v.place} of {v.reached}, the best {v.goes_on} go on"
        if v.decision == Decision.PRUNED:
            transition(v.run_id, State.PRUNED, f"pruned at ASHA {where}; its checkpoint is kept (overnight resume "
                                               f"{v.run_id} trains it to the end)", finished=iso())
        said.append(f"sweep {group}: {v.run_id} {v.decision} at {where}")
    return said


def groups_waiting(store: Store) -> set[str]:
    """Groups with a trial held at a rung (looked at when the daemon starts: decisions a restart left pending)."""
    held = store.held_run_ids()
    return {r["group_id"] for r in store.runs_in([State.QUEUED]) if r["id"] in held and r.get("group_id")}
