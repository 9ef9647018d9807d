"""Sweeps: lists of values in a sidecar queue one run per combination, grouped, ranked, and the best selected.

A sidecar writing `learning_rate = [1e-4, 3e-4]` and `lora_r = [8, 16]` queues the grid: the cartesian product of
its lists (and of a `base_model` list), in product order — base models outermost, then the lists in the order
the sidecar writes them, the last one changing fastest. The runs share a group id (the id the drop would have had
as a single run, `NAME-YYYYmmdd-HHMMSS`) and their ids carry their values: `support-lr3e-4-r16-20261128-101350`.

Ranking (for `overnight compare`, the dashboard and `select = "best"`): completed runs only, by eval loss (by
the final training loss when some completed run has no eval loss), equal losses (to 4 decimals) by probes learned,
then in grid order. This module imports no torch and never writes the DB itself except through `Store`.
"""
from __future__ import annotations

import itertools
import math
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from daemon.core import asha, search
from daemon.core import evalreport
from daemon.core.options import OPTIONS, OptionsError, Resolved
from daemon.core.states import ENDED, State

# Short, file-name-safe names of the sweepable options in run ids (tests check every sweepable option has one).
ABBREVIATIONS = {
    "learning_rate": "lr", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "drop", "batch_size": "bs",
    "grad_accum": "ga", "epochs": "ep", "max_steps": "steps", "max_length": "len", "seed": "seed",
    "warmup_ratio": "wu", "weight_decay": "wd", "lr_scheduler": "sched", "optim": "opt", "quantization": "q",
    "batching": "batch", "gradient_checkpointing": "gc", "attn_implementation": "attn", "max_grad_norm": "gn",
    "use_liger_kernel": "liger", "beta": "beta", "loss_type": "loss", "batch_tokens": "bt", "torch_compile": "compile",
}
SELECT_BEST = "best"
R = TypeVar("R")  # a run: a row dict or a daemon.core.runrecord.Run


def compact(value: Any) -> str:
    """A value as a run id shows it: 3e-4, 0.05, 16, on/off, cosine."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        d = Decimal(repr(value)).normalize()  # repr: the shortest digits that give this float back
        if abs(value) < 0.01 or abs(value) >= 1e6:
            sign, digits, exponent = d.as_tuple()
            mantissa = "".join(map(str, digits))
            mantissa = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
            return f"{'-' if sign else ''}{mantissa}e{int(exponent) + len(digits) - 1}"
        return format(d, "f")
    return _id_part(str(value)) or "x"


def tag(key: str, value: Any) -> str:
    """One option's part of a run id: `lr3e-4`, `r16`, `sched_cosine`, `gc_on`."""
    abbr = ABBREVIATIONS.get(key, key)
    sep = "" if isinstance(value, (int, float)) and not isinstance(value, bool) else "_"
    return f"{abbr}{sep}{compact(value)}"


@dataclass(frozen=True)
class Point:
    """One run of a grid: its base model and the values of the swept options (in the sidecar's order)."""

    base_model: str
    values: tuple[tuple[str, Any], ...] = ()

    def tags(self) -> str:
        """`lr3e-4-r16` ('' when no option is swept)."""
        return "-".join(tag(k, v) for k, v in self.values)


def axes(opts: Resolved) -> list[tuple[str, list[Any]]]:
    """The swept options with more than one value, in the sidecar's order (none in a search: its lists are
    choices to draw from, daemon/core/search.py)."""
    if search.searching(opts.values):
        return []
    out = []
    for key in opts.swept:
        values = opts.values[key]
        if isinstance(values, list) and len(values) > 1:
            out.append((key, list(values)))
    return out


def run_count(opts: Resolved) -> int:
    """How many runs the drop queues: base models × the length of every list; a search's trials."""
    if search.searching(opts.values):
        return int(opts.values["trials"])
    return max(1, len(opts.base_models)) * math.prod(len(v) for _, v in axes(opts))


