"""The end-of-run report of a new version (runs/RUN_ID/eval_report.json): what it knows and what it forgot.

Run in the trainer process once the adapter is saved, with the model still loaded, on three models in turn: the new
version (the trained adapter), its parent (the adapter it continued from, `init_adapter`, loaded beside it as a
second peft adapter) and the base (the adapters switched off). Each answers, greedy:
- the eval file's records (NAME.eval.jsonl, else the parent's, else `eval_file` in overnight.toml), scored by exact
  match, similarity (as the evolution view scores) and ROUGE-L (Google's `rouge-score`);
- the probes its parent knew (the parent's report lists them: its own probes and those it inherited), re-asked.
And each gets its loss on a general-text sample (`forgetting_sample`, or the shipped prose of
daemon/trainer/data/general_text.txt): the forgetting score is the new version's over its parent's (else the
base's), minus one. What the parent answered right and the new version does not is `lost`; lost answers or a
forgetting score past `forgetting_alarm` make the version regressed (daemon/core/evalreport.py judges).

A report that fails is one console line: the run completed, its adapter is saved, and nothing here may change that.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from daemon.core import evalreport
from daemon.core.atomic import read_json, write_json
from daemon.core.evalfile import load_eval_file, owner_eval_file
from daemon.core.evolution import answer_of, is_exact, similarity
from daemon.core.render import fmt_forgetting
from daemon.core.rundir import in_this_home, read_jsonl
from daemon.core.probes import MAX_PROBES
from daemon.trainer.snapshots import EncodedProbe, encode_probe, fit_to_length, generate_answers

SAMPLE = Path(__file__).parent / "data" / "general_text.txt"  # a few KB of plain English prose, written for overnight
BATCH = 16  # records per generate() call
# tokens generated past a reference's own count: the same answer may take a few more tokens than the reference
ANSWER_MARGIN = 8
SAMPLE_BLOCK = 256  # tokens per block of the general-text sample (shorter when the run's max_length is)
SAMPLE_MIN_TOKENS = 2  # a block's first token predicts nothing: a loss needs 2 tokens or more
PARENT = "parent"  # the peft adapter name the parent is loaded under, beside the trained one


def write_report(built: Any, say: Callable[[str], None]) -> dict[str, Any] | None:
    """Score the new version, its parent and the base; write eval_report.json; say one line. None when it failed."""
    started = time.perf_counter()
    try:
        report = _report(built, say)
    except Exception as e:  # noqa: BLE001 - the run completed: a report that breaks must not change that
        say(f"eval report: could not be made ({type(e).__name__}: {e}); the version is registered without one")
        return None
    report["seconds"] = round(time.perf_counter() - started, 2)
    write_json(built.session.cfg.paths.eval_report, report)
    say(_line(report))
    return report


def _line(report: dict[str, Any]) -> str:
    scores = report["eval"]["scores"]
    ev = ("eval " + ", ".join(f"{who} {_scores(scores[who])}" for who in ("version", "parent", "base") if scores.get(who))
          if scores else "no eval file")
    f = report["forgetting"]
    score = (f"{fmt_forgetting(f['score'])} vs the {f['before']}" if f.get("score") is not None else
             f"n/a ({f['note']})" if f.get("note") else "n/a")
    lost = f"; lost since the parent: {len(report['lost'])}" if report.get("parent") else ""
    accuracy = (report.get("preference") or {}).get("reward_accuracy")
    ev += f"; eval reward accuracy {accuracy:.2f}" if accuracy is not None else ""
    alarm = f"; REGRESSED: {'; '.join(report['why'])}" if report["regressed"] else ""
    return f"eval report: {ev}; forgetting {score}{lost}; {report['seconds']:.1f} s{alarm}"


def _scores(s: dict[str, Any]) -> str:
    return f"exact {s['exact']:.2f} similarity {s['similarity']:.2f} rougeL {s['rougeL']:.2f}"


def _report(built: Any, say: Callable[[str], None]) -> dict[str, Any]:
    s = built.session
    cfg, opts = s.cfg, s.cfg.options
    stops = built.stops
    home = cfg.paths.root.parent.parent
    folders = _parent_folders(cfg, home)
    parent_report = _parent_report(folders)
    eval_path = eval_file_of(cfg.paths.root, cfg.file.eval_file, parent_report, opts.eval_file, home, folders)
    _say_parents_file_gone(parent_report, home, folders, eval_path, cfg.file.eval_file, say)
    records = _as_asked(load_eval_file(eval_path), s.prompt_chat) if eval_path else []
    inherited = _parent_knowledge(parent_report)
    model, tokenizer = built.model, built.tokenizer
    encode = _Encoder(tokenizer, stops, opts.max_length)
    asked_eval, asked_probes = encode(records), encode(_as_asked(inherited, s.prompt_chat))
    budget = _Budget(stops, opts.probe_max_new_tokens, opts.max_length)
    budget.say_longer([*asked_eval, *asked_probes], say)
    sample_path = owner_eval_file(opts.forgetting_sample, home) or SAMPLE
    blocks = _sample_blocks(tokenizer, sample_path.read_text(encoding="utf-8"), min(SAMPLE_BLOCK, opts.max_length))
    answers: dict[str, dict[str, Any]] = {}
    with _evaluating(model):
        for who in _models(model, cfg.init_adapter):
            answers[who] = {
                "eval": _answer(model, tokenizer, asked_eval, budget),
                "probes": _answer(model, tokenizer, asked_probes, budget) if who != "base" else [],
                "loss": _sample_loss(model, blocks, tokenizer)}
    report = _assemble(cfg, records, inherited, answers, eval_path, sample_path, sum(len(b) for b in blocks),
                       data_probes=built.data.probes)
    accuracy = reward_accuracy(cfg.paths.metrics, s.result.eval_loss)
    if accuracy is not None:
        report["preference"] = {"reward_accuracy": accuracy}
    return report


def reward_accuracy(metrics: Path, eval_loss: float | None) -> float | None:
    """A DPO run's eval reward accuracy (the share of eval pairs whose chosen answer it rewards above the rejected,
    TRL's eval_rewards/accuracies) at the eval the adapter's eval loss comes from: the last one, or the best
    checkpoint's after early stopping. None without an eval of pairs."""
    evals = [r for r in read_jsonl(metrics) if r.get("eval_rewards/accuracies") is not None]
    held = [r for r in evals if eval_loss is not None and r.get("eval_loss") is not None
            and math.isclose(r["eval_loss"], eval_loss, rel_tol=1e-5)]
    chosen = (held or evals)[-1:]
    return round(float(chosen[0]["eval_rewards/accuracies"]), 6) if chosen else None


