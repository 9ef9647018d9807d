"""Dataset validation and normalisation, shared by `overnight check`, the daemon's intake and the trainer.

A dataset file is read as a stream of records (`daemon.core.dataformats`); the first record fixes the schema,
every record is checked against it and turned into a normalised *Example*, its "kind" an `ExampleKind` (docs/ARCHITECTURE.md):
    {"kind": "text", "text": str}
    {"kind": "prompt", "prompt": str, "completion": str}  (+ "system", "user" for alpaca with a system text)
    {"kind": "chat", "messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}], "tools": list|None}
     (an assistant message weighted 0 in the record, OpenAI's "weight" or "loss_weight", carries "weight": 0: the
     chat template renders it, and it is not trained)
    {"kind": "pair", "prompt": str, "chosen": str, "rejected": str}  (+ "system", "user" for alpaca with a system)
    {"kind": "pair", "messages": [prompt turns, the last a user or tool turn], "chosen": [assistant turns],
     "rejected": [assistant turns], "tools": list|None}
    {"kind": "judged", "prompt": str, "completion": str, "label": bool}
    {"kind": "judged", "messages": [prompt turns], "completion": [assistant turns], "label": bool, "tools": ...}
Validation stops at the first problem with a `DatasetError` naming the file, the place, the field and the fix.
This module never imports torch or transformers: the daemon uses it.
"""
from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from daemon.core.dataformats import (
    SUPPORTED_SUFFIXES,
    DatasetError,
    Notes,
    describe,
    detect_format,
    json_problem,
    read_records,
    refuse_surrogates,
    rename_hint,
)
from daemon.core.errors import NoAssistantTurn

__all__ = [
    "JUDGED_SCHEMAS", "PAIR_SCHEMAS", "PREFERENCE_SCHEMAS", "SCHEMAS", "SUPPORTED_SUFFIXES", "DatasetError",
    "DatasetReport", "ExampleKind", "detect_format", "detect_schema", "example_text", "inspect_dataset",
    "iter_examples", "kind_of", "normalize_record",
]

class ExampleKind(str, Enum):
    """What a normalised example holds (its "kind"): the trainer encodes each kind its own way."""

    TEXT = "text"  # plain text, trained whole (packed into blocks of max_length)
    PROMPT = "prompt"  # a prompt and its completion: only the completion is trained
    CHAT = "chat"  # messages rendered through the run's chat template: the assistant turns are trained
    PAIR = "pair"  # a prompt with a chosen and a rejected answer (DPO)
    JUDGED = "judged"  # a prompt with one answer labelled desirable or not (KTO)

    def __str__(self) -> str:
        return self.value


SCHEMAS = ("text", "prompt_completion", "alpaca", "messages", "sharegpt", "plain_text", "preference",
           "preference_implicit", "alpaca_preference", "sharegpt_preference", "kto")