def expand(opts: Resolved) -> list[Point]:
    """The grid in product order: base models outermost, then each list, the last changing fastest."""
    grid = axes(opts)
    keys = [k for k, _ in grid]
    return [Point(model, tuple(zip(keys, combo)))
            for model in opts.base_models for combo in itertools.product(*(v for _, v in grid))]


def options_for(opts: Resolved, point: Point) -> Resolved:
    """The options of one run of the grid: one base model, one value per option (a one-item list unwrapped)."""
    values = {**opts.values, "base_model": point.base_model}
    if search.searching(values):  # a trial not drawn yet keeps the ranges and choices (engine/search.py draws)
        return Resolved(values, dict(opts.sources), files=dict(opts.files))
    for key in opts.swept:
        if isinstance(values[key], list):
            values[key] = values[key][0]
    values.update(dict(point.values))
    return Resolved(values, dict(opts.sources), files=dict(opts.files))


def first_run(opts: Resolved) -> Resolved:
    """The options of the grid's first run, its base model list kept (what `overnight check` estimates on)."""
    values = dict(opts.values)
    for key in opts.swept:
        if isinstance(values[key], list):
            values[key] = values[key][0]
        elif isinstance(values[key], dict):  # a search's range: its first choice, or its low end
            values[key] = values[key]["choices"][0] if "choices" in values[key] else values[key]["low"]
    return Resolved(values, dict(opts.sources), files=dict(opts.files))


def describe(opts: Resolved) -> str:
    """`base_model 2 × learning_rate 3 × lora_r 2` (one axis: `learning_rate: 3 values`): what multiplies into the
    run count; for a search, what it draws from."""
    if search.searching(opts.values):
        over = "; ".join(s.describe() for s in search.spaces(opts.values, opts.swept, takes_integers))
        return f"search {opts.values['search']}, {opts.values['trials']} trials: {over}"
    counts = ([("base_model", len(opts.base_models))] if len(opts.base_models) > 1 else []) + \
        [(k, len(v)) for k, v in axes(opts)]
    if len(counts) == 1:  # `learning_rate 2` alone reads as a value, not a count
        return f"{counts[0][0]}: {counts[0][1]} values"
    return " × ".join(f"{k} {n}" for k, n in counts)


def check_cap(opts: Resolved, source: Path | str | None) -> None:
    """A grid larger than the owner's max_sweep_runs is refused with the count and the fix."""
    if search.searching(opts.values) and len(opts.base_models) > 1:
        raise OptionsError(f"{source}: a search draws its trials on one base model, and base_model lists "
                           f"{len(opts.base_models)}. Fix: name one base model (a drop per model searches each).")
    n, cap = run_count(opts), int(opts.values.get("max_sweep_runs") or OPTIONS["max_sweep_runs"].default)
    if n > cap:
        where = f"{source}: " if source else ""
        raise OptionsError(f"{where}this sweep would queue {n} runs ({describe(opts)}), more than "
                           f"max_sweep_runs = {cap}. Fix: shorten the lists, or raise max_sweep_runs in "
                           f"overnight.toml.")


# options that steer a sweep: what a sidecar must set for them to mean anything, what they steer, and its usual value
_NEEDS = {"eta": ("prune", "ASHA pruning", '"asha"'), "prune_rungs": ("prune", "ASHA pruning", '"asha"'),
          "min_steps": ("prune", "ASHA pruning", '"asha"'), "trials": ("search", "a search", '"tpe"')}


