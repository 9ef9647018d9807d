"""How overnight writes numbers, times and tables for a person: the CLI and the dashboard both use these, so a loss
reads the same in `overnight runs` and in the TUI. Library modules return data; only renderers format it. No torch,
no click, no Textual here."""
from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path
from typing import Any, Sequence

from daemon.core import asha, control
from daemon.core.morning import first_line
from daemon.core.space import waits_for_space
from daemon.core.states import ACTIVE, ENDED, State


def fmt_duration(seconds: float | None) -> str:
    """`2d03h`, `1h02m`, `3m20s`, `45s`; `-` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s >= 86400:
        return f"{s // 86400}d{s % 86400 // 3600:02d}h"
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def fmt_loss(value: float | None) -> str:
    """A loss with 4 significant figures; `-` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def fmt_rate(value: float | None) -> str:
    """Tokens per second: `12,345`."""
    return "-" if value is None else f"{value:,.0f}"


def fmt_bytes(n: float | None) -> str:
    """`12.3G`, `512M`: binary units, short."""
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit in ("B", "K") else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}P"


def fmt_gpu_set(indices: Sequence[int] | None) -> str:
    """A run's GPUs as NVML numbers them: `0`, `0,1`, a run of three or more `0-3`; `CPU` for none."""
    if not indices:
        return "CPU"
    ordered = sorted(set(indices))
    parts: list[str] = []
    start = prev = ordered[0]
    for i in [*ordered[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if prev == start else f"{start},{prev}" if prev == start + 1 else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def fmt_priority(value: int, width: int = 5) -> str:
    """A priority in `width` cells: as it is when it fits (-9999 .. 99999 in 5), else shortened (`-250k`, `10M`)."""
    text = str(value)
    if len(text) <= width:
        return text
    for div, unit in ((1000, "k"), (1_000_000, "M")):
        short = f"{int(value / div)}{unit}"
        if len(short) <= width:
            return short
    return text[:width - 1] + "…"


def cells(text: str) -> int:
    """Terminal cells `text` takes: wide (CJK) characters two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart (the first row is the header); no trailing blanks; a name in CJK
    letters (two cells each) keeps its column straight."""
    widths = [max(cells(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(c + " " * (w - cells(c)) for c, w in zip(row, widths)).rstrip() for row in rows]


# --- the CLI's views -------------------------------------------------------------------------------------------
def _progress(r: dict[str, Any]) -> str:
    step, total = r.get("step"), r.get("max_steps")
    if step is None:
        return "-"
    return f"{step}/{total}" if total else str(step)


def fmt_forgetting(score: float) -> str:
    """A forgetting score as a signed percentage; a change that rounds to nothing reads +0.0%, never -0.0%."""
    return f"{score:+.1%}".replace("-0.0%", "+0.0%")


EXECUTOR_SILENT = "the executor did not answer"  # a queued run's reason while slurmctld does not (engine/supervisor)
REASON_CELLS = 60  # a reason is cut here: the whole of it is in `runs --json` and the run's console.log
_WITH_REASON = tuple(s for s in ENDED if s is not State.COMPLETED)  # a run that ended otherwise says why
_COUNTING_DOWN = tuple(s for s in ACTIVE if s not in (State.PREPARING, State.PAUSED))  # an ETA while steps are taken


def cut(text: str, width: int) -> str:
    """`text` in at most `width` cells, `…` marking a cut."""
    if cells(text) <= width:
        return text
    out, used = [], 0
    for c in text:
        used += cells(c)
        if used > width - 1:
            break
        out.append(c)
    return "".join(out) + "…"


_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/:,;()'\"]+/)+([^\s/:,;()'\"]+)")


def _reason(r: dict[str, Any]) -> str:
    said = str(r.get("reason") or "")
    waiting = (r["state"] == State.QUEUED and said.startswith((asha.WAITS, EXECUTOR_SILENT))  # an ASHA trial, Slurm down
               or r["state"] == State.PREPARING)  # a Slurm job in its queue, machines of [torchrun] not there yet
    if not (r["state"] in _WITH_REASON or waiting) or not r.get("reason"):
        return ""
    first = first_line(str(r["reason"]))
    # a path's folders fill the cell before the cause shows: its file name says which file (the whole is in --json)
    return cut(_PATH.sub(r"\1", first), REASON_CELLS)


def fmt_job(r: dict[str, Any]) -> str:
    """A run's Slurm job and its node: `12@node3`; `-` for none (the local executor)."""
    if not r.get("job_id"):
        return "-"
    return f"{r['job_id']}@{r['node']}" if r.get("node") else str(r["job_id"])


def runs_table(runs: list[dict[str, Any]], held: str | None = None, paused: frozenset[str] = frozenset(),
               daemon_down: bool = False) -> str:
    """`overnight runs` and the queue in `overnight status`; GPU: the GPU set of each active run (`0,1`, `CPU`);
    REASON (only when a run has one): why a run failed, stopped or was skipped. `held`: what keeps queued runs
    from starting, so that they do not read as merely waiting their turn; `paused`: the runs control/pause names
    (one that is queued and never started is passed by until it is resumed: control.passed_by); `daemon_down`: an
    active run's row is what the daemon last recorded, no longer counting down."""
    if not runs:
        return "no runs yet: drop a dataset into the inbox (or overnight add FILE)"
    reasons = [_reason(r) for r in runs]
    jobs = any(r.get("job_id") for r in runs)  # a Slurm home: where each run's job is
    head = ("RUN", "STATE", "GPU", *(("JOB",) if jobs else ()), "PRIO", "STEP", "LOSS", "EVAL", "ETA", "MODEL")
    rows: list[tuple[str, ...]] = [head + (("REASON",) if any(reasons) else ())]
    for r, reason in zip(runs, reasons):
        eta = fmt_duration(r["eta_s"]) if r["state"] in _COUNTING_DOWN and not daemon_down else "-"
        gpus = fmt_gpu_set(r.get("gpu_set")) if r["state"] in ACTIVE and not r.get("job_id") else "-"
        passed = control.passed_by(r["state"], r["id"], r.get("started"), paused)
        queued_held = (r["state"] == State.QUEUED and held) or passed
        state = "held" if queued_held else r["state"]
        job = fmt_job(r) if r["state"] != State.QUEUED else "-"  # a queued run's job ended: its next is not there yet
        rows.append((r["id"], state, gpus, *((job,) if jobs else ()), str(r["priority"]), _progress(r),
                     fmt_loss(r["loss"]), fmt_loss(r["eval_loss"]), eta, Path(r["base_model"] or "-").name)
                    + ((reason,) if any(reasons) else ()))
    lines = table(rows)
    queued = sum(r["state"] == State.QUEUED for r in runs)
    if held and queued:
        lines.append(f"queue held by {held}: {queued} queued run{'s wait' if queued > 1 else ' waits'}")
    lines += [f"{r['id']} held by control/pause (overnight resume {r['id']} lets it start)" for r in runs
              if control.passed_by(r["state"], r["id"], r.get("started"), paused) and not held]
    lines += [f"{r['id']} paused by its trainer: {first_line(r['reason'])}" for r in runs if waits_for_space(r)]
    if daemon_down:
        lines += [f"{r['id']} was {r['state']} when the daemon went away: it resumes from its last checkpoint when "
                  f"the daemon starts" for r in runs if r["state"] in ACTIVE]
    return "\n".join(lines)


def rejected_item(file: str, error: str) -> str:
    """`FILE: error`, the file named once when the error starts with it already."""
    return error if error.startswith(f"{file}:") else f"{file}: {error}"


def morning(failed: Sequence[Any], rejected: Sequence[Any], held: str | None, since_h: float,
            paused_all: bool = False, waiting: Sequence[str] = ()) -> list[str]:
    """`overnight status`: what needs the user, from daemon.core.morning (failed runs, rejected drops, a held queue,
    a control/pause holding every run, files alone in the inbox)."""
    window = f"{since_h:g} h"
    lines = []
    if held:
        lines.append(f"queue held by {held}")
    if paused_all:
        lines.append("every run paused by control/pause (overnight resume lifts it)")
    if failed:
        lines.append(f"failed in the last {window}:")
        lines += [f"  {f.id}: {f.reason}" for f in failed]
    if rejected:
        lines.append(f"rejected drops in the last {window} (newest first):")
        lines += [f"  {rejected_item(d.file, d.error)} (see {d.error_file})" for d in rejected]
    if waiting:
        lines.append("waiting in the inbox without their dataset:")
        lines += [f"  {w}" for w in waiting]
    return lines


def models(rows: list[dict[str, Any]]) -> str:
    """`overnight models`: one line a registered version; under a name none of whose versions is active, a line
    saying so (its active version was deleted: nothing took over, and `init_adapter = NAME` is refused)."""
    if not rows:
        return "no models yet: a completed run registers one"
    lines: list[str] = []
    for i, m in enumerate(rows):
        lines.append(_model_line(m))
        lines += _report_lines(m["metrics"].get("report") or {})
        last_of_name = i + 1 == len(rows) or rows[i + 1]["name"] != m["name"]
        same = [r for r in rows if r["name"] == m["name"]]
        if last_of_name and all(r["deleted"] for r in same):  # nothing to activate: the trash keeps the adapters
            lines.append(f"  {m['name']}: every version deleted (continue from one: init_adapter = its folder above, "
                         f"or train {m['name']} anew)")
        elif last_of_name and not any(r["active"] for r in same):
            lines.append(f"  {m['name']}: no active version (overnight activate {m['name']} V)")
    return "\n".join(lines)


def _model_line(m: dict[str, Any]) -> str:
    """`*` marks the active version of its name; ` ← v3` the version it continued from."""
    mark = "*" if m["active"] else " "
    state = f"  (deleted, in {m['adapter_path']})" if m["deleted"] else "  pinned" if m.get("pinned") else ""
    return (f"{mark} {m['name']} v{m['version']}{_lineage(m)}  run {m['run_id']}  "
            f"base {Path(m['base_model']).name}  loss {fmt_loss(m['metrics'].get('final_loss'))}{state}")


def _report_lines(report: dict[str, Any]) -> list[str]:
    """Under a version with an eval report: its eval scores beside its parent's and the base's, its forgetting
    score, and, when it is regressed, why and what it lost (daemon/core/evalreport.py)."""
    if not report:
        return []

    def scores(s: dict[str, Any] | None) -> str:
        return "-" if not s else f"exact {s['exact']:.2f} sim {s['similarity']:.2f} rougeL {s['rougeL']:.2f}"

    out = []
    if report.get("eval_records"):
        mine = {k: report.get(k) for k in ("exact", "similarity", "rougeL")}
        parent = f"  parent {scores(report.get('parent_scores'))}" if report.get("parent_scores") else ""
        out.append(f"    eval ({report['eval_records']} records): {scores(mine)}{parent}  "
                   f"base {scores(report.get('base_scores'))}")
    if report.get("forgetting") is not None:
        out.append(f"    forgetting {fmt_forgetting(report['forgetting'])} (general-text loss vs the "
                   f"{report.get('forgetting_vs')})")
    elif report.get("forgetting_note"):
        out.append(f"    forgetting n/a ({report['forgetting_note']})")
    if report.get("regressed"):
        out.append(f"    REGRESSED: {'; '.join(report.get('why') or [])}")
        for x in report.get("lost_items") or []:
            out.append(f"      lost {x['source']}: {_one_line(x['prompt'])!r} → {x['reference']!r} "
                       f"(parent: {x['parent_answer']!r}, now: {x['answer']!r})")
    return out


def _one_line(text: str, width: int = 40) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _lineage(model: dict[str, Any]) -> str:
    """` ← v3` when a version continued from an earlier one of its name, ` ← other:2` or ` ← /path` otherwise."""
    parent = model.get("parent")
    if not parent:
        return ""
    name, _, version = parent.rpartition(":")
    return f" ← v{version}" if name == model["name"] and version.isdigit() else f" ← {parent}"


def comparison(rows: list[dict[str, Any]], group: str | None) -> str:
    """`overnight compare`: a heading, then the table of `sweep.comparison` rows, best first."""
    from daemon.core.sweep import METRIC_LABEL
    metric = next((r["ranked_by"] for r in rows if r["ranked_by"]), None)
    ranked = sum(r["rank"] is not None for r in rows)
    counted = f"{len(rows)} run{'s' if len(rows) != 1 else ''}"
    head = f"group {group}: {counted}" if group else counted
    head += (f", {ranked} completed, ranked by {METRIC_LABEL[metric]} (best first)" if metric else
             ", none completed yet: not ranked")
    pruning = any(r.get("rungs") for r in rows)
    by = METRIC_COLUMN.get(metric or "")  # a report's metric ranked them: its column beside the losses
    cells = [["#", "RUN", "STATE", *([by] if by else []), "EVAL", "LOSS", "PROBES", "TOK/S", "TIME",
              *(["RUNGS"] if pruning else []), "OPTIONS THAT DIFFER"]]
    cells += [_comparison_row(r, pruning, bool(by)) for r in rows]
    lines = [head, *table(cells)]
    if pruning:
        lines.append("RUNGS: rN@STEP eval loss there (the training loss without an eval set), then ↑ went on, ✗ "
                     "pruned (resumable), … waiting, ↻ resumed")
    unlike = next((r["unlike"] for r in rows if r.get("unlike")), [])
    if unlike and metric:
        lines.append(f"note: these runs were trained or scored on different {' and '.join(unlike)} "
                     f"({', '.join(sorted({str(r['dataset']) for r in rows}))}): their figures measure different "
                     f"things, so the ranking says little about which is better")
    if any("objective" in r["options_that_differ"] for r in rows) and metric in ("eval_loss", "loss"):
        lines.append("note: these runs train different objectives (SFT's cross-entropy, DPO's and KTO's preference "
                     "losses): their losses are not on one scale, so the ranking says nothing about which is better")
    elif any("loss_type" in r["options_that_differ"] for r in rows) and metric in ("eval_loss", "loss"):
        lines.append("note: these runs differ in loss_type, whose losses are on different scales: the ranking by "
                     "loss does not say which prefers the chosen answers more (rank them by select_metric = "
                     "\"reward_accuracy\")")
    return "\n".join(lines)


RUNG_MARKS = {"promoted": "↑", "pruned": "✗", "waiting": "…", "resumed": "↻"}


def rung_cell(rungs: list[dict[str, Any]]) -> str:
    """An ASHA trial's rungs: `r1@3 2.310↑ r2@9 1.980✗`."""
    return " ".join(f"r{g['rung']}@{g['step']} {fmt_loss(g['metric'])}{RUNG_MARKS.get(g['decision'], '')}"
                    for g in rungs) or "-"


METRIC_COLUMN = {"exact": "EXACT", "similarity": "SIM", "rougeL": "ROUGE-L", "forgetting": "FORGET",
                 "reward_accuracy": "ACCURACY"}


def _comparison_row(r: dict[str, Any], pruning: bool = False, by: bool = False) -> list[str]:
    from daemon.core.sweep import compact
    probes = "-" if r["probes_learned"] is None else f"{r['probes_learned']}/{r['probes_total']}"
    opts = " ".join(f"{k}={compact(v) if isinstance(v, (int, float)) else v}"
                    for k, v in r["options_that_differ"].items())
    rank = f"{r['rank']}{' ★' if r['rank'] == 1 else ''}" if r["rank"] else "-"
    value = r.get("metric_value")
    shown = fmt_forgetting(value) if r["ranked_by"] == "forgetting" else f"{value:.3f}" if value is not None else ""
    score = [shown or "-"] if by else []
    return [rank, r["run_id"], r["state"], *score, fmt_loss(r["eval_loss"]), fmt_loss(r["final_loss"]), probes,
            fmt_rate(r["tokens_per_s"]), fmt_duration(r["seconds"]), *([rung_cell(r["rungs"])] if pruning else []), opts]


def verdict(v: Any) -> str:
    """`overnight check` for one file (a `checking.Verdict`): OK or ERROR, the facts, then the problems."""
    if v.role is None:  # not there at all: the problem is all there is to say
        return "\n".join(p.message for p in v.problems)
    head = f"{v.file}: OK" + (f" ({v.summary})" if v.summary else "") if v.ok else f"{v.file}: ERROR"
    # after facts, a problem is marked so that it stands out from them
    mark = "ERROR: " if v.facts else ""
    needs = [f"  {n}" for n in v.needs]
    return "\n".join([head, *(f"  {f}" for f in v.facts), *(mark + p.message for p in v.problems), *needs])


GREEN_BOLD, PLAIN = "\x1b[32m\x1b[1m", "\x1b[0m"  # ANSI, as click.style(fg="green", bold=True) writes it


def example(number: int, segments: list[dict[str, Any]], colour: bool, what: str = "example",
            of: str | None = None) -> str:
    """One example (or block) as the model sees it (`check --show`): trained text in green on a terminal, else in
    [[…]]; `of`: which record and side of a preference pair it is."""
    trained = sum(len(s["text"]) for s in segments if s["train"])
    body = "".join(f"{GREEN_BOLD}{s['text']}{PLAIN}" if s["train"] and colour else
                   f"[[{s['text']}]]" if s["train"] else s["text"] for s in segments)
    how = "trained text in green" if colour else "trained text in [[…]]"
    return f"--- {what} {number}{f': {of}' if of else ''} ({trained} of {sum(len(s['text']) for s in segments)} characters trained; {how})\n{body}"
