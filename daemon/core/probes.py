"""Evolution probes: the fixed examples a run keeps asking its model about (no torch).

A probe is a plain dict:
    {"id": int, "prompt": str, "reference": str, "messages": list | None, "tools": list | None}
`prompt` is what the model is given for prompt-style probes and the text shown to the user for chat probes;
`messages` (chat probes only) is the conversation up to, and excluding, the reference assistant turn.
A preference probe (beside a preference dataset: records of its schema) adds "kind" ("pair" or "judged") and the
answers as the example holds them: "chosen" and "rejected" (a pair; "reference" is the chosen one's text), or
"completion" and "label" (judged); the probes of a file are of the dataset's kind.

Probes come from a `NAME.probes.jsonl` file (records in any accepted dataset schema, or `{"prompt", "reference"}`)
or, when there is none, from a small deterministic sample held out of the training data (`holdout_indices`).
The rules of the eval split, held out beside them, are here too (`no_eval_split`): `overnight check` and the
trainer's console say the same of a run that gets none.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.core import datasets
from daemon.core.dataformats import json_problem, line_column, refuse_surrogates, too_deep
from daemon.core.datasets import DatasetError, ExampleKind

MAX_PROBES = 256  # every probe is generated at every snapshot: more would make snapshots slow
HOLDOUT_FRACTION = 0.1  # never hold out more than this share of the training records

_PROBE_FIX = ('give each line a prompt and the answer to compare with, e.g. '
              '{"prompt": "2+2=", "reference": "4"}, or any dataset record with an answer '
              '(prompt/completion, alpaca instruction/output, or messages ending with an assistant turn).')
EVAL_FIX = ('give each line a prompt and the answer to score against, e.g. {"prompt": "2+2=", "reference": "4"}, '
            'or any supervised dataset record (prompt/completion, alpaca instruction/output, messages ending with an '
            'assistant turn)')


@dataclass(frozen=True)
class _Words:
    """How messages about one record speak of it: a probe file's and an eval file's records are read alike."""

    one: str  # "a probe"
    many: str  # "probes"
    use: str  # what the reference answer is for
    fix: str


_AS = {"probe": _Words("a probe", "probes", "to compare the model's output with", _PROBE_FIX),
       "eval": _Words("an eval record", "eval records", "to score the model's output against", EVAL_FIX)}


def _probe(prompt: str, reference: str, messages: list | None = None, tools: list | None = None) -> dict[str, Any]:
    return {"id": -1, "prompt": prompt, "reference": reference, "messages": messages, "tools": tools}


def probe_from_example(example: dict[str, Any]) -> dict[str, Any] | None:
    """A probe (id -1, to be numbered by the caller) from a normalised Example; None when it has no answer (a
    completion labelled false is what the model should not say: no answer either).

    Prompt examples: the prompt, the completion as reference. Chat examples: the conversation before the LAST
    assistant turn as context, that turn's content as reference. Text examples and chats without an assistant
    turn have nothing to compare against.
    """
    if example["kind"] == ExampleKind.PROMPT:
        if not example["prompt"].strip():
            return None  # nothing to generate from
        return _probe(example["prompt"], example["completion"])
    if example["kind"] == ExampleKind.JUDGED and not example["label"]:
        return None
    if example["kind"] in (ExampleKind.PAIR, ExampleKind.JUDGED):
        return _preference_probe(example)
    if example["kind"] == ExampleKind.CHAT:
        messages = example["messages"]
        # the last assistant turn that says something (a tool call alone has no text to compare against) and is
        # trained (one weighted 0 is context: the model is not taught it)
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant" and m["content"].strip()
                    and m.get("weight") != 0), default=None)
        if last is None:
            return None
        context = messages[:last]
        users = [m["content"] for m in context if m["role"] == "user"]
        shown = users[-1] if users else (context[-1]["content"] if context else "")
        return _probe(shown, messages[last]["content"], context, example.get("tools"))
    return None


def _text(answer: Any) -> str:
    return answer if isinstance(answer, str) else "\n".join(m["content"] for m in answer)


def _preference_probe(example: dict[str, Any]) -> dict[str, Any]:
    """A pair or judged example as a probe: the prompt (text, or the turns before the answers), the answers kept."""
    messages = example.get("messages")
    if messages is not None:
        users = [m["content"] for m in messages if m["role"] == "user"]
        shown = users[-1] if users else messages[-1]["content"]
    else:
        shown = example["prompt"]
    if example["kind"] == ExampleKind.PAIR:
        probe = _probe(shown, _text(example["chosen"]), messages, example.get("tools"))
        return {**probe, "kind": ExampleKind.PAIR, "chosen": example["chosen"], "rejected": example["rejected"]}
    probe = _probe(shown, _text(example["completion"]), messages, example.get("tools"))
    return {**probe, "kind": ExampleKind.JUDGED, "completion": example["completion"], "label": example["label"]}


_KIND_WORDS = {ExampleKind.PAIR: "a preference pair (chosen/rejected)",
               ExampleKind.JUDGED: "a labelled completion (KTO: prompt, completion, label)"}


def _check_kind(probe: dict[str, Any], kind: str | None, dataset: str | None, file: str, location: str) -> None:
    """A probe of a preference dataset is a record of its kind, and only such a dataset takes one."""
    if kind is None:
        return
    preference = kind in _KIND_WORDS
    own = probe.get("kind")
    if own == kind or (not preference and own is None):
        return
    this = _KIND_WORDS.get(own, "a supervised probe (a prompt and its reference answer)")
    that = _KIND_WORDS.get(kind, "supervised examples")
    data = f"the dataset {dataset}" if dataset else "the dataset"
    fix = ("write each probe as a record of the dataset's own schema (with chosen/rejected)" if kind == ExampleKind.PAIR
           else "write each probe as a record of the dataset's own schema (prompt, completion, label)"
           if kind == ExampleKind.JUDGED else
           'write probes as {"prompt": "...", "reference": "..."} or records of the dataset\'s schema')
    raise DatasetError(file, location, None, f"the probe is {this}, but {data} holds {that}: probes must be of the "
                       "dataset's kind, so that the run can score them the way it trains", fix)


def _reference_record(record: dict[str, Any], file: str, location: str, words: _Words) -> dict[str, Any]:
    for key in ("prompt", "reference"):
        if not isinstance(record[key], str) or not record[key].strip():
            raise DatasetError(file, location, key, f"'{key}' must be a non-empty string, got {record[key]!r}",
                               words.fix)
    return _probe(record["prompt"], record["reference"])


def _record_probe(record: Any, file: str, location: str, as_: str = "probe") -> dict[str, Any]:
    words = _AS[as_]
    if not isinstance(record, dict):
        raise DatasetError(file, location, None, f"expected a JSON object, got {type(record).__name__}", words.fix)
    refuse_surrogates(record, file, location)
    if "reference" in record and "prompt" in record:
        return _reference_record(record, file, location, words)
    if (("prompt" in record) != ("reference" in record) and "completion" not in record
            and "chosen" not in record and "rejected" not in record):
        # half of a probe file's own {"prompt", "reference"}: asking for a dataset's 'completion' would mislead
        missing = "reference" if "prompt" in record else "prompt"
        raise DatasetError(file, location, missing, f"the required field is missing: {words.one} is a prompt and "
                           f"the reference answer {words.use}", words.fix)
    schema = datasets.detect_schema(record, file, location)
    try:
        example = datasets.normalize_record(record, schema, file, location)
    except datasets.NoAssistantTurn as e:
        raise DatasetError(file, location, e.field, f"the conversation has no assistant turn: {words.one} needs the "
                           "reference answer as its last assistant turn", words.fix) from None
    if example["kind"] in (ExampleKind.PAIR, ExampleKind.JUDGED):
        return _preference_probe(example)
    if example["kind"] == ExampleKind.TEXT:
        raise DatasetError(file, location, "text",
                           f"a text record has no answer {words.use}",
                           f'write {words.many} as {{"prompt": "...", "reference": "..."}} (or prompt/completion).')
    probe = probe_from_example(example)
    if example["kind"] == ExampleKind.PROMPT and probe is None:
        raise DatasetError(file, location, "prompt", "the prompt is empty: there is nothing to ask the model",
                           words.fix)
    if probe is None or not probe["reference"].strip():
        raise DatasetError(file, location, "messages" if example["kind"] == ExampleKind.CHAT else "completion",
                           "the record has no reference answer (no assistant turn, or an empty one)", words.fix)
    return probe


def parse_record(record: Any, file: str, location: str, as_: str = "probe") -> dict[str, Any]:
    """One JSON record of a probe file (`as_` "probe") or an eval file ("eval") as a probe (id -1), or a
    DatasetError naming file, line and fix, in the words of that file."""
    return _record_probe(record, file, location, as_)


def line_record(raw: bytes, file: str, location: str) -> Any:
    """One line of a JSONL file of probes or eval records: its JSON value, None for a blank line; a DatasetError
    naming the file and line for one that is not UTF-8 or not JSON."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(file, location, None, f"not UTF-8 text (byte {e.start})", "save the file as UTF-8") from None
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except RecursionError:
        raise too_deep(file, location) from None
    except json.JSONDecodeError as e:
        raise DatasetError(file, location, None, f"malformed JSON: {json_problem(e)} (column {line_column(e, line)})",
                           "each line must be one complete JSON object") from None


