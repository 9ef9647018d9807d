"""Evolution analysis: which probes a run learned, forgot and relearned, and when (no torch).

The trainer appends one record per probe per snapshot to a run's `evolution.jsonl`
(`step, probe, prompt, reference, generation, loss, exact, similarity, time`). This module turns those records
into what `overnight evolution RUN [--json]` prints and the dashboard shows: each probe's answers over time
(compressed to the snapshots where the answer changed) and its learned / forgotten events.

A probe *matches* at a snapshot when its generation is an exact match or its similarity reaches the threshold.
It is *learned* at the first snapshot from which it matches, *forgotten* when a learned probe stops matching,
and may be learned again later; every such change is kept as an event. A preference probe (chosen/rejected)
matches while the model prefers its chosen answer: log p(chosen) > log p(rejected) after the prompt (`margin` > 0).
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import asdict, dataclass, field, replace
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Iterable

from daemon.core.rundir import read_jsonl

DEFAULT_THRESHOLD = 0.9
SNAPSHOTS_PER_RUN = 20  # what `probe_every = 0` aims for
# with `probe_every = 0`, snapshots (step 0 and the final one counted) are thinned out to stay under this share of
# the training time: under the 5% the SPEC promises, with a margin for a snapshot slower than the median
AUTO_MAX_OVERHEAD = 0.04
# the fewest snapshots the budget may thin a run to (step 0, the end, 3 between): fewer show no evolution at all
AUTO_MIN_SNAPSHOTS = 5


# --------------------------------------------------------------------------------------------- scoring

def normalize_text(text: str) -> str:
    """Whitespace-normalised, stripped text: what exact match compares."""
    return re.sub(r"\s+", " ", text).strip()


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) between two strings, two-row dynamic programming."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def answer_of(generation: str, reference: str) -> str:
    """What of a generation is scored against the reference: what follows the reasoning of a model that thinks
    first (Qwen3 and DeepSeek-R1 write "<think>…</think>" before the answer, an empty one with thinking off), which
    the reference (a user's answer) has none of: the model that learned "<think></think> Teal." learned "Teal."."""
    if "think>" in reference:
        return generation
    if "</think>" in generation:  # the prompt may have opened the block itself
        return generation.split("</think>", 1)[1]
    return "" if generation.lstrip().startswith("<think>") else generation  # still thinking: no answer yet


def similarity(generation: str, reference: str) -> float:
    """1 - levenshtein / max(len) on the normalised texts (`answer_of` the generation): 1.0 identical, 0.0 nothing in
    common.

    Long texts (over 2,000 characters together) use difflib's ratio instead, whose cost does not grow with the
    product of the lengths; both measure 0..1 with 1 meaning identical.
    """
    a, b = normalize_text(answer_of(generation, reference)), normalize_text(reference)
    if not a and not b:
        return 1.0
    if len(a) + len(b) > 2000:
        return SequenceMatcher(None, a, b, autojunk=False).ratio()
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def is_exact(generation: str, reference: str) -> bool:
    """Exact match after whitespace normalisation (`answer_of` the generation)."""
    return normalize_text(answer_of(generation, reference)) == normalize_text(reference)


def resolve_probe_every(probe_every: int, max_steps: int) -> tuple[int, float | None]:
    """The snapshot interval in steps and the time budget for `EvolutionCallback(every=, max_overhead=)`.

    `probe_every` > 0 is taken as given (no budget). 0 means automatic: about SNAPSHOTS_PER_RUN snapshots per
    run, thinned out where they would cost more than AUTO_MAX_OVERHEAD of the training time (a tiny model on a
    CPU trains so fast that even a small snapshot costs as much as a couple of steps), but never below
    AUTO_MIN_SNAPSHOTS per run (`EvolutionCallback(min_snapshots=)`).
    """
    if probe_every > 0:
        return probe_every, None
    every = max(1, round(max_steps / SNAPSHOTS_PER_RUN)) if max_steps > 0 else 50
    return every, AUTO_MAX_OVERHEAD


# --------------------------------------------------------------------------------------------- records

def is_probe_record(record: dict[str, Any]) -> bool:
    return "step" in record and "probe" in record


def load_records(path: Path) -> list[dict[str, Any]]:
    """Every complete probe record of an evolution.jsonl; [] when it does not exist yet (torn lines: rundir.py)."""
    return [r for r in read_jsonl(path) if is_probe_record(r)]


def snapshot_steps(records: Iterable[dict[str, Any]]) -> list[int]:
    """The distinct snapshot steps, ascending."""
    return sorted({int(r["step"]) for r in records})


# --------------------------------------------------------------------------------------------- analysis

@dataclass
class Answer:
    """What a probe answered at one snapshot."""

    step: int
    generation: str
    exact: bool
    similarity: float
    loss: float | None
    margin: float | None = None  # a preference probe: log p(chosen) - log p(rejected); > 0 prefers the chosen


@dataclass
class ProbeHistory:
    """One probe over the run: its answers (compressed), learned/forgotten events and where it stands now."""

    probe: int
    prompt: str
    reference: str
    answers: list[Answer]
    events: list[tuple[str, int]]
    learned_at: int | None  # first snapshot step from which it matched
    forgotten_at: int | None  # step it last stopped matching after being learned
    learned_now: bool
    latest: Answer
    # its answers were generated with this many tokens, fewer than its reference takes (probe_max_new_tokens with a
    # fixed probe_every): it can never be exact (stats.json's `answers_cut`, written by the trainer); None: in full
    cut_at: int | None = None

    @property
    def status(self) -> str:
        """'learned', 'relearned', 'forgotten' or 'not learned'."""
        if self.learned_now:
            return "relearned" if self.forgotten_at is not None else "learned"
        return "forgotten" if self.learned_at is not None else "not learned"


@dataclass
class EvolutionReport:
    """A run's evolution: every probe's history, the snapshot steps and a one-line summary."""

    probes: list[ProbeHistory]
    snapshots: list[int]
    threshold: float
    summary: str
    learned: int = 0
    forgotten: int = 0
    total: int = 0
    no_probes: str | None = None  # why this run will never have a snapshot (see `no_probes`); None: it may
    # what the version lost since its parent: the parent's probes and eval records it answered right and this run's
    # version does not (its eval report, daemon/core/evalreport.py); `parent` names the version it continued from
    lost: list[dict[str, Any]] = field(default_factory=list)
    parent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (`overnight evolution RUN --json`)."""
        out = asdict(self)
        for probe, history in zip(out["probes"], self.probes):
            probe["events"] = [{"event": kind, "step": step} for kind, step in history.events]
            probe["status"] = history.status
        return out


def _answer(record: dict[str, Any]) -> Answer:
    loss = record.get("loss")
    return Answer(step=int(record["step"]), generation=str(record.get("generation") or ""),
                  exact=bool(record.get("exact")), similarity=float(record.get("similarity") or 0.0),
                  loss=None if loss is None else float(loss),
                  margin=None if record.get("margin") is None else float(record["margin"]))


def _matches(answer: Answer, threshold: float) -> bool:
    """Learned: the answer matches the reference; for a preference probe, the model prefers the chosen answer."""
    if answer.margin is not None:
        return answer.margin > 0
    return answer.exact or answer.similarity >= threshold


def _compress(answers: list[Answer]) -> list[Answer]:
    """The answers where the generation changed from the snapshot before, plus the latest; a preference probe keeps
    every snapshot (its margin is the story, and it moves at each)."""
    kept = [a for i, a in enumerate(answers) if i == 0 or a.margin is not None
            or a.generation != answers[i - 1].generation]
    if kept[-1] is not answers[-1]:
        kept.append(answers[-1])
    return kept


def _history(probe_id: int, records: list[dict[str, Any]], threshold: float) -> ProbeHistory:
    by_step: dict[int, dict[str, Any]] = {}
    for record in records:
        by_step[int(record["step"])] = record  # a repeated step (should not happen): the newest wins
    answers = [_answer(by_step[s]) for s in sorted(by_step)]
    events: list[tuple[str, int]] = []
    matching = False
    for answer in answers:
        now = _matches(answer, threshold)
        if now != matching:
            events.append(("learned" if now else "forgotten", answer.step))
            matching = now
    learned = [s for kind, s in events if kind == "learned"]
    forgotten = [s for kind, s in events if kind == "forgotten"]
    newest = records[-1]
    return ProbeHistory(probe=probe_id, prompt=str(newest.get("prompt", "")),
                        reference=str(newest.get("reference", "")),
                        answers=_compress(answers), events=events, learned_at=learned[0] if learned else None,
                        forgotten_at=forgotten[-1] if forgotten else None, learned_now=matching, latest=answers[-1])


def _summary(probes: list[ProbeHistory], snapshots: list[int]) -> str:
    if not probes:
        return "no snapshots yet"
    learned = sum(p.learned_now for p in probes)
    parts = [f"{learned}/{len(probes)} learned"]
    relearned = sum(p.status == "relearned" for p in probes)
    if relearned:
        parts.append(f"{relearned} relearned")
    forgotten = sorted(p.forgotten_at for p in probes if p.status == "forgotten")
    if forgotten:
        steps = ", ".join(str(s) for s in forgotten)
        parts.append(f"{len(forgotten)} forgotten at step{'s' if len(forgotten) > 1 else ''} {steps}")
    snapped = f"{len(snapshots)} snapshot{'s' if len(snapshots) != 1 else ''}, latest step {snapshots[-1]}"
    return ", ".join(parts) + ("; " if forgotten else ", ") + snapped  # not read as one more forgotten step


def analyze(records: list[dict[str, Any]], threshold: float = DEFAULT_THRESHOLD,
            until: int | None = None) -> EvolutionReport:
    """Per-probe histories, learned/forgotten events and a summary from evolution records. `until`: the step the
    adapter's weights are from when it is not the last (`kept_step`): later snapshots asked weights not kept, and
    would call forgotten what the adapter knows."""
    later = snapshot_steps([r for r in records if until is not None and r["step"] > until])
    records = [r for r in records if r["step"] not in later]
    grouped: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        grouped.setdefault(int(record["probe"]), []).append(record)
    probes = [_history(pid, grouped[pid], threshold) for pid in sorted(grouped)]
    snapshots = snapshot_steps(records)
    summary = _summary(probes, snapshots) + (
        f"; the adapter holds step {until} (early stopping): {len(later)} later snapshot"
        f"{'s' if len(later) != 1 else ''} of weights not kept left out" if later else "")
    return EvolutionReport(probes=probes, snapshots=snapshots, threshold=threshold,
                           summary=summary, learned=sum(p.learned_now for p in probes),
                           forgotten=sum(p.status == "forgotten" for p in probes), total=len(probes))


def kept_step(run_dir: Path | str | None) -> int | None:
    """The step the run's adapter is from when early stopping kept an earlier checkpoint (result.json), else None."""
    from daemon.core.atomic import read_json
    from daemon.core.rundir import RunFolder
    if not run_dir:
        return None
    try:
        step = (read_json(RunFolder(Path(run_dir)).result, {}) or {}).get("adapter_step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None


def no_probes(run_dir: Path) -> str | None:
    """Why a run has no probes to ask, from what it was given (config.json) and what its trainer held out
    (stats.json's split); None while it has some or may still get some. A missing snapshot alone says nothing:
    the first one comes only when training starts."""
    from daemon.core.atomic import read_json
    from daemon.core.datasets import TEXT_SCHEMAS
    from daemon.core.probes import probe_shortfall
    from daemon.core.rundir import RunFolder
    from daemon.core.runconfig import RunConfig

    folder = RunFolder(run_dir)
    config = RunConfig.read(folder.root)
    if config.empty or config.probes:  # a probe file holds at least one probe
        return None
    try:
        split = (read_json(folder.stats, {}) or {}).get("split")
    except (OSError, ValueError, AttributeError):
        split = None
    held = split.get("probes") if isinstance(split, dict) else None
    if isinstance(held, int) and held > 0:
        return None
    dataset = config.dataset
    stem = Path(str(dataset.get("file") or dataset.get("path") or "NAME.jsonl")).stem
    if dataset.get("schema") in TEXT_SCHEMAS:  # the trainer holds none out of text: nothing to ask, nothing to match
        return (f"this run has no probes (plain text has no question to ask; drop {stem}.probes.jsonl beside the "
                f"dataset to watch some)")
    count = config.options.get("probe_count")
    if count == 0:
        return "this run has no probes (probe_count = 0 and no probe file)"
    if held == 0:
        records = dataset.get("records") if isinstance(dataset.get("records"), int) else _records_of(split)
        why = probe_shortfall(records, count) if isinstance(count, int) and records is not None else None
        return f"this run has no probes ({why or 'none could be held out of its dataset'}; drop {stem}.probes.jsonl " \
               f"beside the dataset to watch some)"
    return None


def _records_of(split: dict[str, Any] | None) -> int | None:
    """The dataset's record count as the trainer's split adds it up (a run folder whose config.json lacks it)."""
    parts = [split.get(k) for k in ("train", "eval", "probes")] if isinstance(split, dict) else []
    return sum(parts) if parts and all(isinstance(n, int) for n in parts) else None


def run_report(run_dir: Path, records: list[dict[str, Any]], threshold: float = DEFAULT_THRESHOLD) -> EvolutionReport:
    """`analyze`, and for a run without snapshots the reason it will never have one (its summary then says it);
    with what its version lost since its parent, once its eval report is written."""
    report = with_cut(with_lost(analyze(records, threshold, kept_step(run_dir)), run_dir), run_dir)
    if report.probes:
        return report
    reason = no_probes(run_dir)
    return replace(report, no_probes=reason, summary=reason) if reason else report


ANSWERS_CUT = "answers_cut"  # stats.json: {"tokens": N, "probes": [ids]}, the probes answered with too few tokens


def with_cut(report: EvolutionReport, run_dir: Path) -> EvolutionReport:
    """The report with each probe whose answers were cut short of its reference marked (`cut_at`)."""
    from daemon.core.atomic import read_json
    from daemon.core.rundir import RunFolder

    try:
        cut = (read_json(RunFolder(run_dir).stats, {}) or {}).get(ANSWERS_CUT)
    except (OSError, ValueError, AttributeError):
        return report
    if not isinstance(cut, dict) or not isinstance(cut.get("tokens"), int) or not isinstance(cut.get("probes"), list):
        return report
    ids = set(cut["probes"])
    probes = [replace(p, cut_at=cut["tokens"]) if p.probe in ids else p for p in report.probes]
    return replace(report, probes=probes)


def with_lost(report: EvolutionReport, run_dir: Path) -> EvolutionReport:
    """The report with what the run's version lost since its parent (eval_report.json's `lost`), if it says."""
    from daemon.core.atomic import read_json
    from daemon.core.rundir import RunFolder

    try:
        data = read_json(RunFolder(run_dir).eval_report, {}) or {}
    except (OSError, ValueError):
        return report
    lost = data.get("lost") if isinstance(data, dict) else None
    if not isinstance(lost, list):
        return report
    return replace(report, lost=[x for x in lost if isinstance(x, dict)], parent=data.get("parent"))


# --------------------------------------------------------------------------------------------- text

def _one_line(text: str) -> str:
    return text.replace("\r", "").replace("\n", "⏎ ")


def _clip(text: str, width: int) -> str:
    text = _one_line(text)
    return text if len(text) <= width else text[: max(1, width - 1)] + "…"


def _status_line(p: ProbeHistory) -> str:
    story = ", ".join(f"{kind} at step {step}" for kind, step in p.events)
    label = {"learned": "LEARNED", "relearned": "RELEARNED", "forgotten": "FORGOTTEN", "not learned": "NOT LEARNED"}
    cut = f"  answers cut at {p.cut_at} tokens: never exact" if p.cut_at is not None else ""
    return f"probe {p.probe}  {label[p.status]}" + (f"  ({story})" if story else "") + cut


def answer_mark(a: Answer) -> str:
    """How an answer compares: `margin +1.25` for a preference probe, else `exact` or `sim 0.83`."""
    if a.margin is not None:
        return f"margin {a.margin:+.2f}"
    return "exact" if a.exact else f"sim {a.similarity:.2f}"


def _answer_line(a: Answer, width: int) -> str:
    mark = answer_mark(a)
    loss = "" if a.loss is None else f"loss {a.loss:6.3f}"
    head = f"  step {a.step:>6}  {mark:<9} {loss:<12} "
    return head + _clip(f"\"{a.generation}\"", width - len(head))


def format_report(report: EvolutionReport, width: int = 100) -> str:
    """The human text of `overnight evolution RUN`: one block per probe, then the summary line."""
    if not report.probes:
        if report.no_probes:
            return report.no_probes[0].upper() + report.no_probes[1:] + ".\n"
        return "No evolution snapshots yet: the first one is taken when training starts.\n"
    blocks = []
    for p in report.probes:
        lines = [*textwrap.wrap(_status_line(p), width=width, subsequent_indent="    "),
                 _clip(f"  prompt:    {p.prompt.strip()}", width),
                 _clip(f"  reference: {p.reference.strip()}", width)]
        lines += [_answer_line(a, width) for a in p.answers]
        blocks.append("\n".join(lines))
    summary = textwrap.fill(report.summary, width=width)
    return "\n\n".join(blocks + _lost_block(report, width)) + "\n\n" + summary + "\n"


def _lost_block(report: EvolutionReport, width: int) -> list[str]:
    """`LOST SINCE support:1`: each answer the parent had right that this version gets wrong."""
    if not report.lost:
        return []
    lines = [f"LOST SINCE {report.parent}: {len(report.lost)} answer(s) the parent had right are now wrong"]
    for x in report.lost:
        lines += [_clip(f"  {x.get('source')}: {str(x.get('prompt', '')).strip()}", width),
                  _clip(f"    reference: {x.get('reference')}   parent: \"{x.get('parent_answer')}\"   "
                        f"now: \"{x.get('answer')}\"", width)]
    return ["\n".join(lines)]