def check_inert(opts: Resolved, source: Path | str | None) -> None:
    """A sidecar's sweep option that would do nothing (ASHA on a single run, `eta` without `prune`, `trials` without
    `search`) is refused with the fix: the run would train as if it were not there, and the user never know."""
    set_here = [k for k, origin in opts.sources.items() if origin == "sidecar"]
    where = f"{source}: " if source else ""
    for key in set_here:
        if key in _NEEDS and opts.values.get(_NEEDS[key][0]) in (None, "none"):
            needed, steered, usual = _NEEDS[key]
            raise OptionsError(f"{where}{key} = {opts.values[key]!r} steers {steered}, and {needed} is not set, so it "
                               f"would do nothing. Fix: add {needed} = {usual}, or remove {key}.")
    by_loss = _ranked_by_loss(opts.values)
    if isinstance(opts.values.get("loss_type"), (list, dict)) and by_loss:
        raise OptionsError(f"{where}{by_loss}, and the loss types of this sweep measure their loss on different "
                           f"scales (ipo's is not sigmoid's): the best would be the one whose loss reads smallest. "
                           f'Fix: rank them by select_metric = "reward_accuracy" (the share of eval pairs whose '
                           f'chosen answer each prefers; eval_fraction > 0), or by "exact", "similarity" or "rougeL" '
                           f"with an eval file (NAME.eval.jsonl); ASHA and a search compare eval losses, so sweep "
                           f"loss_type as a grid.")
    pruned = opts.values.get("prune") == asha.PRUNE_ASHA
    runs = (opts.values.get("trials") or 0) if search.searching(opts.values) else run_count(opts)
    if "prune" in set_here and pruned and runs < 2:
        raise OptionsError(f'{where}prune = "asha" compares the trials of a sweep, and this drop queues one run. '
                           f"Fix: list values to sweep (e.g. learning_rate = [1e-4, 3e-4]) or a search of 2 trials "
                           f"or more, or remove prune.")
    if pruned and runs >= 2:  # a single run (ASHA set in overnight.toml for the sweeps to come) trains to its end
        _check_rungs(opts.values, where)


def _check_rungs(values: dict[str, Any], where: str) -> None:
    """ASHA whose every rung falls at or past the end of a trial (max_steps set, min_steps beyond it) prunes
    nothing: refused with the fix rather than trained as a plain sweep unsaid."""
    eta, rungs, min_steps = asha.settings(values) or (asha.DEFAULT_ETA, asha.DEFAULT_RUNGS, None)
    for total in values_of(values.get("max_steps")):
        # max_steps 0 trains by epochs: the trainer knows the step count, and the rungs are fractions of it
        if isinstance(total, int) and total > 0 and not asha.rung_steps(total, eta, rungs, min_steps):
            first = f"min_steps = {min_steps} puts the first rung at step {min_steps}" if min_steps else \
                f"{rungs} rung(s) at eta = {eta} leave no step before the end"
            raise OptionsError(f'{where}prune = "asha" stops trials at rungs before their end, and a trial of '
                               f"max_steps = {total} has none ({first}), so nothing would be pruned. Fix: lower "
                               f"min_steps below max_steps (or leave it unset: the rungs are fractions of the steps), "
                               f"or raise max_steps.")


def values_of(value: Any) -> list[Any]:
    """An option's values: a sweep's list, a search's choices or range ends, else the one value."""
    if isinstance(value, dict):
        return list(value.get("choices") or [value.get("low"), value.get("high")])
    return list(value) if isinstance(value, list) else [value]


def summary(opts: Resolved) -> str | None:
    """For `overnight check`: `4 runs (learning_rate 2 × lora_r 2): lr1e-4-r8, …`; None for a single run."""
    n = run_count(opts)
    if search.searching(opts.values):
        return f"{n} trials in one group ({describe(opts)}), each a run NAME-tN, drawn as the study goes"
    if n < 2:
        return None
    points = expand(opts) if opts.base_models else expand(Resolved({**opts.values, "base_model": "?"},
                                                                   opts.sources, opts.swept))
    many = len(opts.base_models) > 1
    names = [("-".join(x for x in (_model_tag(p.base_model) if many else "", p.tags()) if x)) for p in points]
    shown = ", ".join(names[:8]) + (f", … ({len(names) - 8} more)" if len(names) > 8 else "")
    return f"{n} runs in one group ({describe(opts)}): {shown}"


