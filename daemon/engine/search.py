"""A search's study (daemon/core/search.py): Optuna's ask-and-tell, made for a loop that is not Optuna's.

The study lives in the home (`studies.db`, Optuna's SQLite storage), one per group, named by the group id. A trial
is drawn when its run first starts (`draw`: the run's config.json gets the values, written atomically before its
trainer reads it) and told when its run ends (`review`: completed → its eval loss, the metric `overnight compare`
ranks by; pruned at an ASHA rung → pruned, with the rungs' values reported; failed → failed). Each Optuna trial
carries its run id (a user attribute), and an asked trial that no run claims yet (a daemon killed between the two)
is the next one drawn: a restart loses no trial and draws none twice. Imported only for a search: optuna is heavy.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from daemon.core import search
from daemon.core.options import OPTIONS
from daemon.core.runconfig import RunConfig
from daemon.core.sweep import takes_integers
from daemon.core.states import State
from daemon.engine.store import Store

log = logging.getLogger("overnight")
STUDIES = "studies.db"  # in the home
RUN_ATTR = "run_id"


def _optuna() -> Any:
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its INFO lines would go to the daemon's terminal
    return optuna


def storage_url(home: Path) -> str:
    return f"sqlite:///{Path(home) / STUDIES}"


def study(home: Path, group: str, options: dict[str, Any]) -> Any:
    """The group's study, created on first use, with its sampler for the next draw: seeded by the run's seed and the
    trials drawn so far. A sampler lives for one draw here (the daemon loads the study again for each), and one
    seeded alike every time would draw the same values for every trial."""
    optuna = _optuna()
    kind, trials, seed = options.get("search"), int(options.get("trials") or 1), options.get("seed")

    def sampler(drawn: int) -> Any:
        seeded = None if seed is None else (int(seed) + 7919 * drawn) % 2**32
        return (optuna.samplers.RandomSampler(seed=seeded) if kind == "random" else
                optuna.samplers.TPESampler(seed=seeded, n_startup_trials=min(10, max(2, trials // 3))))

    st = optuna.create_study(storage=storage_url(home), study_name=group, direction="minimize", sampler=sampler(0),
                             load_if_exists=True)
    st.sampler = sampler(len(st.get_trials(deepcopy=False)))
    return st


def _distributions(config: RunConfig) -> dict[str, Any]:
    """Optuna's distribution for each searched option of an undrawn trial's config."""
    optuna = _optuna()
    d = optuna.distributions
    out = {}
    swept = [k for k, v in config.options.items() if isinstance(v, (list, dict)) and k in OPTIONS and OPTIONS[k].sweep]
    for s in search.spaces(config.options, swept, takes_integers):
        if s.choices is not None:
            out[s.key] = d.CategoricalDistribution(list(s.choices))
        elif s.integer:
            out[s.key] = d.IntDistribution(int(s.low), int(s.high), log=s.log, step=int(s.step or 1))
        else:
            out[s.key] = d.FloatDistribution(float(s.low), float(s.high), log=s.log, step=s.step)
    return out


def undrawn(config: RunConfig) -> bool:
    return search.searching(config.options) and config.sweep is None


def draw(home: Path, run: dict[str, Any]) -> str | None:
    """Before an undrawn trial's first start: its values from the study, into its config.json. Returns the console
    line saying them (None when the run is no undrawn trial)."""
    folder = Path(run["run_dir"])
    config = RunConfig.read(folder)
    if not undrawn(config):
        return None
    st = study(home, run["group_id"], config.options)
    trial = _claimed(st, run["id"])
    distributions = _distributions(config)
    if trial is None:
        trial = st.ask(distributions)
        trial.set_user_attr(RUN_ATTR, run["id"])
    params = {k: trial.params[k] for k in distributions}
    options = {**config.options, **params}
    from dataclasses import replace
    replace(config, options=options, sweep={**params, "trial": trial.number}).write(folder)
    shown = ", ".join(f"{k} = {v}" for k, v in params.items())
    return f"search {config.options['search']}: trial {trial.number} of the study {run['group_id']} drew {shown}"


def _claimed(st: Any, run_id: str) -> Any:
    """The trial this run already holds, or an asked trial nobody holds (a daemon stopped between ask and claim),
    then claimed by this run; None: ask a new one."""
    optuna = _optuna()
    running = st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    mine = next((t for t in running if t.user_attrs.get(RUN_ATTR) == run_id), None)
    orphan = next((t for t in running if RUN_ATTR not in t.user_attrs), None)
    chosen = mine or orphan
    if chosen is None:
        return None
    trial = optuna.trial.Trial(st, chosen._trial_id)
    if chosen is orphan:
        trial.set_user_attr(RUN_ATTR, run_id)
    return trial


def review(home: Path, store: Store, group: str, options: dict[str, Any]) -> list[str]:
    """Tell the study what the group's ended runs scored; returns the log lines."""
    if not search.searching(options):
        return []
    optuna = _optuna()
    st = study(home, group, options)
    runs = {r["id"]: r for r in store.runs_in_group(group)}
    rungs = store.rungs(runs)
    said = []
    for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        run = runs.get(t.user_attrs.get(RUN_ATTR))
        if run is None or run["state"] not in (State.COMPLETED, State.PRUNED, State.FAILED):
            continue  # still training, waiting, or stopped/skipped by the user (resumable: told when it ends)
        trial = optuna.trial.Trial(st, t._trial_id)
        for r in rungs:
            if r["run_id"] == run["id"] and r["metric"] is not None and r["step"] not in t.intermediate_values:
                trial.report(r["metric"], r["step"])
        value = _value(run)
        if run["state"] == State.COMPLETED and value is not None:
            st.tell(t.number, value)
            said.append(f"search {group}: trial {t.number} ({run['id']}) told: {value:.4f}")
        else:
            state = optuna.trial.TrialState.PRUNED if run["state"] == State.PRUNED else optuna.trial.TrialState.FAIL
            st.tell(t.number, state=state)
            said.append(f"search {group}: trial {t.number} ({run['id']}) told: {state.name.lower()}")
    return said + _resumed(st, group, runs)


def _resumed(st: Any, group: str, runs: dict[str, dict[str, Any]]) -> list[str]:
    """A pruned trial the user resumed (`overnight resume RUN`) that trained to its end: a finished Optuna trial
    cannot be told again, so its result joins the study as a trial of its own (same values), which the sampler
    learns from like any other."""
    optuna = _optuna()
    told = {t.user_attrs.get(RUN_ATTR) for t in st.get_trials(deepcopy=False,
                                                                 states=(optuna.trial.TrialState.COMPLETE,))}
    said = []
    for t in st.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)):
        run = runs.get(t.user_attrs.get(RUN_ATTR))
        value = _value(run) if run and run["state"] == State.COMPLETED and run["id"] not in told else None
        if value is None:
            continue
        st.add_trial(optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=value,
                                               user_attrs={RUN_ATTR: run["id"], "resumed_from_trial": t.number}))
        said.append(f"search {group}: trial {t.number} ({run['id']}) was pruned, then resumed to its end: told "
                    f"{value:.4f} as a trial of its own")
    return said


def _value(run: dict[str, Any]) -> float | None:
    """What a completed trial scored: its eval loss (the training loss where it had no eval set), as compare ranks."""
    value = run.get("eval_loss") if run.get("eval_loss") is not None else run.get("loss")
    return float(value) if value is not None else None
