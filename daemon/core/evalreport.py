"""A version's eval report (runs/RUN_ID/eval_report.json), read and judged without torch.

The trainer writes it at the end of a completed run (daemon/trainer/report.py): the eval file's scores for the new
version, its parent and the base; the forgetting score (the loss on a general-text sample after training over the
loss before: the parent's, else the base's); the probes the parent knew re-asked of the new version; and what was
lost since the parent. The registry keeps `summary(report)` in the models table; `overnight models`, the dashboard
and `select = "best"` read that.

A version is *regressed* when it gets wrong a probe or eval record its parent got right, or when its forgetting score
passes `forgetting_alarm`; then a `regressed` notification goes out and no automatic activation picks it (unless
`allow_regressed`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from daemon.core.evolution import DEFAULT_THRESHOLD, is_exact, similarity

LOST_SHOWN = 20  # lost answers the registry keeps (the report file has them all)
# the least text a forgetting_sample must hold: a loss over a few tokens says nothing of forgetting (a sentence or
# two is ~50 tokens; the shipped sample is a few KB). Characters, so that `check` can count them without a tokenizer.
FORGETTING_SAMPLE_MIN_CHARS = 200
SCORES = ("exact", "similarity", "rougeL")  # per eval record; their means are a version's eval scores
REWARD_ACCURACY = "reward_accuracy"  # a DPO run's: the share of eval pairs whose chosen answer it rewards higher
# select_metric: what `select = "best"` ranks a group's versions by, and which way is better
RANKINGS = {"eval_loss": "lower", "exact": "higher", "similarity": "higher", "rougeL": "higher",
            "forgetting": "lower", REWARD_ACCURACY: "higher"}


def right(answer: str, reference: str) -> bool:
    """An answer counts as right as a probe counts as learned (daemon/core/evolution.py): exact, or close."""
    return is_exact(answer, reference) or similarity(answer, reference) >= DEFAULT_THRESHOLD


def forgetting_score(before: float | None, after: float | None) -> float | None:
    """The relative rise of the general-text loss: after / before - 1 (0.1: 10% higher than before)."""
    if before is None or after is None or before <= 0:
        return None
    return after / before - 1.0


def lost(items: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """The items (prompt, reference, `parent` and `version` answers) the parent got right and the version wrong."""
    return [{"source": source, "prompt": i["prompt"], "reference": i["reference"], "parent_answer": i["parent"],
             "answer": i["version"]}
            for i in items if i.get("parent") is not None and right(i["parent"], i["reference"])
            and not right(i["version"], i["reference"])]


def alarm(lost_items: list[dict[str, Any]], score: float | None, threshold: float) -> list[str]:
    """Why the version is regressed (empty: it is not)."""
    reasons = []
    probes = sum(x["source"] == "probe" for x in lost_items)
    records = len(lost_items) - probes
    if probes:
        reasons.append(f"{probes} probe(s) its parent answered right are now wrong")
    if records:
        reasons.append(f"{records} eval record(s) its parent answered right are now wrong")
    if score is not None and score > threshold:
        reasons.append(f"forgetting score {score:+.2%} (general-text loss), past forgetting_alarm = {threshold:g}")
    return reasons


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """What the registry keeps of a report (the models table's `report` column): the version's eval scores and the
    parent's and base's, the forgetting score, the count of what was lost, whether it is regressed and why."""
    if not report:
        return {}
    scores = (report.get("eval") or {}).get("scores") or {}
    forgetting = report.get("forgetting") or {}
    return {"parent": report.get("parent"), "eval_records": (report.get("eval") or {}).get("records"),
            **{k: (scores.get("version") or {}).get(k) for k in SCORES},
            "parent_scores": scores.get("parent"), "base_scores": scores.get("base"),
            "forgetting": forgetting.get("score"), "forgetting_vs": forgetting.get("before"),
            **({"forgetting_note": forgetting["note"]} if forgetting.get("note") else {}),  # why it is n/a
            REWARD_ACCURACY: (report.get("preference") or {}).get(REWARD_ACCURACY),
            "lost": len(report.get("lost") or []), "lost_items": (report.get("lost") or [])[:LOST_SHOWN],
            "regressed": bool(report.get("regressed")),
            "why": report.get("why") or []}


def parse_summary(text: str | None) -> dict[str, Any]:
    """The models table's `report` column (JSON text) as a dict; {} when empty or damaged."""
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def of_run(run_dir: str | Path | None) -> dict[str, Any]:
    """The summary of a run's eval report, read from its folder ({} without one)."""
    from daemon.core.atomic import read_json
    from daemon.core.rundir import RunFolder

    if not run_dir:
        return {}
    try:
        report = read_json(RunFolder(run_dir).eval_report, {}) or {}
    except (OSError, ValueError):
        return {}
    return summary(report) if isinstance(report, dict) else {}


def metric_value(run_dir: str | Path | None, metric: str) -> float | None:
    """A report metric of a run (`exact`, `similarity`, `rougeL`, `forgetting`, `reward_accuracy`): None when it
    has none."""
    value = of_run(run_dir).get(metric)
    return float(value) if isinstance(value, (int, float)) else None