def takes_integers(key: str) -> bool:
    """An option that takes whole numbers only: its search range draws integers."""
    return OPTIONS[key].kind is int


def _id_part(text: str) -> str:
    """Text as a run id carries it: letters and digits of any script stay (as intake.safe_name keeps them in the
    dataset's name, NFC), anything else becomes `-`."""
    return re.sub(r"[^\w.-]+", "-", unicodedata.normalize("NFC", text)).strip("-.")


def _model_tag(model: str) -> str:
    return _id_part(Path(model.rstrip("/")).name) or "model"


def run_suffix(point: Point, several_models: bool) -> str:
    """What a run's id carries after the name: `-Qwen2.5-0.5B-lr3e-4-r16` (the model only when several)."""
    parts = [_model_tag(point.base_model)] if several_models else []
    if point.values:
        parts.append(point.tags())
    return "".join(f"-{p}" for p in parts)


# --------------------------------------------------------------------------------------------- ranking

def _get(run: Any, key: str) -> Any:
    """A field of a run, whichever shape the caller has: a row dict (the CLI, the daemon) or a `Run` (the dashboard)."""
    return run.get(key) if isinstance(run, dict) else getattr(run, key, None)


def _value(run: Any, metric: str) -> float | None:
    """A run's number for `metric`: its row's eval or final loss, or its eval report's (daemon/core/evalreport.py)."""
    if metric in ("eval_loss", "loss"):
        value = _get(run, metric)
        return None if value is None else float(value)
    return evalreport.metric_value(_get(run, "run_dir"), metric)


def _ordered(runs: Iterable[R], learned: Callable[[R], int | None] | None, by: str = "eval_loss"
             ) -> tuple[list[R], list[R], str | None]:
    """(the ranked runs best first, the others in grid order, the metric used): see `rank`."""
    runs = sorted(runs, key=lambda r: _get(r, "seq") or 0)
    done = [r for r in runs if _get(r, "state") == State.COMPLETED]
    report = by != "eval_loss" and done and all(_value(r, by) is not None for r in done)  # select_metric
    metric = by if report else "eval_loss" if done and all(_get(r, "eval_loss") is not None for r in done) else "loss"
    sign = -1 if evalreport.RANKINGS.get(metric) == "higher" else 1
    ranked = [r for r in done if _value(r, metric) is not None and math.isfinite(_value(r, metric))]
    if not ranked:
        return [], runs, None

    def rounded(r: R) -> float:
        return sign * round(_value(r, metric), 4)

    ties: dict[float, int] = {}
    for r in ranked:
        ties[rounded(r)] = ties.get(rounded(r), 0) + 1

    def key(r: R) -> tuple:
        probes = (learned(r) or 0) if learned and ties[rounded(r)] > 1 else 0
        return rounded(r), -probes, _get(r, "seq") or 0

    ranked.sort(key=key)
    ids = {_get(r, "id") for r in ranked}
    return ranked, [r for r in runs if _get(r, "id") not in ids], metric


def rank(rows: Iterable[dict[str, Any]], learned: Callable[[dict[str, Any]], int | None] | None = None,
         by: str = "eval_loss") -> tuple[list[dict[str, Any]], str | None]:
    """Rows (`id, state, eval_loss, loss, seq`) ordered best first, each with `rank` (None: not ranked).

    Only completed runs rank: by eval loss, or by the final loss when some completed run has no eval loss;
    equal losses (to 4 decimals) by probes learned (`learned(row)`, asked only for ties), then grid order.
    `by` (select_metric): an eval report's metric ranks instead when every completed run has one.
    Returns the rows and the metric used ("eval_loss", "loss", `by` or None when nothing ranks).
    """
    ranked, rest, metric = _ordered(rows, learned, by)
    return [{**r, "rank": i} for i, r in enumerate(ranked, 1)] + [{**r, "rank": None} for r in rest], metric