def load_probe_file(path: Path, kind: str | None = None, dataset: str | None = None) -> list[dict[str, Any]]:
    """Validate and load a `NAME.probes.jsonl`; probes are numbered 0.. in file order. With `kind` (the dataset's
    examples' kind; `dataset` its name, for the message) every probe must be of that kind: preference probes
    beside a preference dataset, supervised ones beside any other.

    Raises DatasetError naming the file, the line, the field and the fix: not JSONL, not UTF-8, an empty file,
    a malformed JSON line, a record without a reference answer, a text record, more than MAX_PROBES probes.
    """
    path = Path(path)
    file = str(path)
    if not path.name.endswith(".jsonl"):
        raise DatasetError(file, None, None, "a probe file must be JSON Lines",
                           "name it NAME.probes.jsonl with one JSON object per line")
    probes: list[dict[str, Any]] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            location = f"line {number}"
            record = line_record(raw, file, location)
            if record is None:
                continue
            probe = _record_probe(record, file, location)
            _check_kind(probe, kind, dataset, file, location)
            if probe.get("kind") == ExampleKind.JUDGED and not probe["label"]:
                raise DatasetError(file, location, "label", "the probe is labelled false: its completion is what the "
                                   "model should not say, so there is no answer to watch it learn",
                                   "keep only probes labelled true (the answers the model should learn to give)")
            probe["id"] = len(probes)
            probes.append(probe)
            if len(probes) > MAX_PROBES:
                raise DatasetError(file, location, None, f"more than {MAX_PROBES} probes",
                                   f"keep at most {MAX_PROBES} probes: each one is generated at every "
                                   f"snapshot, so a few dozen are plenty.")
    if not probes:
        raise DatasetError(file, None, None, "the probe file is empty (no records)", _PROBE_FIX)
    return probes