PAIR_SCHEMAS = ("preference", "preference_implicit", "alpaca_preference", "sharegpt_preference")  # → pair
JUDGED_SCHEMAS = ("kto",)  # → judged
PREFERENCE_SCHEMAS = PAIR_SCHEMAS + JUDGED_SCHEMAS
TEXT_SCHEMAS = ("text", "plain_text")  # trained as full blocks of max_length: nothing to pad
PROMPT_SCHEMAS = ("prompt_completion", "alpaca")
CHAT_SCHEMAS = ("messages", "sharegpt")  # rendered through the run's chat template  # shown to the model raw or as one chat exchange (prompt_format)
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT speaker names (LLaMA-Factory's, plus user/assistant) and the chat role each becomes.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "tool"}
# Names people use for the four roles; suggested in the error, never applied silently.
_ROLE_ALIASES = {"bot": "assistant", "model": "assistant", "gpt": "assistant", "ai": "assistant",
                 "human": "user", "developer": "system", "function": "tool", "ipython": "tool",
                 "observation": "tool"}
MEDIA_FIELDS = ("images", "videos", "audios")
MEDIA_MARKERS = ("<image>", "<video>", "<audio>")

# How each schema looks, for error messages (the accepted list) and for noting ignored extra fields.
SCHEMA_SHAPES = {
    "text": '{"text": "..."}',
    "prompt_completion": '{"prompt": "...", "completion": "..."}',
    "alpaca": '{"instruction": "...", "input": "..." (optional), "output": "..."} '
              '(optional "system", "history": [["user", "assistant"], ...])',
    "messages": '{"messages": [{"role": "system|user|assistant|tool", "content": "..."}, ...]}',
    "sharegpt": '{"conversations": [{"from": "human|gpt|system|function_call|observation", "value": "..."}, ...]}',
    "preference": '{"prompt": "...", "chosen": "...", "rejected": "..."} (or "prompt" a message list and '
                  '"chosen"/"rejected" lists of assistant messages)',
    "preference_implicit": '{"chosen": [messages], "rejected": [messages]} (the same prompt turns, then each '
                           'side\'s assistant answer)',
    "alpaca_preference": '{"instruction": "...", "input": "..." (optional), "chosen": "...", "rejected": "..."} '
                         '(optional "system")',
    "sharegpt_preference": '{"conversations": [{"from": "human", "value": "..."}, ...], "chosen": {"from": "gpt", '
                           '"value": "..."}, "rejected": {"from": "gpt", "value": "..."}}',
    "kto": '{"prompt": "...", "completion": "...", "label": true|false} (or message lists)',
}
_SCHEMA_FIELDS = {"text": {"text"}, "prompt_completion": {"prompt", "completion"},
                  "alpaca": {"instruction", "input", "output", "system", "history"},
                  "messages": {"messages", "tools"}, "sharegpt": {"conversations", "system", "tools"},
                  "plain_text": {"text"}, "preference": {"prompt", "chosen", "rejected", "tools"},
                  "preference_implicit": {"chosen", "rejected", "tools"},
                  "alpaca_preference": {"instruction", "input", "system", "chosen", "rejected"},
                  "sharegpt_preference": {"conversations", "system", "tools", "chosen", "rejected"},
                  "kto": {"prompt", "completion", "label", "tools"}}
_ALL_FIELDS = frozenset().union(*_SCHEMA_FIELDS.values())  # what a key differing only in case was meant to be
_MAX_EXTRA_FIELDS = 20  # distinct ignored field names tracked for the notes (bounded memory)

Example = dict[str, Any]


@dataclass
class DatasetReport:
    """What `overnight check` prints and intake stores in stats.json."""

    path: Path
    format: str
    schema: str
    records: int
    chars: dict  # {"min", "mean", "p50", "p95", "max"} of characters per example
    tokens: dict | None  # the same keys in tokens, when a token counter was given
    notes: list[str] = field(default_factory=list)
    # a uniform sample (up to 10,000) of the examples' token counts: what a padding estimate needs
    token_sample: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict:
        """A JSON-ready dict (the path as a string; the token sample stays out)."""
        data = asdict(self)
        data["path"] = str(self.path)
        del data["token_sample"]
        return data


@dataclass(frozen=True)
class _Where:
    """Where a record sits, to build errors."""

    file: str
    location: str | None

    def error(self, field_name: str | None, problem: str, fix: str) -> DatasetError:
        return DatasetError(self.file, self.location, field_name, problem, fix)


# -- schema detection ------------------------------------------------------------------------------------
def detect_schema(record: dict, file: str, location: str) -> str:
    """The schema `record` follows, from its fields; DatasetError (listing the accepted schemas) if none.

    A record with 'chosen'/'rejected' is a preference pair (its other fields say which form), one with a 'label'
    beside 'prompt'/'completion' a KTO record; multimodal records are refused here, whatever else they hold.
    """
    where = _Where(file, location)
    if not isinstance(record, dict):
        raise where.error(None, f"the record is {describe(record)}, expected an object",
                          "make every record a JSON object such as {\"text\": \"...\"}")
    _refuse_unsupported(record, where)
    if "chosen" in record or "rejected" in record:
        if "conversations" in record:
            return "sharegpt_preference"
        if "instruction" in record:
            return "alpaca_preference"
        if "prompt" in record:
            return "preference"
        if "messages" in record:
            raise where.error("messages", "a preference pair with 'messages': the prompt goes in 'prompt'",
                              "rename 'messages' to 'prompt' (the turns before the answers), with 'chosen' and "
                              "'rejected' the assistant's answers; or give 'chosen' and 'rejected' each the whole "
                              "conversation (TRL's implicit form) and drop 'messages'")
        return "preference_implicit"
    if "label" in record and ("prompt" in record or "completion" in record):
        return "kto"
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record:
        return "alpaca"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    raise where.error(None, _unknown_schema_problem(record), _unknown_schema_fix(record))


def _unknown_schema_problem(record: dict) -> str:
    fields = ", ".join(repr(k) for k in list(record)[:12]) or "none"
    return f"the record matches no accepted schema (its fields: {fields})"


def _unknown_schema_fix(record: dict) -> str:
    accepted = "; ".join(f"{name} {shape}" for name, shape in SCHEMA_SHAPES.items())
    hint = rename_hint([k for k in record if isinstance(k, str)], _ALL_FIELDS)
    return f"{hint + ', or ' if hint else ''}use one of the accepted schemas: {accepted}"


def _refuse_unsupported(record: dict, where: _Where) -> None:
    for name in MEDIA_FIELDS:
        if record.get(name):
            raise where.error(name, f"{name} are not supported: overnight fine-tunes text-only models, and "
                                    f"this record lists {name} for its '<{name[:-1]}>' markers",
                              f"remove the '{name}' field and the '<{name[:-1]}>' markers to train on the text "
                              "alone, or use a multimodal trainer")


def _refuse_markers(text: str, field_name: str, where: _Where) -> None:
    for marker in MEDIA_MARKERS:
        if marker in text:
            kind = marker[1:-1]
            raise where.error(field_name, f"the text holds a '{marker}' placeholder: {kind} inputs are not "
                                          "supported, and training on the placeholder text would be wrong",
                              f"remove the '{marker}' markers (and any '{kind}s' field) to train on the text "
                              "alone, or use a multimodal trainer")


# -- normalisation ---------------------------------------------------------------------------------------
def normalize_record(record: dict, schema: str, file: str, location: str, notes: Notes | None = None) -> Example:
    """Turn `record` (of `schema`) into an Example; DatasetError at the first bad field.

    `notes`, when given, collects remarks about accepted oddities (tool roles mapped, ignored weights…).
    """
    where = _Where(file, location)
    notes = notes if notes is not None else Notes()
    if schema not in SCHEMAS:
        raise ValueError(f"unknown schema {schema!r}; expected one of {SCHEMAS}")
    if schema in ("text", "plain_text"):
        return {"kind": ExampleKind.TEXT, "text": _string(record, "text", where)}
    if schema == "prompt_completion":
        prompt = _string(record, "prompt", where, allow_empty=True)
        completion = _string(record, "completion", where)
        _refuse_markers(prompt, "prompt", where)
        return {"kind": ExampleKind.PROMPT, "prompt": prompt, "completion": completion}
    if any(_PLACEHOLDER.search(text) for text in _strings(record)):
        notes.tally("{n} record(s) hold placeholders in double braces (such as {{{{name}}}}): they train as written; "
                    "fill them in first if they are template slots (as {{{{name}}}} in LLaMA-Factory's identity.json)")
    if schema == "alpaca":
        return _alpaca(record, where, notes)
    if schema == "messages":
        return _messages(record, where, notes)
    if schema == "sharegpt":
        return _sharegpt(record, where, notes)
    return _PREFERENCE[schema](record, where, notes)


_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_]\w*\s*\}\}")