def _as_asked(probes: list[dict[str, Any]], prompt_chat: bool) -> list[dict[str, Any]]:
    """Prompt records asked the way training asks them: as a user turn when the run shows prompts as chat."""
    if not prompt_chat:
        return probes
    return [p if p.get("messages") else {**p, "messages": [{"role": "user", "content": p["prompt"]}]} for p in probes]


def _parent_folders(cfg: Any, home: Path) -> tuple[Path, Path] | None:
    """The run folder of the version this run continued from, as config.json recorded it and where it is in this
    home now (None for a fresh adapter). A moved or copied home records the other home's path: the parent is
    looked for here (`rundir.in_this_home`'s rule), never there."""
    source = (cfg.file.init_adapter or {}).get("source")
    if not cfg.init_adapter or not source:
        return None
    return Path(source).parent, Path(in_this_home(home, source) or source).parent


def _parent_report(folders: tuple[Path, Path] | None) -> dict[str, Any]:
    """The eval report of the version this run continued from ({} for a fresh adapter, or a parent without one)."""
    if folders is None:
        return {}
    try:
        report = read_json(folders[1] / "eval_report.json", {}) or {}
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def eval_file_of(run_dir: Path, dropped: str | None, parent_report: dict[str, Any], owners: str | None,
                 home: Path, parent_folders: tuple[Path, Path] | None = None) -> Path | None:
    """The eval file a run is scored on: the one dropped with its dataset, else its parent's (a lineage's records
    are followed from version to version), else the owner's `eval_file`. `parent_folders`: the parent's run folder
    as recorded and as it is now (`_parent_folders`), where the parent's report names a file of a moved home."""
    if dropped:
        return run_dir / dropped
    return _inherited_eval_file(parent_report, home, parent_folders) or owner_eval_file(owners, home)


def _inherited_eval_file(parent_report: dict[str, Any], home: Path,
                         parent_folders: tuple[Path, Path] | None = None) -> Path | None:
    """A child without an eval file of its own is scored on its parent's: its eval records are followed from one
    version to the next as its probes are. The report recorded the file's absolute path: in a moved or copied home
    it is found where it is now (`_here`), never in the other home."""
    file = (parent_report.get("eval") or {}).get("file")
    if not file:
        return None
    path = _here(Path(file), parent_report.get("run_id"), home, parent_folders)
    return path if path.is_file() else None