def held_out_count(n_records: int, count: int) -> int:
    """How many records `holdout_indices` holds out as probes: never more than HOLDOUT_FRACTION of the records, and
    at least one record is always left for training (a dataset of fewer than 10 records gives none)."""
    return max(0, min(count, int(n_records * HOLDOUT_FRACTION), n_records - 1))


def holdout_indices(n_records: int, count: int, seed: int) -> list[int]:
    """Indices (ascending) of up to `count` records to hold out as probes (`held_out_count`); same inputs, same
    indices."""
    k = held_out_count(n_records, count)
    if k <= 0:
        return []
    return sorted(random.Random(f"overnight-probes-{seed}").sample(range(n_records), k))


def probe_shortfall(n_records: int, count: int) -> str | None:
    """Why fewer probes than `probe_count` are held out of a dataset (None: all of them are), in the words the
    console, `check` and `overnight evolution` share."""
    held = held_out_count(n_records, count)
    if count <= 0 or held >= count:
        return None
    if held == 0:
        return (f"probe_count = {count}, but none could be held out of {n_records} records: probes take at most "
                f"{HOLDOUT_FRACTION:.0%} of the records, so a dataset needs {math.ceil(1 / HOLDOUT_FRACTION)} or more")
    return f"{count} asked, {held} held out (at most {HOLDOUT_FRACTION:.0%} of {n_records} records)"


