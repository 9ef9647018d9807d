"""ASHA pruning for a sweep (`prune = "asha"`): where the rungs are, and which trial goes on from one.

Successive halving run asynchronously through overnight's queue (Li et al., "A System for Massively Parallel
Hyperparameter Tuning"; Ray Tune's AsyncHyperBandScheduler): each trial of a group trains to its next rung,
checkpoints and waits there (queued, held, holding no trainer); of the n trials that reach a rung the best ⌊n/η⌋
go on (at least one) and the rest end pruned, each decided as soon as its place is certain (`decide`). Pruned is an
end state that keeps the checkpoint: `overnight resume RUN` trains it to the end.

Rungs sit at fractions of each trial's own total steps (so a swept batch size is compared at the same share of its
data): with η = 3 and two rungs, at 1/9 and 1/3 of the steps; `min_steps` puts the first rung at a step count
instead (then η times further each). Ranked on the eval loss at the rung (the training loss where a trial has no
eval set), ties in grid order. Pure: the daemon (daemon/engine/pruning.py) reads the DB and applies the decisions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

PRUNE_ASHA = "asha"
WAITS = "waits at ASHA rung"  # how a trial held at its rung says why it is queued (daemon/engine/pruning.py)
DEFAULT_ETA = 3
DEFAULT_RUNGS = 2
# How the trainer says it stopped at its rung (result.json's reason starts with it); the daemon holds the run then.
RUNG_STOP = "reached ASHA rung"
# The trainer's environment names the rung it trains to (0 = the first); absent: to the end.
RUNG_ENV = "OVERNIGHT_ASHA_RUNG"


class Decision(str, Enum):
    """A trial's record at one rung (the rungs table's `decision`)."""

    WAITING = "waiting"  # reached the rung, held until promoted or pruned
    PROMOTED = "promoted"  # goes on to the next rung (or to the end)
    PRUNED = "pruned"  # stopped here: not among the best
    RESUMED = "resumed"  # pruned, then resumed by the user: trains to the end

    def __str__(self) -> str:
        return self.value


def settings(options: dict[str, Any]) -> tuple[int, int, int | None] | None:
    """(eta, rungs, min_steps) of a run whose sweep prunes with ASHA; None when it does not."""
    if options.get("prune") != PRUNE_ASHA:
        return None
    return (int(options.get("eta") or DEFAULT_ETA), int(options.get("prune_rungs") or DEFAULT_RUNGS),
            options.get("min_steps"))


def rung_steps(total: int, eta: int, rungs: int, min_steps: int | None = None) -> list[int]:
    """The steps at which a trial of `total` steps stops to be compared: strictly increasing, each before the end."""
    if min_steps:
        steps = [min_steps * eta ** k for k in range(rungs)]
    else:
        steps = [max(1, round(total / eta ** (rungs - k))) for k in range(rungs)]
    out: list[int] = []
    for s in steps:
        if s < total and (not out or s > out[-1]):
            out.append(s)
    return out


def stop_step(options: dict[str, Any], total: int, rung: int | None) -> int | None:
    """Where a trainer told to train to `rung` stops (None: to the end)."""
    asha = settings(options)
    if asha is None or rung is None:
        return None
    steps = rung_steps(total, *asha)
    return steps[rung] if rung < len(steps) else None


@dataclass
class Trial:
    """One run of an ASHA group as the daemon sees it."""

    id: str
    seq: int
    live: bool  # queued or training: it may still reach rungs it has not reached
    results: dict[int, float] = field(default_factory=dict)  # rung index → the metric recorded there
    waiting: int | None = None  # the rung it is held at (a WAITING record), if any


@dataclass(frozen=True)
class Verdict:
    run_id: str
    rung: int
    decision: Decision
    place: int  # its rank among those that reached the rung (1 = best)
    reached: int  # how many trials reached the rung
    goes_on: int  # how many of them go on (the quota)


def decide(trials: list[Trial], eta: int) -> list[Verdict]:
    """What becomes of each waiting trial now: promoted, pruned, or (absent from the list) still waiting.

    Of the n trials that can reach a rung (those there, and those live that may still get there), the best
    max(1, ⌊n/η⌋) go on. Each decision is taken as soon as it is certain: a trial goes on once even every trial still
    on its way ranking above it would leave it in the quota, and is pruned once it is below the quota already (a
    later arrival can only push it further down). So nothing is promoted that a later trial would have beaten (Ray's
    ASHA may), and no slot idles for it: a waiting trial holds no trainer, the queue trains the others meanwhile."""
    out = []
    for t in trials:
        k = t.waiting
        if k is None:
            continue
        there = [x for x in trials if k in x.results]
        ranked = sorted((x for x in there if math.isfinite(x.results[k])), key=lambda x: (x.results[k], x.seq))
        pending = sum(x.live and k not in x.results for x in trials)
        reachable = len(there) + pending
        quota = max(1, reachable // eta)
        place = next((i for i, x in enumerate(ranked, 1) if x.id == t.id), None)
        if place is not None and place + pending <= quota:
            out.append(Verdict(t.id, k, Decision.PROMOTED, place, reachable, quota))
        elif place is None or place > quota:  # a loss that is not finite never goes on
            out.append(Verdict(t.id, k, Decision.PRUNED, place or len(there), reachable, quota))
    return out