def _here(recorded: Path, run_id: Any, home: Path, parent_folders: tuple[Path, Path] | None) -> Path:
    """Where a file the parent's report recorded is in this home: the parent's own file (under runs/RUN_ID/,
    its eval file dropped with its dataset) in the parent's run folder as it is now; another file of the home the
    parent was recorded in (a grandparent's, the owner's eval_file) at the same place in this home; a file outside
    that home as recorded."""
    if parent_folders is None:
        return recorded
    was, now = parent_folders
    parts = recorded.parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "runs" and parts[i + 1] == run_id:
            return now.joinpath(*parts[i + 2:])
    old_home = was.parent.parent if was.parent.name in ("runs", "trash") else None
    if old_home is not None and old_home != home and recorded.is_relative_to(old_home):
        return home / recorded.relative_to(old_home)
    return recorded


def _say_parents_file_gone(parent_report: dict[str, Any], home: Path, folders: tuple[Path, Path] | None,
                           used: Path | None, dropped: str | None, say: Callable[[str], None]) -> None:
    """The parent's eval file, not found in this home (deleted, or left in the home this one was copied from), is
    said: its records can no longer be followed to this version."""
    named = (parent_report.get("eval") or {}).get("file")
    if not named or dropped or _inherited_eval_file(parent_report, home, folders) is not None:
        return
    instead = f"scored on the owner's eval_file {used} instead" if used else "no eval file to score"
    say(f"eval report: the parent's eval file {named} is not in this home: {instead}. Fix: drop NAME.eval.jsonl "
        f"with the dataset to score this lineage on it again")


def _parent_knowledge(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The probes the parent knew: those its own report lists (its run's probes and what it inherited)."""
    known = report.get("known")
    return [p for p in known if isinstance(p, dict) and p.get("prompt") is not None] if isinstance(known, list) else []


class _Encoder:
    """Records as token ids, laid out as the evolution probes are (and cut to max_length alike)."""

    def __init__(self, tokenizer: Any, stops: Sequence[int], max_length: int) -> None:
        self.tokenizer, self.stops, self.max_length = tokenizer, stops, max_length

    def __call__(self, records: list[dict[str, Any]]) -> list[EncodedProbe]:
        return [fit_to_length(encode_probe(self.tokenizer, r, self.stops, self.max_length), self.max_length)[0]
                for r in records]


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode without gradients; the trained adapter active again after."""
    trained = model.active_adapter
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.set_adapter(trained)


def _models(model: Any, parent: Path | None) -> Iterator[str]:
    """Make each model current in turn: the new version, its parent (a second adapter), the base (adapters off)."""
    trained = model.active_adapter
    yield "version"
    if parent is not None:
        model.load_adapter(str(parent), adapter_name=PARENT, is_trainable=False)
        model.set_adapter(PARENT)
        try:
            yield "parent"
        finally:
            model.set_adapter(trained)
            model.delete_adapter(PARENT)
    with model.disable_adapter():
        yield "base"


def reference_tokens(enc: EncodedProbe, stops: Sequence[int]) -> int:
    """The tokens of a record's reference answer, its closing stop token (eos, end of turn) not counted: generation
    ends there and the answer is decoded without it."""
    ids = enc.reference_ids
    return len(ids) - 1 if ids and ids[-1] in stops else len(ids)


def answer_budget(enc: EncodedProbe, stops: Sequence[int], floor: int, cap: int) -> int:
    """How many tokens to generate for a record: `floor` (probe_max_new_tokens), or, for a longer reference, its
    count plus ANSWER_MARGIN, at most `cap` (max_length: no longer sequence was ever trained). A reference longer
    than the floor could otherwise never be answered word for word."""
    need = reference_tokens(enc, stops)
    return floor if need <= floor else max(floor, min(need + ANSWER_MARGIN, cap))


@dataclass(frozen=True)
class _Budget:
    """The end-of-run report's generation budget (`answer_budget`) for the run's stops and options."""

    stops: Sequence[int]
    floor: int  # probe_max_new_tokens
    cap: int  # max_length

    def of(self, enc: EncodedProbe) -> int:
        return answer_budget(enc, self.stops, self.floor, self.cap)

    def say_longer(self, asked: list[EncodedProbe], say: Callable[[str], None]) -> None:
        """Said once: records whose reference is longer than probe_max_new_tokens are answered further."""
        longer = [e for e in asked if reference_tokens(e, self.stops) > self.floor]
        if longer:
            say(f"eval report: {len(longer)} of {len(asked)} record(s) have a reference longer than "
                f"probe_max_new_tokens = {self.floor} tokens: each is answered up to its reference's length + "
                f"{ANSWER_MARGIN} tokens (at most max_length {self.cap}), so that it can be answered in full")


def _answer(model: Any, tokenizer: Any, asked: list[EncodedProbe], budget: _Budget) -> list[str]:
    """Greedy answers in the records' order, generated in batches of records of like budgets (a batch runs until
    its longest budget, or until every row has stopped)."""
    budgets = [budget.of(e) for e in asked]
    order = sorted(range(len(asked)), key=budgets.__getitem__)
    out = [""] * len(asked)
    for i in range(0, len(order), BATCH):
        chunk = order[i:i + BATCH]
        texts = generate_answers(model, tokenizer, [asked[k] for k in chunk], budget.stops,
                                 max(budgets[k] for k in chunk))
        for k, text in zip(chunk, texts):
            out[k] = text
    return out


def _sample_blocks(tokenizer: Any, text: str, block: int) -> list[list[int]]:
    """The general-text sample as blocks of `block` tokens (the last, shorter one kept when it has
    SAMPLE_MIN_TOKENS or more)."""
    # cut into blocks below: the tokenizer's warning that the whole text exceeds the model's context is moot
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    blocks = [ids[i:i + block] for i in range(0, len(ids), block)]
    return [b for b in blocks if len(b) >= SAMPLE_MIN_TOKENS]


def _sample_loss(model: Any, blocks: list[list[int]], tokenizer: Any) -> float | None:
    """Mean cross-entropy per predicted token over the sample's blocks (teacher-forced); None without a block (a
    sample of one token predicts nothing: 0.0 would read as a perfect loss)."""
    if not blocks:
        return None
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(blocks), BATCH):
        batch = blocks[i:i + BATCH]
        width = max(len(b) for b in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, b in enumerate(batch):
            ids[k, :len(b)], mask[k, :len(b)] = torch.tensor(b), 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                 ignore_index=-100, reduction="sum")
        total, count = total + loss.item(), count + int((labels != -100).sum())
    return total / max(count, 1)


def _scored(answers: list[str], records: list[dict[str, Any]]) -> dict[str, float] | None:
    """Means over the records: exact match, similarity and ROUGE-L F1."""
    if not records:
        return None
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    n = len(records)
    return {"exact": round(sum(is_exact(a, r["reference"]) for a, r in zip(answers, records)) / n, 4),
            "similarity": round(sum(similarity(a, r["reference"]) for a, r in zip(answers, records)) / n, 4),
            "rougeL": round(sum(scorer.score(r["reference"], answer_of(a, r["reference"]))["rougeL"].fmeasure
                                for a, r in zip(answers, records)) / n, 4)}


def _items(records: list[dict[str, Any]], answers: dict[str, dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [{"prompt": r["prompt"], "reference": r["reference"],
             **{who: a[kind][i] if a[kind] else None for who, a in answers.items()}} for i, r in enumerate(records)]


def _known(own: list[dict[str, Any]], inherited: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The probes a child of this version re-asks: the run's own, then the parent's (once each, MAX_PROBES)."""
    keep = ("prompt", "reference", "messages", "tools")
    seen, out = set(), []
    for p in [*own, *inherited]:
        if p.get("kind") is not None:  # a preference probe has no single right answer to re-ask
            continue
        key = (p["prompt"], repr(p.get("messages")))
        if key not in seen:
            seen.add(key)
            out.append({k: p.get(k) for k in keep})
    return out[:MAX_PROBES]


