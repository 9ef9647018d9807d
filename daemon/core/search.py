"""Search sweeps (`search = "tpe" | "random"`, `trials = N`): ranges in a sidecar, checked here (torch- and
optuna-free); the study itself is the daemon's (daemon/engine/search.py, Optuna's ask-and-tell).

A range is an inline table for a sweepable option: `learning_rate = {low = 1e-5, high = 1e-3, log = true}`,
`lora_r = {low = 4, high = 64, step = 4}` (an integer option draws integers), `lr_scheduler = {choices = ["cosine",
"linear"]}`; a plain list in a search sidecar is a set of choices too. Each trial is one queued run of the group,
`NAME-tN-STAMP` (N: the study's trial number, from 0), so a trial's run is found by its id after any restart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from daemon.core.errors import OptionsError

SAMPLERS = ("none", "tpe", "random")
RANGE_KEYS = {"low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Space:
    """One searched option: numbers between low and high (log-uniform, or on a step), or choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    choices: tuple[Any, ...] | None = None

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.key} one of {list(self.choices)}"
        scale = ", log" if self.log else f", step {self.step}" if self.step else ""
        return f"{self.key} {self.low} .. {self.high}{scale}"


def searching(values: dict[str, Any]) -> bool:
    return values.get("search") not in (None, "none")


def spaces(values: dict[str, Any], swept: list[str] | tuple[str, ...], integer: Callable[[str], bool]
           ) -> list[Space]:
    """The searched options of a search sidecar's resolved values, in the sidecar's order (`integer(key)`: the
    option takes whole numbers only, so its range draws integers)."""
    out = []
    for key in swept:
        v = values[key]
        if isinstance(v, list):
            out.append(Space(key, choices=tuple(v)))
        elif isinstance(v, dict):
            if "choices" in v:
                out.append(Space(key, choices=tuple(v["choices"])))
            else:
                out.append(Space(key, v["low"], v["high"], bool(v.get("log")), v.get("step"), integer(key)))
    return out


def check_range(source: Any, key: str, value: dict[str, Any], check_value: Any) -> None:
    """A range's own rules; `check_value(source, key, v, item)` checks one value as the option takes it."""
    where = f"{source}: option '{key}' = {value!r}"
    unknown = set(value) - RANGE_KEYS
    if unknown:
        raise OptionsError(f"{where} has {', '.join(sorted(unknown))}: a range takes low, high and log or step, or "
                           f"choices. Fix: write {key} = {{low = …, high = …}} or {key} = {{choices = [...]}}.")
    if "choices" in value:
        choices = value["choices"]
        if set(value) != {"choices"} or not isinstance(choices, list) or not choices:
            raise OptionsError(f"{where}: choices stand alone, as a non-empty list. Fix: {key} = {{choices = [a, b]}}.")
        for i, c in enumerate(choices):
            check_value(source, key, c, f" (choice {i + 1} of {choices!r})")
        return
    if "low" not in value or "high" not in value:
        raise OptionsError(f"{where} needs both low and high. Fix: {key} = {{low = …, high = …}}.")
    low, high = value["low"], value["high"]
    for bound, v in (("low", low), ("high", high)):
        check_value(source, key, v, f" ({bound} of the range)")
    if low > high:
        raise OptionsError(f"{where}: low ({low}) is above high ({high}). Fix: swap them.")
    if value.get("log") and low <= 0:
        raise OptionsError(f"{where}: a log range needs low > 0 (log of {low} is undefined). Fix: set low to a "
                           f"positive value, or drop log = true.")
    if value.get("log") and value.get("step"):
        raise OptionsError(f"{where}: a range is either log or stepped, not both. Fix: drop one of them.")
    if not isinstance(value.get("log", False), bool):
        raise OptionsError(f"{where}: log must be true or false. Fix: log = true.")
    step = value.get("step")
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0
                             or not math.isfinite(step)):
        raise OptionsError(f"{where}: step must be a positive number. Fix: step = 4, for example.")


def check_search(source: Any, table: dict[str, Any]) -> None:
    """A sidecar's search as a whole: ranges only with a search, and a search with something to search."""
    ranged = [k for k, v in table.items() if isinstance(v, dict) and k not in ("hooks", "notify", "torchrun")]
    on = table.get("search") not in (None, "none")
    if ranged and not on:
        raise OptionsError(f"{source}: {', '.join(ranged)} {'is a range' if len(ranged) == 1 else 'are ranges'}, "
                           f"which only a search draws from. Fix: add search = \"tpe\" (or \"random\") and trials = N, "
                           f"or give {ranged[0]} one value or a list (a grid).")
    if on and not ranged and not any(isinstance(v, list) for v in table.values()):
        raise OptionsError(f"{source}: search = \"{table['search']}\" has nothing to search. Fix: give ranges, e.g. "
                           f"learning_rate = {{low = 1e-5, high = 1e-3, log = true}}, or lists of choices.")
    if on and "trials" not in table:
        raise OptionsError(f"{source}: search = \"{table['search']}\" needs trials = N (how many runs to try). "
                           f"Fix: add trials = 8, for example.")


def trial_run_id(group_id: str, name: str, number: int) -> str:
    """The run of trial `number`: the group's id (`NAME-STAMP`) with `-tN` after the name."""
    return f"{name}-t{number}{group_id[len(name):]}"