LOSS_METRICS = ("eval_loss", "loss")  # what a preference loss type changes the scale of


def _ranked_by_loss(values: dict[str, Any]) -> str | None:
    """What in a drop compares its runs by their loss, said as a clause; None when nothing does."""
    if values.get("select") == "best" and ranked_by(values) in LOSS_METRICS:
        return f'select = "best" ranks by {ranked_by(values)}'
    if values.get("prune") == asha.PRUNE_ASHA:
        return 'prune = "asha" compares trials by their eval loss at each rung'
    if search.searching(values):
        return "the search tells its sampler each trial's eval loss"
    return None


def ranked_by(options: dict[str, Any]) -> str:
    """What a group's runs are ranked by, as `select = "best"` ranks them: its select_metric."""
    return options.get("select_metric") or "eval_loss"


def best(runs: Iterable[R], learned: Callable[[R], int | None] | None = None, by: str = "eval_loss") -> R | None:
    """The best run of a group (see `rank`), or None when no run completed: one of `runs` as given, row dicts or
    `Run`s (`learned` is asked with the same)."""
    ranked, _, _ = _ordered(runs, learned, by)
    return ranked[0] if ranked else None


METRIC_LABEL = {"eval_loss": "eval loss", "loss": "final loss", "exact": "eval exact match",
                "similarity": "eval similarity", "rougeL": "eval ROUGE-L", "forgetting": "forgetting score",
                "reward_accuracy": "eval reward accuracy"}


# --------------------------------------------------------------------------------------------- select = "best"

def on_group_ended(store: Any, group: str, read_options: Callable[[dict[str, Any]], dict[str, Any]],
                   learned: Callable[[dict[str, Any]], int | None]) -> str | None:
    """When the last run of a group with `select = "best"` has ended, activate the best version; say what was done.

    `store` is the daemon's Store; `read_options(run)` gives a run's resolved options (its config.json).
    Returns the overnight.log line, or None when there is nothing to do (runs left, select = "none").
    """
    members = store.runs_in_group(group)
    if not members or any(m["state"] not in ENDED for m in members):  # a search of one trial is a group too
        return None
    options = read_options(members[-1])
    if options.get("select") != SELECT_BEST:
        return None
    by = ranked_by(options)
    # the forgetting alarm: a regressed version is never picked unless the drop allows it
    allowed = [m for m in members if options.get("allow_regressed") or not evalreport.of_run(m["run_dir"]).get("regressed")]
    winner = best(allowed, learned, by)
    left_out = sum(m["state"] != State.COMPLETED for m in members)
    regressed = sum(m["state"] == State.COMPLETED for m in members) - sum(m["state"] == State.COMPLETED for m in allowed)
    note = (f"; {left_out} did not complete" if left_out else "") + (f"; {regressed} regressed" if regressed else "")
    if winner is None:
        return f"sweep {group}: no run completed, so no version was activated ({len(members)} runs{note})"
    version = next((m for m in store.models(winner["name"]) if m["run_id"] == winner["id"] and not m["deleted"]),
                   None)
    if version is None:
        return f"sweep {group}: the best run {winner['id']} has no model version to activate"
    _, metric = rank(allowed, learned, by)
    said = (f"{winner['name']} version {version['version']} (run {winner['id']}, {METRIC_LABEL[metric]} "
            f"{_value(winner, metric):.4f}; best of {len(members) - left_out - regressed}{note})")
    pinned = store.pinned_version(winner["name"])
    if pinned is not None and pinned != version["version"]:  # the user's `overnight activate` decides
        return (f"sweep {group}: the best is {said}; not activated, as version {pinned} is pinned (overnight "
                f"activate {winner['name']} {version['version']} to take it)")
    store.activate_model(winner["name"], version["version"], pin=False)
    return f"sweep {group}: activated {said}"