def _strings(value: Any) -> Iterator[str]:
    """Every string in a record, however nested."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


_MISSING = object()


def _string(record: dict, key: str, where: _Where, *, field_name: str | None = None, required: bool = True,
            allow_empty: bool = False) -> Any:
    """`record[key]` checked to be a string (non-blank unless `allow_empty`); None when optional and absent."""
    name = field_name or key
    value = record.get(key, _MISSING)
    if value is _MISSING or value is None:
        if not required:
            return None
        state = "is missing" if value is _MISSING else "is null"
        cased = next((k for k in record if isinstance(k, str) and k.lower() == key), None) if value is _MISSING else None
        fix = f"keys are lower-case: rename '{cased}' to '{key}'" if cased else f"give every record a string '{key}'"
        raise where.error(name, f"the required field {state}", fix)
    if not isinstance(value, str):
        raise where.error(name, f"must be a string, got {describe(value)}",
                          f"write '{key}' as a JSON string (in quotes)")
    if not allow_empty and not value.strip():
        raise where.error(name, "is empty", f"fill in '{key}', or remove the record")
    return value


def _alpaca(record: dict, where: _Where, notes: Notes) -> Example:
    instruction = _string(record, "instruction", where)
    extra_input = _string(record, "input", where, required=False, allow_empty=True)
    output = _string(record, "output", where)
    system = _string(record, "system", where, required=False, allow_empty=True)
    prompt = "\n\n".join(part for part in (instruction, extra_input) if part)
    for name, value in (("instruction", instruction), ("input", extra_input), ("system", system)):
        _refuse_markers(value or "", name, where)
    history = record.get("history")
    if not history:
        if system:  # raw: one text; as a chat exchange (prompt_format): a system turn and a user turn
            return {"kind": ExampleKind.PROMPT, "prompt": f"{system}\n\n{prompt}", "completion": output, "system": system,
                    "user": prompt}
        return {"kind": ExampleKind.PROMPT, "prompt": prompt, "completion": output}
    notes.tally("{n} alpaca record(s) with 'history' trained as chat examples")
    messages = [{"role": "system", "content": system}] if system else []
    messages += _history(history, where)
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return {"kind": ExampleKind.CHAT, "messages": messages, "tools": None}


def _history(history: Any, where: _Where) -> list[dict[str, str]]:
    fix = "write 'history' as a list of [user, assistant] string pairs"
    if not isinstance(history, list):
        raise where.error("history", f"must be a list of [user, assistant] pairs, got {describe(history)}", fix)
    messages = []
    for i, pair in enumerate(history):
        name = f"history[{i}]"
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
            raise where.error(name, f"must be a [user, assistant] pair of strings, got {describe(pair)}", fix)
        for role, text in zip(("user", "assistant"), pair):
            if not text.strip():
                raise where.error(name, f"the {role} text is empty", "fill it in, or remove the pair")
            _refuse_markers(text, name, where)
            messages.append({"role": role, "content": text})
    return messages


def _message_list(record: dict, key: str, shape: str, where: _Where) -> list:
    turns = record[key]
    fix = f"write '{key}' as a list of {shape} objects"
    if not isinstance(turns, list):
        raise where.error(key, f"must be a list of {shape} messages, got {describe(turns)}", fix)
    if not turns:
        raise where.error(key, "the conversation is empty", "give it at least a user and an assistant turn")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise where.error(f"{key}[{i}]", f"must be a {shape} object, got {describe(turn)}", fix)
    return turns


def _messages(record: dict, where: _Where, notes: Notes) -> Example:
    messages = _role_turns(record, "messages", where, notes, weights=True)
    _require_assistant(messages, "messages", where)
    _require_trained(messages, "messages", where)
    return {"kind": ExampleKind.CHAT, "messages": messages, "tools": _tools(record, where, notes)}


def _role_turns(record: dict, key: str, where: _Where, notes: Notes, *, weights: bool = False
                ) -> list[dict[str, str]]:
    """`record[key]` as a list of {role, content} messages, each checked; with `weights`, an assistant turn
    weighted 0 is marked so (`_weighed`)."""
    messages = []
    for i, turn in enumerate(_message_list(record, key, "{role, content}", where)):
        name = f"{key}[{i}]"
        if "role" not in turn and "from" in turn:
            raise where.error(name, "uses ShareGPT keys 'from'/'value' inside 'messages'",
                              "rename 'messages' to 'conversations' (ShareGPT), or use 'role'/'content'")
        role = turn.get("role", _MISSING)
        if role not in ROLES:
            problem = "the 'role' is missing" if role is _MISSING else (
                f"unknown role {role!r}" if isinstance(role, str) else f"role must be a string, got {describe(role)}")
            fix = "use one of the expected roles"
            if isinstance(role, str) and role.lower() in ROLES:
                fix = f"roles are lower-case: write {role.lower()!r}"
            elif isinstance(role, str) and role.lower() in _ROLE_ALIASES:
                fix += f", or map {role!r} to {_ROLE_ALIASES[role.lower()]!r}"
            raise where.error(f"{name}.role", f"{problem} (expected one of: {', '.join(ROLES)})", fix)
        calls = _tool_calls(turn, name, where) if role == "assistant" and turn.get("tool_calls") else None
        content = "" if calls and not turn.get("content") else _content(turn, f"{name}.content", where)
        if isinstance(turn.get("content"), list):
            notes.tally("{n} message(s) with 'content' as a list of text parts: the parts were joined")
        message = {"role": role, "content": content, **({"tool_calls": calls} if calls else {})}
        if role == "tool":  # what a template may show of the call it answers
            message.update({k: turn[k] for k in ("tool_call_id", "name") if isinstance(turn.get(k), str)})
        if weights:
            _weighed(message, turn, name, where, notes)
        elif any(turn.get(k) is not None for k in WEIGHT_KEYS):  # a preference objective scores each answer whole
            notes.tally("'weight'/'loss_weight' ignored on {n} message(s) of preference records: every answer turn "
                        "is scored")
        messages.append(message)
    return messages


# Per-message training weights: OpenAI's fine-tuning format writes "weight" (0 or 1) on assistant messages; some
# converters write "loss_weight". 0 leaves the turn untrained (context, like the prompt); 1 or none trains it.
WEIGHT_KEYS = ("weight", "loss_weight")


def _weighed(message: dict[str, Any], turn: dict, name: str, where: _Where, notes: Notes) -> None:
    """Mark `message` (made from `turn`, at `name`) "weight": 0 when the turn is weighted 0; refuse a weight that
    is not 0 or 1, or that would train a turn that is not the assistant's."""
    # null is no weight: parquet gives every message the fields any message of the column has
    given = {key: turn[key] for key in WEIGHT_KEYS if turn.get(key) is not None}
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
            shown = f" {json.dumps(value, ensure_ascii=False)[:40]}" if isinstance(value, str) else ""
            raise where.error(f"{name}.{key}", f"'{key}' must be 0 or 1, got {describe(value)}{shown}",
                              f"write {key}: 0 to leave this turn untrained (kept as context) or {key}: 1 to train "
                              f"it (a number, not a string or true/false), or leave '{key}' out to train it")
    if len(set(given.values())) > 1:
        raise where.error(name, f"'weight' is {given['weight']} but 'loss_weight' is {given['loss_weight']}: the turn "
                                "cannot be both trained and not", "keep one of the two keys, or give both the same value")
    if not given:
        return
    notes.tally("per-message weights ('weight'/'loss_weight') read on {n} message(s): an assistant turn weighted 1 "
                "trains, one weighted 0 is kept as context")
    key, weight = next(iter(given.items()))
    if message["role"] != "assistant" and weight == 1:
        raise where.error(f"{name}.{key}", f"a {message['role']} turn has {key} 1, but only the assistant's turns are "
                                           "trained", f"remove '{key}' from the {message['role']} turn (it is context, "
                                           "never trained), or put what the model should learn in an assistant turn")
    if message["role"] == "assistant" and weight == 0:
        message["weight"] = 0
        notes.tally("{n} assistant turn(s) weighted 0 ('weight' or 'loss_weight'): kept as context, not trained")