def _assemble(cfg: Any, records: list[dict[str, Any]], inherited: list[dict[str, Any]],
              answers: dict[str, dict[str, Any]], eval_path: Path | None, sample: Path, tokens: int,
              data_probes: list[dict[str, Any]]) -> dict[str, Any]:
    parent = "parent" in answers
    loss = {who: None if a["loss"] is None else round(a["loss"], 6) for who, a in answers.items()}
    before = "parent" if parent else "base"
    score = evalreport.forgetting_score(loss[before], loss["version"])
    # no loss without a block of 2 tokens (one predicts the next): said, never stored as a loss of 0.0
    short = None if loss["version"] is not None else (
        f"sample too short: {sample.name} is under {SAMPLE_MIN_TOKENS} tokens")
    eval_items, probe_items = _items(records, answers, "eval"), _items(inherited, answers, "probes")
    lost = evalreport.lost(probe_items, "probe") + evalreport.lost(eval_items, "eval")
    why = evalreport.alarm(lost, score, float(cfg.options.forgetting_alarm))
    return {
        "run_id": cfg.run_id, "parent": cfg.parent,
        "eval": {"file": str(eval_path) if eval_path else None, "records": len(records),
                 "scores": {who: _scored(a["eval"], records) for who, a in answers.items()} if records else {},
                 "answers": eval_items},
        "forgetting": {"sample": str(sample), "tokens": tokens, "loss": loss, "before": before,
                       "score": None if score is None else round(score, 6), **({"note": short} if short else {})},
        "probes": {"asked": len(inherited), "answers": probe_items},
        "lost": lost, "regressed": bool(why), "why": why,
        "known": _known(data_probes, inherited),
    }
