"""The morning after: `overnight ask`, `overnight chat` and `overnight compare --answers` (their logic; cli.py holds
the verbs). The models are loaded and asked by `daemon/trainer/answers.py`; this module lays out what they said."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from daemon.core.dataformats import line_column
from daemon.core.errors import DatasetError
from daemon.core.evolution import DEFAULT_THRESHOLD, is_exact, load_records, similarity
from daemon.core.render import cells, cut
from daemon.core.runconfig import RunConfig
from daemon.core.rundir import RunFolder

_PROMPTS_FIX = ('write one JSON object per line: {"prompt": "...", "reference": "..."} or {"messages": [...]}, the '
                'reference optional')


# ------------------------------------------------------------------------------------------------ ask

def side_by_side(columns: Sequence[tuple[str, str]], width: int) -> str:
    """Each (title, text) in a column of its own, wrapped to fit `width` cells together."""
    gap = 3
    col = max(12, (width - gap * (len(columns) - 1)) // max(len(columns), 1))
    wrapped = [[cut(title, col), "─" * min(col, max(cells(title), 8))] +
               [line for para in (text or "(empty)").splitlines() or [""] for line in
                textwrap.wrap(para, col, replace_whitespace=False, drop_whitespace=True) or [""]]
               for title, text in columns]
    height = max(len(w) for w in wrapped)
    rows = []
    for i in range(height):
        parts = [(w[i] if i < len(w) else "") for w in wrapped]
        rows.append((" " * gap).join(p + " " * (col - cells(p)) for p in parts).rstrip())
    return "\n".join(rows)


def ask_text(result: dict[str, Any], width: int) -> str:
    where = f"(on {result['device']}: {result['device_why']})"
    return side_by_side([(a["model"], a["answer"]) for a in result["answers"]], width) + "\n" + where


# ------------------------------------------------------------------------------------------------ chat

def chat(home: Path, ref: str, base: bool, read: Callable[[str], str], write: Callable[[str], None],
         max_new_tokens: int, device: str = "auto") -> None:
    """A terminal conversation with one version (or, with `base`, its base model through its template).

    Each answer streams as it is generated. A run trained on conversations keeps the whole exchange as context
    (`/reset` forgets it); a run trained on raw prompts is asked each line alone, as it was trained. Ctrl-C stops
    an answer; EOF, Ctrl-C at the prompt or `/exit` ends it."""
    from daemon.trainer.answers import BASE, Answerer, pick_device, targets

    chosen = targets(home, [ref], base)
    label = BASE if base else chosen[0].label
    shown = f"{chosen[0].label}'s base model" if base else label
    chosen = [t for t in chosen if t.label == label]  # the base: asked through the version's template, no adapter
    where, why = pick_device(home, chosen, device)
    answerer = Answerer(home, chosen, where, write_line(write))
    voice = next(v for v in answerer.voices if v.target.label == label)
    mode = ("a conversation: each answer is kept as context (/reset forgets it)" if voice.chat else
            "raw prompts, each line asked alone (the run trained on prompts, not conversations)")
    write(f"chatting with {shown} on {where} ({why}); {mode}. Ctrl-C stops an answer; /exit or Ctrl-D ends.\n")
    history: list[dict[str, Any]] = []
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        text = line.strip()
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            history.clear()
            write("(conversation forgotten)\n")
            continue
        if not text:
            continue
        question: str | list[dict[str, Any]] = [*history, {"role": "user", "content": line}] if voice.chat else line
        write(f"{label}> ")
        pieces = []
        try:
            for piece in answerer.stream(label, question, max_new_tokens):
                pieces.append(piece)
                write(piece)
        except KeyboardInterrupt:  # Ctrl-C stops this answer (kept as far as it went); Ctrl-D ends the chat
            write(" [stopped]")
        write("\n")
        if voice.chat:
            history = [*question, {"role": "assistant", "content": "".join(pieces).strip()}]  # type: ignore[misc]


def write_line(write: Callable[[str], None]) -> Callable[[str], None]:
    return lambda line: write(line + "\n")


# ------------------------------------------------------------------------------------------------ compare --answers

def load_prompts(path: Path) -> list[dict[str, Any]]:
    """A prompts file: JSON lines of {"prompt"} or {"messages"}, each with an optional "reference" (a conversation
    ending with an assistant turn and no reference: that turn is the reference)."""
    found: list[dict[str, Any]] = []
    file = str(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(file, None, None, f"cannot read it ({getattr(e, 'strerror', None) or e})",
                           "give a readable UTF-8 JSON Lines file") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(file, where, None, f"malformed JSON ({e.msg}, column {line_column(e, line)})",
                               _PROMPTS_FIX) from None
        if not isinstance(record, dict):
            raise DatasetError(file, where, None, f"expected a JSON object, got {type(record).__name__}", _PROMPTS_FIX)
        found.append(_prompt_record(record, file, where))
    if not found:
        raise DatasetError(file, None, None, "the file holds no prompts", _PROMPTS_FIX)
    return found


def _prompt_record(record: dict[str, Any], file: str, where: str) -> dict[str, Any]:
    reference = record.get("reference")
    if reference is not None and not (isinstance(reference, str) and reference.strip()):
        raise DatasetError(file, where, "reference", f"must be a non-empty string, got {reference!r} (an empty "
                           f"answer would score exact)", _PROMPTS_FIX)
    messages = record.get("messages")
    if messages is not None:
        if not (isinstance(messages, list) and messages and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages)):
            raise DatasetError(file, where, "messages", "must be a non-empty list of {\"role\", \"content\"} turns",
                               _PROMPTS_FIX)
        if reference is None and messages[-1]["role"] == "assistant":
            messages, reference = messages[:-1], messages[-1]["content"]
        users = [m["content"] for m in messages if m["role"] == "user"]
        if not users:
            raise DatasetError(file, where, "messages", "the conversation has no user turn to answer", _PROMPTS_FIX)
        return {"prompt": users[-1], "messages": messages, "reference": reference, "where": where}
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DatasetError(file, where, "prompt", "a non-empty \"prompt\" (or \"messages\") is required", _PROMPTS_FIX)
    return {"prompt": prompt, "messages": None, "reference": reference}


def run_probes(run_dirs: Iterable[Path]) -> list[dict[str, Any]]:
    """The probes the runs asked (their probe file, else the held-out probes their snapshots recorded), each once."""
    from daemon.core.probes import load_probe_file

    found: dict[tuple[str, str], dict[str, Any]] = {}
    for run_dir in run_dirs:
        config = RunConfig.read(run_dir)
        probes: list[dict[str, Any]] = []
        if config.probes and (run_dir / config.probes).is_file():
            try:
                probes = load_probe_file(run_dir / config.probes)
            except DatasetError:
                probes = []  # the run checked it when it was queued; its snapshots below still say what it asked
        if not probes:
            records = load_records(RunFolder(run_dir).evolution)
            first = min((r["step"] for r in records), default=None)
            probes = [{"prompt": r["prompt"], "reference": r["reference"], "messages": None}
                      for r in sorted(records, key=lambda r: r["probe"]) if r["step"] == first]
        for p in probes:
            # held-out probes keep the space their completion began with (" tea"); a probe file's has none
            said = (p["reference"] or "").strip()
            found.setdefault((json.dumps(p.get("messages")) if p.get("messages") else p["prompt"], said),
                             {"prompt": p["prompt"], "messages": p.get("messages"), "reference": p["reference"]})
    return list(found.values())


def compare_answers(home: Path, refs: Sequence[str], base: bool, prompts_file: Path | None, max_new_tokens: int,
                    log: Callable[[str], None] = lambda line: None, device: str = "auto") -> dict[str, Any]:
    """`compare --answers`: every prompt answered by every version, scored against its reference where it has one."""
    from daemon.trainer.answers import Answerer, pick_device, targets

    chosen = targets(home, refs, base)
    prompts = load_prompts(prompts_file) if prompts_file else run_probes(dict.fromkeys(t.run_dir for t in chosen))
    if not prompts:
        raise DatasetError(str(RunFolder(chosen[0].run_dir).evolution), None, None, "the versions' runs recorded no "
                           "probes", "give the prompts with --prompts FILE (" + _PROMPTS_FIX + ")")
    where, why = pick_device(home, chosen, device)
    answerer = Answerer(home, chosen, where, log)
    raw = next((v.target.label for v in answerer.voices if not v.chat), None)
    talk = next((p for p in prompts if p["messages"]), None)
    if prompts_file and raw and talk:
        raise DatasetError(str(prompts_file), talk["where"], "messages", f"a conversation, and {raw} was trained on "
                           f"raw prompts, not conversations", "give it one-line prompts ({\"prompt\": …})")
    answers = answerer.answer([p["messages"] or p["prompt"] for p in prompts], max_new_tokens)
    rows = []
    for i, p in enumerate(prompts):
        row = []
        for label, texts in answers.items():
            scored: dict[str, Any] = {"model": label, "answer": texts[i]}
            if p["reference"] is not None:
                scored |= {"exact": is_exact(texts[i], p["reference"]),
                           "similarity": round(similarity(texts[i], p["reference"]), 4)}
            row.append(scored)
        rows.append({"prompt": p["prompt"], "reference": p["reference"], "answers": row})
    return {"device": where, "device_why": why, "prompts": rows, "summary": _summary(rows, list(answers))}


def _summary(rows: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    out = []
    for k, label in enumerate(labels):
        scored = [r["answers"][k] for r in rows if "exact" in r["answers"][k]]
        out.append({"model": label, "scored": len(scored), "exact": sum(a["exact"] for a in scored),
                    "mean_similarity": round(sum(a["similarity"] for a in scored) / len(scored), 4) if scored else None})
    return out


def _mark(a: dict[str, Any]) -> str:
    if "exact" not in a:
        return ""
    if a["exact"]:
        return "= 1.00"
    return f"{'~' if a['similarity'] >= DEFAULT_THRESHOLD else '×'} {a['similarity']:.2f}"


def compare_text(result: dict[str, Any], width: int) -> str:
    """Prompt by prompt: the reference, then each version's answer with its mark; a summary line per version."""
    labels = [a["model"] for a in result["prompts"][0]["answers"]]
    name_w = max(cells(x) for x in [*labels, "reference"])
    scored = any(p["reference"] is not None for p in result["prompts"])
    mark_w = 8 if scored else 0
    text_w = max(20, width - name_w - mark_w - 7)
    out = []
    for n, p in enumerate(result["prompts"], 1):
        out.append(f"{n}. {cut(' '.join(p['prompt'].split()), width - 4)}")
        if p["reference"] is not None:
            out.append(f"   {'reference'.ljust(name_w)}  {' ' * mark_w}{cut(' '.join(p['reference'].split()), text_w)}")
        for a in p["answers"]:
            answer = cut(" ".join(a["answer"].split()) or "(empty)", text_w)
            out.append(f"   {a['model'].ljust(name_w)}  {_mark(a).ljust(mark_w)}{answer}".rstrip())
    out.append("")
    for s in result["summary"]:
        if s["scored"]:
            out.append(f"{s['model'].ljust(name_w)}  {s['exact']}/{s['scored']} exact, mean similarity "
                       f"{s['mean_similarity']:.2f}")
    out.append(f"(answered on {result['device']}: {result['device_why']})")
    return "\n".join(out)