# ------------------------------------------------------------------------------------------ the eval split
# held out beside the probes (daemon/trainer/sequences.py `eval_indices` draws it); its rules are here, torch-free,
# so that `overnight check` and the trainer's console say the same of a run that gets none

MIN_RECORDS_FOR_EVAL = 20  # an eval loss over fewer records says little: no split below this many


def eval_count(candidates: int, fraction: float) -> int:
    """How many of `candidates` records (those not held out as probes) the eval split takes: 0 below
    MIN_RECORDS_FOR_EVAL or when the fraction rounds down to none."""
    count = int(candidates * fraction)
    return 0 if count < 1 or candidates < MIN_RECORDS_FOR_EVAL else count


def no_eval_split(n_records: int, fraction: float, probes_held: int, patience: int = 0) -> str | None:
    """Why a run holds out no eval records and what it loses, with the fix (None: it holds some out).

    "eval_fraction 0.04 × 20 records holds out none: no eval loss; early_stopping_patience = 3 is off; set
    eval_fraction = 0.05 or more"."""
    candidates = n_records - probes_held
    if eval_count(candidates, fraction) > 0:
        return None
    besides = f" (after the {probes_held} held out as probes)" if probes_held else ""
    if fraction <= 0:
        why, fix = "eval_fraction = 0 holds out none", "set eval_fraction (0.05 or more) for an eval loss"
    elif candidates < MIN_RECORDS_FOR_EVAL:
        why = f"{candidates} records{besides} are fewer than the {MIN_RECORDS_FOR_EVAL} an eval split needs"
        fix = f"add records{', or lower probe_count' if probes_held else ''}"
    else:
        why, fix = f"eval_fraction {fraction:g} × {candidates} records{besides} holds out none", (
            f"set eval_fraction = {_least_fraction(candidates)} or more")
    lost = f"; early_stopping_patience = {patience} is off" if patience > 0 else ""
    return f"{why}: no eval loss{lost}" + (f"; {fix}" if patience > 0 or fraction > 0 else "")


def _least_fraction(candidates: int) -> str:
    """The smallest eval_fraction, in hundredths, that holds out one of `candidates` records."""
    hundredths = math.ceil(100 / candidates)
    while eval_count(candidates, hundredths / 100) < 1:  # float rounding: 0.07 × 100 is 7.000000000000001
        hundredths += 1
    return f"{hundredths / 100:g}"


def evals_in(steps: int, save_every: int) -> int:
    """The evaluations a run of `steps` steps makes: at each save (every save_every steps) and at its last step."""
    return math.ceil(steps / save_every) if steps > 0 else 0


def early_stopping_inert(patience: int, save_every: int, steps: int) -> str | None:
    """Why early stopping cannot stop this run before its end (None: it can, or is off). It stops after `patience`
    evals without improvement after the best one, so it needs patience + 2 evals to stop before the last; a run
    evaluates only when it saves."""
    if patience <= 0 or steps <= 0:
        return None
    evals, need = evals_in(steps, save_every), patience + 2
    if evals >= need:
        return None
    times = "once" if evals == 1 else f"{evals} times"
    shorter = (steps - 1) // (patience + 1)  # the largest save_every that gives `need` evals
    fix = (f"set save_every = {shorter} or less" if shorter >= 1 and evals_in(steps, shorter) >= need else
           "this run is too short to stop early")
    return (f"early_stopping_patience = {patience} cannot stop this run early: it evaluates when it saves (save_every "
            f"= {save_every}) and at its last step, {times} in its {steps} steps, and stopping before the end takes "
            f"{need} evals; {fix}")