def selects_best(options: dict[str, Any], run: dict[str, Any]) -> bool:
    """A run whose group selects its best at the end: its version is registered without taking over."""
    return bool(run.get("group_id")) and options.get("select") == SELECT_BEST


# --------------------------------------------------------------------------------------------- compare

def _seconds(run: dict[str, Any], result: dict[str, Any]) -> float | None:
    """Wall time from start to end (to now while it runs); the trainer's own count when the DB has no times."""
    import datetime as dt
    try:
        start = dt.datetime.fromisoformat(run["started"])
        end = dt.datetime.fromisoformat(run["finished"]) if run.get("finished") else dt.datetime.now()
        return round((end - start).total_seconds(), 1)
    except (TypeError, ValueError, KeyError):
        return result.get("train_seconds")


def comparison(runs: list[dict[str, Any]], rungs: dict[str, list[dict[str, Any]]] | None = None
               ) -> list[dict[str, Any]]:
    """`overnight compare`: one row per run, best first (see `rank`), with the options that differ between them and,
    in an ASHA sweep, where each trial stood at each rung (`rungs`: queries.Reader.rungs)."""
    from daemon.core.atomic import read_json
    from daemon.core.evolution import analyze, kept_step, load_records
    from daemon.core.runconfig import RunConfig
    from daemon.core.rundir import RunFolder

    info: dict[str, dict[str, Any]] = {}
    for r in runs:
        folder = RunFolder(r["run_dir"])
        evo = analyze(load_records(folder.evolution), until=kept_step(folder.root))
        options = RunConfig.read(folder.root).options
        trained = (read_json(folder.stats, {}) or {}).get("objective")  # "auto" as its trainer resolved it
        config = RunConfig.read(folder.root)
        scored_on = ((read_json(folder.eval_report, {}) or {}).get("eval") or {}).get("file")
        info[r["id"]] = {"options": {**options, "objective": trained} if trained else options,
                         "result": folder.read_result(), "learned": evo.learned, "total": evo.total,
                         "data": config.dataset.get("sha256") or config.dataset.get("file"),
                         "eval_file": Path(scored_on).name if scored_on else None}
    keys = list(dict.fromkeys(k for i in info.values() for k in i["options"]))
    differ = [k for k in keys if len({repr(i["options"].get(k)) for i in info.values()}) > 1]
    # the ★ is the run select picks: the group's ranking, or the one every run agrees on (eval loss otherwise), so
    # the order the runs are named in changes nothing
    agreed = {ranked_by(i["options"]) for i in info.values()}
    by = agreed.pop() if len(agreed) == 1 else "eval_loss"
    unlike = [what for what, key in (("datasets", "data"), ("eval files", "eval_file"))
              if len({i[key] for i in info.values()}) > 1]
    ordered, metric = rank(runs, lambda r: info[r["id"]]["learned"], by)
    rows = []
    for r in ordered:
        i = info[r["id"]]
        rows.append({"rank": r["rank"], "run_id": r["id"], "state": r["state"], "eval_loss": r.get("eval_loss"),
                     "final_loss": r.get("loss"), "probes_learned": i["learned"] if i["total"] else None,
                     "probes_total": i["total"], "tokens_per_s": r.get("tokens_per_s"),
                     "seconds": _seconds(r, i["result"]),
                     "options_that_differ": {k: i["options"].get(k) for k in differ},
                     "group": r.get("group_id"), "base_model": r.get("base_model"), "step": r.get("step"),
                     "ranked_by": metric, "dataset": r.get("dataset"), "unlike": unlike,
                     # the number it was ranked by, when that is a report's (the losses have their columns)
                     "metric_value": _value(r, metric) if metric and metric not in LOSS_METRICS else None,
                     "rungs": [{"rung": g["rung"] + 1, "step": g["step"], "metric": g["metric"],
                                "decision": g["decision"]} for g in (rungs or {}).get(r["id"], [])]})
    return rows