def _require_trained(messages: list[dict[str, Any]], key: str, where: _Where) -> None:
    """A conversation whose every assistant turn is weighted 0 would train on nothing."""
    if all(m.get("weight") == 0 for m in messages if m["role"] == "assistant"):
        raise where.error(key, "every assistant turn has weight 0: there is nothing to train on",
                          "give the assistant turn(s) the model should learn weight 1 (or no weight), or remove the "
                          "record")


def _tool_calls(turn: dict, name: str, where: _Where) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls` (OpenAI's form), each {"type": "function", "function": {name, arguments}}
    with its arguments as an object (as chat templates read them; OpenAI writes them as a JSON string)."""
    calls = turn["tool_calls"]
    fix = 'write tool_calls as [{"type": "function", "function": {"name": "...", "arguments": {...}}}]'
    if not isinstance(calls, list):
        raise where.error(f"{name}.tool_calls", f"must be a list of tool calls, got {describe(calls)}", fix)
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise where.error(f"{name}.tool_calls[{j}]", "has no function with a name", fix)
        out.append({**({"id": call["id"]} if isinstance(call.get("id"), str) else {}), "type": "function",
                    "function": {"name": function["name"], "arguments": _arguments(function.get("arguments"))}})
    return out


def _arguments(value: Any) -> Any:
    """A call's arguments as an object when they are one written as JSON text; as given otherwise."""
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
        return decoded if isinstance(decoded, dict) else value
    return {} if value is None else value


def _content(turn: dict, name: str, where: _Where) -> str:
    """A message's text: a string, or a list of text parts ({"type": "text", "value"|"text": ...}) joined."""
    content = turn.get("content", _MISSING)
    if content is _MISSING or content is None:
        raise where.error(name, "the message has no content", "give every message a non-empty 'content' string")
    if isinstance(content, list):
        content = "".join(_text_part(part, f"{name}[{j}]", where) for j, part in enumerate(content))
    elif not isinstance(content, str):
        raise where.error(name, f"must be a string or a list of text parts, got {describe(content)}",
                          "write 'content' as a string")
    if not content.strip():
        raise where.error(name, "the message content is empty", "fill in the message, or remove it")
    _refuse_markers(content, name, where)
    return content


def _text_part(part: Any, name: str, where: _Where) -> str:
    fix = 'write text parts as {"type": "text", "value": "..."} (or "text": "..."), or "content" as a string'
    if not isinstance(part, dict):
        raise where.error(name, f"a content part must be an object, got {describe(part)}", fix)
    kind = part.get("type", "text")
    if kind != ExampleKind.TEXT:
        if kind in ("image", "image_url", "video", "audio", "input_audio"):
            raise where.error(f"{name}.type", f"{kind} content is not supported: overnight fine-tunes text-only "
                                              "models", "remove the non-text parts to train on the text alone")
        raise where.error(f"{name}.type", f"unknown content part type {kind!r} (expected 'text')", fix)
    text = part.get("value", part.get("text"))
    if not isinstance(text, str):
        raise where.error(name, f"the text part has no string 'value' or 'text' (got {describe(text)})", fix)
    return text


def _require_assistant(messages: list[dict[str, str]], key: str, where: _Where) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise NoAssistantTurn(where.file, where.location, key,
                              "the conversation has no assistant turn: there is nothing to train on",
                              "add the assistant's answer as a turn")


def _tools(record: dict, where: _Where, notes: Notes) -> list | None:
    """The record's tool definitions as a list (a JSON string is decoded), or None."""
    tools = record.get("tools")
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except RecursionError:
            raise where.error("tools", "is a string holding JSON nested too deeply to read",
                              "write 'tools' as a JSON list of function definitions (or a string holding one)"
                              ) from None
        except json.JSONDecodeError as err:
            raise where.error("tools", f"is a string but not valid JSON ({json_problem(err)})",
                              "write 'tools' as a JSON list of function definitions (or a string holding one)"
                              ) from None
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise where.error("tools", f"must be a list of function definitions, got {describe(tools)}",
                          "write 'tools' as a JSON list of function definitions")
    notes.tally("'tools' passed to the chat template in {n} record(s)")
    # a bare function schema (glaive's) in the form chat templates read: {"type": "function", "function": {...}}
    return [{"type": "function", "function": t} if isinstance(t, dict) and "name" in t and "function" not in t
            else t for t in tools]


def _sharegpt(record: dict, where: _Where, notes: Notes) -> Example:
    messages = _sharegpt_turns(record, where, notes, weights=True)
    _require_assistant(messages, "conversations", where)
    _require_trained(messages, "conversations", where)
    return {"kind": ExampleKind.CHAT, "messages": messages, "tools": _tools(record, where, notes)}


def _sharegpt_turns(record: dict, where: _Where, notes: Notes, key: str = "conversations",
                    system_field: bool = True, weights: bool = False) -> list[dict[str, str]]:
    """`record[key]` (ShareGPT {from, value} turns) as chat messages, the record's 'system' field first; with
    `weights`, an assistant turn weighted 0 is marked so (`_weighed`)."""
    turns = _message_list(record, key, "{from, value}", where)
    system = _string(record, "system", where, required=False, allow_empty=True) if system_field else None
    if system and system.strip() and turns[0].get("from") == "system":
        # LLaMA-Factory's converter takes a first system turn over the 'system' field: two would render twice
        notes.tally("{n} ShareGPT record(s) with both a 'system' field and a first system turn: the turn is used and "
                    "the field ignored, as LLaMA-Factory does")
        system = None
    messages = [{"role": "system", "content": system}] if system and system.strip() else []
    for i, turn in enumerate(turns):
        name = f"{key}[{i}]"
        if "from" not in turn and "role" in turn:
            raise where.error(name, "uses 'role'/'content' keys inside 'conversations'",
                              "rename 'conversations' to 'messages', or use ShareGPT's 'from'/'value'")
        speaker = turn.get("from", _MISSING)
        if not isinstance(speaker, str) or speaker not in SHAREGPT_ROLES:  # a list or an object is no key of it
            problem = "the 'from' is missing" if speaker is _MISSING else (
                f"unknown speaker {speaker!r}" if isinstance(speaker, str)
                else f"'from' must be a string, got {describe(speaker)}")
            raise where.error(f"{name}.from", f"{problem} (expected one of: {', '.join(SHAREGPT_ROLES)})",
                              "use one of the expected speaker names")
        value = _string(turn, "value", where, field_name=f"{name}.value")
        _refuse_markers(value, f"{name}.value", where)
        if speaker in ("function_call", "observation"):
            notes.tally("{n} tool turn(s) mapped to the chat template's tool roles (function_call → assistant tool "
                        "call, observation → tool)")
        calls = _sharegpt_calls(value) if speaker == "function_call" else None
        if calls:
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        elif speaker == "observation" and messages and messages[-1].get("tool_calls"):
            messages.append({"role": "tool", "content": value, "name": messages[-1]["tool_calls"][0]["function"]["name"]})
        else:
            messages.append({"role": SHAREGPT_ROLES[speaker], "content": value})
        if weights:
            _weighed(messages[-1], turn, name, where, notes)
    return messages


def _sharegpt_calls(value: str) -> list[dict[str, Any]] | None:
    """A ShareGPT function_call's value ({"name": ..., "arguments": ...}, or a list of them) as OpenAI tool calls,
    which each chat template renders in its model's own tool-call format; None when it is no such JSON (kept as the
    assistant's text)."""
    try:
        decoded = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        return None
    called = decoded if isinstance(decoded, list) else [decoded]
    if not called or not all(isinstance(c, dict) and isinstance(c.get("name"), str) and c["name"] for c in called):
        return None
    return [{"type": "function", "function": {"name": c["name"], "arguments": _arguments(c.get("arguments"))}}
            for c in called]


# -- preference data (DPO pairs, KTO judgements) ----------------------------------------------------------
_PROMPT_ROLES = ("user", "tool")  # the turn a prompt ends with: what the answers respond to
_SIDES = ("chosen", "rejected")


def _short(text: str, limit: int = 40) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit - 1] + "…")


def _side_text(record: dict, key: str, where: _Where) -> str:
    """One answer of a text-form pair: a non-empty string."""
    value = record.get(key, _MISSING)
    if value is _MISSING or value is None:
        state = "is missing" if value is _MISSING else "is null"
        raise where.error(key, f"the required field {state}: a preference pair needs a chosen and a rejected answer",
                          f"give every record a string '{key}'")
    if not isinstance(value, str):
        raise where.error(key, f"must be a string like the prompt, got {describe(value)}",
                          f"write '{key}' as a JSON string, or write 'prompt' as a message list and '{key}' as a "
                          "list of assistant messages")
    if not value.strip():
        raise where.error(key, f"the {key} answer is empty: there is nothing to compare",
                          f"fill in '{key}', or remove the record")
    _refuse_markers(value, key, where)
    return value


def _not_identical(chosen: Any, rejected: Any, where: _Where) -> None:
    if chosen == rejected:
        raise where.error("rejected", "chosen and rejected are identical: the pair teaches no preference",
                          "make 'rejected' the worse answer (it must differ from 'chosen'), or remove the record")


def _answer_turns(record: dict, key: str, where: _Where, notes: Notes, *, sharegpt: bool = False
                  ) -> list[dict[str, str]]:
    """An answer given as messages: a non-empty list of assistant turns ({role, content}, or ShareGPT's
    {from, value}: one object or a list of them)."""
    value = record.get(key, _MISSING)
    if value is _MISSING or value is None:
        raise where.error(key, "the required field is missing: a preference pair needs a chosen and a rejected "
                               "answer", f"give every record '{key}'")
    if sharegpt and isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and not value:
        raise where.error(key, f"the {key} answer is empty (no assistant turn): there is nothing to compare",
                          f"give '{key}' the assistant's answer, or remove the record")
    turns = (_sharegpt_turns({key: value}, where, notes, key=key, system_field=False) if sharegpt
             else _role_turns({key: value}, key, where, notes))
    how = "from \"gpt\"" if sharegpt else "role \"assistant\""
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            name = f"{key}[{i}]" if isinstance(record.get(key), list) else key
            raise where.error(f"{name}.{'from' if sharegpt else 'role'}",
                              f"the {key} answer holds a {turn['role']} turn: the answers compared must be the "
                              "assistant's",
                              f"keep only the assistant's answer in '{key}' ({how}) and put the turns before "
                              "it in the prompt")
    return turns


def _prompt_turns(messages: list[dict[str, str]], key: str, where: _Where) -> None:
    if not messages or messages[-1]["role"] not in _PROMPT_ROLES:
        role = messages[-1]["role"] if messages else ""
        last = f"ends with {'an' if role[:1] in 'aeiou' else 'a'} {role} turn" if messages else "is empty"
        raise where.error(key, f"the prompt {last}: it must end with the user's (or a tool's) turn that the "
                               "answers respond to", f"end '{key}' with the user turn, and put the assistant's answers "
                               "in 'chosen' and 'rejected'")


def _preference(record: dict, where: _Where, notes: Notes) -> Example:
    """TRL's explicit form: {prompt, chosen, rejected}, all strings or all message lists."""
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        messages = _role_turns(record, "prompt", where, notes)
        _prompt_turns(messages, "prompt", where)
        chosen, rejected = (_answer_turns(record, side, where, notes) for side in _SIDES)
        _not_identical(chosen, rejected, where)
        return {"kind": ExampleKind.PAIR, "messages": messages, "chosen": chosen, "rejected": rejected,
                "tools": _tools(record, where, notes)}
    prompt = _string(record, "prompt", where, allow_empty=True)
    _refuse_markers(prompt, "prompt", where)
    chosen, rejected = (_side_text(record, side, where) for side in _SIDES)
    _not_identical(chosen, rejected, where)
    return {"kind": ExampleKind.PAIR, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def _preference_implicit(record: dict, where: _Where, notes: Notes) -> Example:
    """TRL's implicit form: two whole conversations sharing their prompt turns; what follows the last shared user
    (or tool) turn is each side's answer."""
    for side in _SIDES:
        value = record.get(side, _MISSING)
        if not isinstance(value, list):
            got = "is missing" if value is _MISSING else f"is {describe(value)}"
            raise where.error(side, f"'{side}' {got}: without 'prompt', 'chosen' and 'rejected' must each be a "
                                    "whole conversation (a message list)",
                              "give 'chosen' and 'rejected' the same prompt turns followed by each answer, or add "
                              "a 'prompt' field ({prompt, chosen, rejected})")
        if not value:
            raise where.error(side, f"the {side} conversation is empty", "give it the prompt turns and the answer")
    chosen, rejected = (_role_turns(record, side, where, notes) for side in _SIDES)
    _not_identical(chosen, rejected, where)
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    cut = max((i + 1 for i in range(shared) if chosen[i]["role"] in _PROMPT_ROLES), default=0)
    for side, turns in (("chosen", chosen), ("rejected", rejected)):
        answer = turns[cut:]
        if not answer:
            raise where.error(side, f"the {side} answer is empty: the conversation ends with the shared prompt",
                              f"end '{side}' with the assistant's answer, or remove the record")
        if any(m["role"] != "assistant" for m in answer):
            if shared < len(chosen) and shared < len(rejected):
                problem = (f"the two conversations' prompts differ at turn {shared}: chosen[{shared}] is "
                           f"{chosen[shared]['role']} {_short(chosen[shared]['content'])}, rejected[{shared}] is "
                           f"{rejected[shared]['role']} {_short(rejected[shared]['content'])}")
            else:
                problem = f"after the shared prompt, {side} holds a turn that is not the assistant's"
            raise where.error(f"rejected[{shared}]", problem,
                              "give 'chosen' and 'rejected' the very same turns up to the last user turn, so that "
                              "they differ only in the assistant's answer; or write the pair explicitly as "
                              "{\"prompt\": [...], \"chosen\": [...], \"rejected\": [...]}")
    if not cut:
        raise where.error("chosen[0]", "the conversations share no user turn: there is no prompt the answers respond "
                                       "to", "start 'chosen' and 'rejected' with the same user turn(s)")
    return {"kind": ExampleKind.PAIR, "messages": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:],
            "tools": _tools(record, where, notes)}


def _alpaca_preference(record: dict, where: _Where, notes: Notes) -> Example:
    """LLaMA-Factory's {instruction, input?, system?, chosen, rejected}: the prompt built as alpaca builds it."""
    instruction = _string(record, "instruction", where)
    extra_input = _string(record, "input", where, required=False, allow_empty=True)
    system = _string(record, "system", where, required=False, allow_empty=True)
    for name, value in (("instruction", instruction), ("input", extra_input), ("system", system)):
        _refuse_markers(value or "", name, where)
    if "history" in record and record["history"]:
        raise where.error("history", "'history' is not supported in a preference record",
                          "fold the earlier turns into the instruction, or use the ShareGPT form "
                          "({conversations, chosen, rejected})")
    chosen, rejected = (_side_text(record, side, where) for side in _SIDES)
    _not_identical(chosen, rejected, where)
    prompt = "\n\n".join(part for part in (instruction, extra_input) if part)
    if system:
        return {"kind": ExampleKind.PAIR, "prompt": f"{system}\n\n{prompt}", "chosen": chosen, "rejected": rejected,
                "system": system, "user": prompt}
    return {"kind": ExampleKind.PAIR, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def _sharegpt_preference(record: dict, where: _Where, notes: Notes) -> Example:
    """LLaMA-Factory's ShareGPT form: the prompt in 'conversations', each answer one {from, value} message."""
    messages = _sharegpt_turns(record, where, notes)
    _prompt_turns(messages, "conversations", where)
    chosen, rejected = (_answer_turns(record, side, where, notes, sharegpt=True) for side in _SIDES)
    _not_identical(chosen, rejected, where)
    return {"kind": ExampleKind.PAIR, "messages": messages, "chosen": chosen, "rejected": rejected,
            "tools": _tools(record, where, notes)}


def _kto(record: dict, where: _Where, notes: Notes) -> Example:
    """KTO: {prompt, completion, label}, strings or message lists; label a JSON boolean."""
    label = record.get("label", _MISSING)
    if not isinstance(label, bool):
        shown = f" {json.dumps(label, ensure_ascii=False)[:40]}" if isinstance(label, str) else ""  # a number says it
        got = "is missing" if label is _MISSING else f"must be true or false, got {describe(label)}{shown}"
        fix = ("write true or false in the 'label' column" if where.file.lower().endswith(".csv") else
               "write 'label' as a JSON boolean")
        raise where.error("label", f"'label' {got}", f"{fix}: true for a desirable completion, false for an "
                                                     "undesirable one (not yes/no, not 0/1)")
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        messages = _role_turns(record, "prompt", where, notes)
        _prompt_turns(messages, "prompt", where)
        completion = _answer_turns(record, "completion", where, notes)
        return {"kind": ExampleKind.JUDGED, "messages": messages, "completion": completion, "label": label,
                "tools": _tools(record, where, notes)}
    prompt = _string(record, "prompt", where, allow_empty=True)
    _refuse_markers(prompt, "prompt", where)
    completion = _side_text(record, "completion", where)
    return {"kind": ExampleKind.JUDGED, "prompt": prompt, "completion": completion, "label": label}


_PREFERENCE: dict[str, Callable[[dict, _Where, Notes], Example]] = {
    "preference": _preference, "preference_implicit": _preference_implicit, "alpaca_preference": _alpaca_preference,
    "sharegpt_preference": _sharegpt_preference, "kto": _kto}


def kind_of(schema: str) -> ExampleKind:
    """The kind of examples a schema gives (alpaca with 'history' gives chat examples too: not told apart here)."""
    if schema in PAIR_SCHEMAS:
        return ExampleKind.PAIR
    if schema in JUDGED_SCHEMAS:
        return ExampleKind.JUDGED
    if schema in TEXT_SCHEMAS:
        return ExampleKind.TEXT
    return ExampleKind.CHAT if schema in CHAT_SCHEMAS else ExampleKind.PROMPT


def _side_chat(side: Any) -> list[dict[str, str]]:
    return side if isinstance(side, list) else [{"role": "assistant", "content": side}]


def as_chat(example: Example) -> Example:
    """A prompt example as one chat exchange (its system text, if any, as a system turn); others unchanged."""
    kind = example["kind"]
    if kind not in (ExampleKind.PROMPT, ExampleKind.PAIR, ExampleKind.JUDGED) or "messages" in example:
        return example
    system = example.get("system")
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": example.get("user", example["prompt"])}]
    if kind == ExampleKind.PAIR:  # a text pair as one chat exchange per side
        return {"kind": kind, "messages": messages, "chosen": _side_chat(example["chosen"]),
                "rejected": _side_chat(example["rejected"]), "tools": None}
    if kind == ExampleKind.JUDGED:
        return {"kind": kind, "messages": messages, "completion": _side_chat(example["completion"]),
                "label": example["label"], "tools": None}
    messages += [{"role": "assistant", "content": example["completion"]}]
    return {"kind": ExampleKind.CHAT, "messages": messages, "tools": None}


def example_text(example: Example) -> str:
    """The text an Example holds, concatenated (chat turns joined by newlines): used for length statistics."""
    kind = example["kind"]
    if kind == ExampleKind.TEXT:
        return example["text"]
    if kind == ExampleKind.PROMPT:
        return example["prompt"] + example["completion"]
    if kind in (ExampleKind.PAIR, ExampleKind.JUDGED):  # the prompt and its longer answer
        def text(part: Any) -> str:
            return part if isinstance(part, str) else "\n".join(m["content"] for m in part)
        head = text(example["messages"]) + "\n" if "messages" in example else example["prompt"]
        answers = [example["completion"]] if kind == ExampleKind.JUDGED else [example["chosen"], example["rejected"]]
        return head + max((text(a) for a in answers), key=len)
    return "\n".join(m["content"] for m in example["messages"])


# -- streaming -------------------------------------------------------------------------------------------
class _Stream:
    """One pass over a dataset: records → schema check → Examples, collecting notes on the way."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = detect_format(self.path)
        self.schema = "plain_text" if self.format == "txt" else ""
        self.notes = Notes()
        self.extra_fields: dict[str, int] = {}
        self.labels = {True: 0, False: 0}  # KTO: records labelled desirable, undesirable

    def examples(self) -> Iterator[Example]:
        file = self.path.name
        for location, record in read_records(self.path, self.format, self.notes):
            if self.format != "txt":  # a .txt line is decoded UTF-8: it cannot hold a lone surrogate
                refuse_surrogates(record, file, location)
                self._check_schema(record, file, location)
            example = normalize_record(record, self.schema, file, location, notes=self.notes)
            if example["kind"] == ExampleKind.JUDGED:
                self.labels[example["label"]] += 1
            yield example
            self._count_extra(record)
        if self.schema in JUDGED_SCHEMAS:
            self._check_labels(file)

    def _check_labels(self, file: str) -> None:
        """A whole-file fact, said after the scan: KTO needs both labels."""
        good, bad = self.labels[True], self.labels[False]
        if good and bad:
            self.notes.add(f"KTO labels: {good} desirable (true), {bad} undesirable (false)")
            return
        only = "true" if good else "false"
        raise DatasetError(file, None, "label",
                           f"all {good + bad} records are labelled {only} ({good} true, {bad} false): KTO learns "
                           "from the contrast between desirable and undesirable completions, and this file has "
                           "only one kind",
                           f"add records labelled {'false' if good else 'true'} (bad answers marked false, good "
                           "ones true), or train the good completions as supervised data ({\"prompt\", "
                           "\"completion\"} without 'label')")

    def _check_schema(self, record: dict, file: str, location: str) -> None:
        schema = detect_schema(record, file, location)
        if not self.schema:
            self.schema = schema
        elif schema != self.schema:
            mixed = (schema in PREFERENCE_SCHEMAS) != (self.schema in PREFERENCE_SCHEMAS)
            raise DatasetError(
                file, location, None,
                f"mixed schemas: this record looks like {schema} {SCHEMA_SHAPES[schema]}, but the file's first "
                f"record is {self.schema}, and every record must use the same schema",
                f"convert this record to {self.schema} {SCHEMA_SHAPES[self.schema]}, or put the two kinds of "
                "records in separate files" + (" (preference pairs and supervised examples train differently: "
                                               "one file, one objective)" if mixed else ""))

    def _count_extra(self, record: dict) -> None:
        for key in record.keys() - _SCHEMA_FIELDS[self.schema]:
            if key in self.extra_fields or len(self.extra_fields) < _MAX_EXTRA_FIELDS:
                self.extra_fields[key] = self.extra_fields.get(key, 0) + 1

    def rendered_notes(self) -> list[str]:
        notes = self.notes.render()
        if self.extra_fields:
            listed = ", ".join(f"'{k}' ({n} record(s))" for k, n in sorted(self.extra_fields.items()))
            # a key differing from one this schema reads only in case ('System') is data lost without an error
            read = _SCHEMA_FIELDS[self.schema] | ({"label"} if self.schema == "prompt_completion" else set())
            cased = [k for k in sorted(self.extra_fields) if k.lower() in read]
            renames = ", ".join(f"'{k}' to '{k.lower()}'" for k in cased)
            hint = f"; keys are lower-case, so these are not read: rename {renames}" if cased else ""
            notes.append(f"extra fields ignored: {listed}{hint}")
        return notes


class Lengths:
    """Exact min/max/mean plus a fixed-size, fixed-seed reservoir sample for the percentiles (flat memory)."""

    def __init__(self, size: int = 10_000, seed: int = 0) -> None:
        self.size, self.rng = size, random.Random(seed)
        self.count, self.total, self.low, self.high = 0, 0, 0, 0
        self.sample: list[int] = []

    def add(self, value: int) -> None:
        self.count += 1
        self.total += value
        self.low = value if self.count == 1 else min(self.low, value)
        self.high = max(self.high, value)
        if len(self.sample) < self.size:
            self.sample.append(value)
        else:
            slot = self.rng.randrange(self.count)
            if slot < self.size:
                self.sample[slot] = value

    def summary(self) -> dict:
        ordered = sorted(self.sample)

        def percentile(q: float) -> int:  # nearest rank
            return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

        return {"min": self.low, "mean": round(self.total / self.count, 1), "p50": percentile(0.5),
                "p95": percentile(0.95), "max": self.high}


def iter_examples(path: str | Path) -> Iterator[Example]:
    """Stream the normalised Examples of a dataset file; DatasetError at the first problem."""
    return _Stream(path).examples()


def inspect_dataset(path: str | Path, count_tokens: Callable[[str], int] | None = None) -> DatasetReport:
    """Validate the whole file (streaming, flat memory) and return its format, schema, size and lengths.

    `count_tokens`, when given, is applied to each example's text for token-length statistics.
    Raises DatasetError at the first problem.
    """
    stream = _Stream(path)
    chars, tokens = Lengths(), Lengths() if count_tokens else None
    for example in stream.examples():
        text = example_text(example)
        chars.add(len(text))
        if tokens is not None:
            tokens.add(count_tokens(text))
    return DatasetReport(path=stream.path, format=stream.format, schema=stream.schema, records=chars.count,
                         chars=chars.summary(), tokens=tokens.summary() if tokens else None,
                         notes=stream.rendered_notes(), token_sample=list(tokens.sample) if tokens else [])
