"""The chat format a run trains with, torch-free: which template, each conversation rendered once with the spans
to train, and those spans turned into token labels. `overnight check --show`, the trainer and export use this one
module, so what check shows is what trains and what a server renders.

- `chat_template = "auto"`: the model's own template. Where it has no `{% generation %}` markers, the training
  version trl ships for that family (same tokens, prefix-stable, with markers) is used if the model's template is a
  known stock one; else the model's own, located turn by turn (it must then render each turn the same whatever
  follows: Qwen3's stock template does not, and is refused with the fix).
- A family name (`chatml`, `llama3`, `qwen2_5`, `qwen3`, `gemma`, `mistral`, `phi3`, … every family trl ships):
  that family's training template. A path to a `.jinja` file: that file.

Rendering is transformers' own (`render_jinja_template`: the sandbox, `raise_exception`, `tojson`, the
generation tracker), imported only when a conversation is rendered.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence
from daemon.core.errors import TemplateError

OURS = Path(__file__).with_name("templates")
MARKER = re.compile(r"{%-?\s*generation\s*-?%}")
TRAINING = "_training"
# special-token spellings used by chat templates (what a tokenizer that lacks them gets added, and where a named
# template's turns end): <|im_end|>, <|eot_id|>, <｜end▁of▁sentence｜>, gemma4's <|turn> … <turn|>, <end_of_turn>,
# <end_of_utterance>, </s>, [/INST], GLM's [gMASK]<sop>
SPECIAL = re.compile(r"<\|[^|<>\s]{1,40}\|>|<｜[^｜<>]{1,40}｜>|<\|[a-z_]{1,40}>|<[a-z_]{1,40}\|>|<[a-z_]+_of_[a-z_]+>"
                     r"|</?s>|\[/?INST\]|\[gMASK\]|<sop>")
# what every template must render: a system turn and two exchanges (roles alternate, as the strictest demand)
PROBE_CHAT = [{"role": "system", "content": "S0"}, {"role": "user", "content": "U1"},
              {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
              {"role": "assistant", "content": "A2"}]


# a tool call, its result and the answer after it: the tokens a family writes only around tools (GLM's
# <|observation|>, gpt-oss's <|call|>, which end a tool-call turn) are added and stopped on like the others
PROBE_TOOL_CHAT = [{"role": "user", "content": "U1"},
                   {"role": "assistant", "content": "", "tool_calls": [{"id": "c0", "type": "function", "function": {
                       "name": "f0", "arguments": {"q": "V9"}}}]},
                   {"role": "tool", "name": "f0", "tool_call_id": "c0", "content": "R1"},
                   {"role": "assistant", "content": "A2"}]
PROBE_TOOLS = [{"type": "function", "function": {"name": "f0", "description": "D0", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]


def no_template(model: str | None) -> TemplateError:
    """Chat records on a base model without a template (chat_template "auto"): check, intake and trainer alike."""
    return TemplateError(f"the base model{f' {model}' if model else ''} has no chat template, so chat records "
                         f"cannot be formatted. Fix: set chat_template to a family name (e.g. chat_template = "
                         f"\"chatml\") in the sidecar or overnight.toml, or convert the dataset to a "
                         f"prompt/completion or text schema.")


TOOLS_FIX = ('Fix: set chat_template to a family that renders tools, tool calls and tool turns (e.g. '
             'chat_template = "qwen2_5" or "llama3_1"), or leave the tool turns out of the records.')


def at_record(where: str, error: TemplateError) -> str:
    """A refused conversation named by its record, with a fix unless the template's own message has one."""
    fix = "" if " Fix: " in str(error) else (". Fix: correct that record (e.g. its roles, in the order the template "
                                             "wants), or choose another chat_template")
    return f"{where}: {error}{fix}"


@dataclass(frozen=True)
class ChatFormat:
    """The template a run renders conversations with, and what the console and `check` say of it."""

    template: str
    label: str  # "the model's own", "qwen3 (trl's training version)", "chatml (overnight)", a path
    why: str  # one clause: why this template
    special: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, … as the template sees them
    parts: bool = False  # the template reads content as [{"type": "text", "text": …}] (vision-language families)

    @property
    def markers(self) -> bool:
        return bool(MARKER.search(self.template))

    def describe(self) -> str:
        return f"{self.label} ({self.why})"

    def render(self, messages: Sequence[dict[str, Any]], tools: list | None = None) -> tuple[str, list[tuple[int, int]]]:
        """The conversation as the model sees it, and the character spans to train (assistant turns and their
        end-of-turn tokens, save a turn the record weights 0: `"weight": 0`, datasets.py): one render with generation
        markers, else one per assistant turn. A template that leaves out a tool call, a tool's result or the tools
        given is refused (TemplateError)."""
        shown = as_parts(messages) if self.parts else messages
        with_tools = bool(tools) or any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
        try:
            text, spans = (_render(self.template, shown, tools, self.special, spans=True) if self.markers else
                           self._render_by_prefixes(shown, tools))
        except TemplateError as e:
            if with_tools:  # a family with no tool role (Gemma, Cohere, older Mistral) raises on the tool turns
                raise TemplateError(f"{e}; the record has tool calls or tool turns, which the chat template "
                                    f"{self.label} has no place for. {TOOLS_FIX}") from None
            raise
        if with_tools:  # every assistant turn's spans: a call in a turn weighted 0 is shown all the same
            self._shows_tools(messages, tools, text, "".join(text[a:b] for a, b in spans))
        if not any(_untrained(m) for m in messages):
            return text, spans
        if not self.markers:  # turn by turn: one span per assistant turn, in order
            turns = [m for m in messages if m.get("role") == "assistant"]
            return text, [span for span, m in zip(spans, turns, strict=True) if not _untrained(m)]
        return text, self._trained_spans(shown, tools, text, spans)

    def _trained_spans(self, messages: Sequence[dict[str, Any]], tools: list | None, text: str,
                       spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """`spans` without those of the assistant turns weighted 0. A span belongs to the assistant turn it follows:
        each turn starts where the conversation before it, rendered alone, stops agreeing with `text` (as turn by
        turn; a template may mark a turn in several spans, or its end apart, as Phi-3 its eos)."""
        turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        starts = [self._agreeing(messages[:i], tools, text) for i in turns]
        owner = [max((n for n, start in enumerate(starts) if start <= a), default=None) for a, _ in sorted(spans)]
        ordered = all(a < b for a, b in zip(starts, starts[1:]))
        if not ordered or None in owner or set(owner) != set(range(len(turns))):
            raise TemplateError(
                f"the chat template ({self.label}) renders the conversation so that its trained spans cannot be told "
                f"apart turn by turn, and the record weights an assistant turn 0. Fix: set chat_template to a family "
                f"name (e.g. \"{_guess_family(self.template)}\"), or remove the 'weight'/'loss_weight' of 0 (every "
                f"assistant turn is then trained).")
        return [span for span, n in zip(sorted(spans), owner) if not _untrained(messages[turns[n]])]

    def _agreeing(self, messages: Sequence[dict[str, Any]], tools: list | None, text: str) -> int:
        """How far `messages`, rendered alone, agree with `text` (the whole conversation's render)."""
        if not messages:
            return 0
        try:
            head = _render(self.template, messages, tools, self.special, spans=False)[0]
        except TemplateError:
            return 0  # a conversation the template refuses to end there: no place known; the caller refuses
        return len(os.path.commonprefix([head, text]))

    def _shows_tools(self, messages: Sequence[dict[str, Any]], tools: list | None, text: str, trained: str) -> None:
        """Every tool call (in what trains), tool result and the tools given are in the render: a template that
        drops them (Phi-3 has no tool role) would train answers to results the model never sees."""
        for i, m in enumerate(messages):
            names = [c["function"]["name"] for c in m.get("tool_calls") or ()]
            result = m["content"] if m.get("role") == "tool" and isinstance(m.get("content"), str) else ""
            shown = not result.strip() or result in text or json.dumps(result, ensure_ascii=False) in text  # tojson
            missing = next((f"the tool call {n!r}" for n in names if n not in trained), None) or (
                None if shown else "the tool result")
            if missing:
                raise TemplateError(f"the chat template {self.label} does not show {missing} of turn {i + 1} of the "
                                    f"conversation (role {m['role']!r}): the model would be trained on a conversation it never sees. "
                                    f"{TOOLS_FIX}")
        given = as_parts(messages) if self.parts else messages
        if tools and _render(self.template, given, None, self.special, spans=False)[0] == text:
            raise TemplateError(f"the chat template {self.label} does not show the record's 'tools' (the functions "
                                f"the model may call): it would learn to call them without seeing them. {TOOLS_FIX}")

    def prompt(self, messages: Sequence[dict[str, Any]], tools: list | None = None) -> str:
        """The text a server sends for `messages` followed by the assistant's cue (probes, chat, export checks)."""
        messages = as_parts(messages) if self.parts else messages
        return _render(self.template, messages, tools, self.special, spans=False, prompt=True)[0]

    def _render_by_prefixes(self, messages: Sequence[dict[str, Any]], tools: list | None
                            ) -> tuple[str, list[tuple[int, int]]]:
        # A template without markers: the conversation up to each assistant turn, with and without it; the
        # difference is what the assistant says. Each turn must render the same whatever follows, but for a special
        # token the template writes only where the conversation ends (Phi-3's eos): an earlier turn trains up to it.
        def text(msgs: Sequence[dict[str, Any]], prompt: bool) -> str:
            return _render(self.template, msgs, tools, self.special, spans=False, prompt=prompt)[0] if msgs else ""

        rest = text(messages, False)
        spans: list[tuple[int, int]] = []
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            head, full = text(messages[:i], True), text(messages[:i + 1], False)
            said = msg.get("content") if isinstance(msg.get("content"), str) else ""
            closing = "" if rest.startswith(full) else next(
                (c for c in self._closings() if full.endswith(c) and rest.endswith(c) and rest.startswith(full[:-len(c)])
                 # the turn keeps an end of its own before it (Phi-3's <|end|>); one whose end the closing replaces
                 # (harmony's <|return|> for <|end|>) cannot be located so
                 and not (said.strip() and full[:-len(c)].rstrip().endswith(said.strip()))), None)
            if closing is None or not (rest.startswith(head) and full.startswith(head)):
                raise TemplateError(
                    f"the chat template ({self.label}) renders a turn differently depending on what follows, so the "
                    f"assistant turns cannot be located. Fix: set chat_template to a family name (e.g. "
                    f"\"{_guess_family(self.template)}\") or to a .jinja file with {{% generation %}} markers.")
            spans.append((len(head), len(full) - len(closing)))
        return rest, spans

    def _closings(self) -> list[str]:
        """What a template may write only where the conversation ends: a special token (Phi-3's eos), maybe a
        newline after it."""
        return [t + end for t in self.special.values() if isinstance(t, str) and t for end in ("", "\n")]

    def stop_strings(self, specials: Sequence[str] = ()) -> list[str]:
        """The special tokens that end an assistant turn in this template (what generation must stop on): those of
        `specials` (a tokenizer's special tokens) trained after the answer, else what looks like one."""
        text, spans = self.render(PROBE_CHAT[1:3])
        trained = "".join(text[a:b] for a, b in spans)
        tail = trained[trained.find("A1") + 2:] if "A1" in trained else trained
        found = _specials_in(tail, specials)
        call = self._tool_rendered()
        if call is not None:  # the token that ends a tool-call turn (the last one of it: GLM's <|observation|>)
            text, spans = call
            turn = text[spans[0][0]:spans[0][1]] if spans else ""
            last = _specials_in(turn[turn.rfind("V9") + 2:], specials)[-1:] if "V9" in turn else []
            found += [t for t in last if t not in found]
        return found

    def special_strings(self, specials: Sequence[str] = ()) -> list[str]:
        """The special tokens the template renders around a conversation (and around tools, where it renders
        them), of `specials` or by their look."""
        found = _specials_in(self.render(PROBE_CHAT if self.takes_system() else PROBE_CHAT[1:])[0], specials)
        call = self._tool_rendered()
        return found + [t for t in _specials_in(call[0], specials) if t not in found] if call else found

    def _tool_rendered(self) -> tuple[str, list[tuple[int, int]]] | None:
        """PROBE_TOOL_CHAT rendered (text, trained spans), None for a family that has no place for tools."""
        try:
            return self.render(PROBE_TOOL_CHAT, PROBE_TOOLS)
        except TemplateError:
            return None

    def takes_system(self) -> bool:
        try:
            self.render(PROBE_CHAT[:3])
            return True
        except TemplateError:
            return False


def _untrained(message: dict[str, Any]) -> bool:
    """An assistant turn the record weights 0: rendered as context, not trained."""
    return message.get("role") == "assistant" and message.get("weight") == 0


def _specials_in(text: str, specials: Sequence[str]) -> list[str]:
    if specials:
        found = sorted((text.find(s), s) for s in set(specials) if s and s in text)
        return [s for _, s in found]
    return list(dict.fromkeys(SPECIAL.findall(text)))


def as_parts(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m.get("content"), str) else m
            for m in messages]


# ----------------------------------------------------------------------------------------- finding templates

def trl_folder() -> Path | None:
    """trl's chat_templates folder, found without importing trl (which would import torch)."""
    spec = importlib.util.find_spec("trl")
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(root) / "chat_templates"
        if folder.is_dir():
            return folder
    return None


@lru_cache(maxsize=1)
def _families() -> dict[str, tuple[Path, str]]:
    found: dict[str, tuple[Path, str]] = {}
    for folder, source in ((trl_folder(), "trl"), (OURS, "overnight")):
        for path in sorted(folder.glob("*.jinja")) if folder else ():
            name = path.stem.removesuffix(TRAINING)
            if path.stem.endswith(TRAINING) or name not in found:  # the training version wins
                found[name] = (path, source)
    return found


def families() -> dict[str, Path]:
    """Family name → the template file a run with `chat_template = NAME` trains with."""
    return {name: path for name, (path, _) in sorted(_families().items())}


def _stock_twins() -> dict[str, str]:
    """Whitespace-free text of each stock template that has a training version → that family's name."""
    folder = trl_folder()
    twins = {}
    for path in sorted(folder.glob(f"*{TRAINING}.jinja")) if folder else ():
        stock = path.with_name(path.name.replace(TRAINING, ""))
        if stock.is_file():
            twins[_squash(stock.read_text(encoding="utf-8"))] = path.stem.removesuffix(TRAINING)
    return twins


def _squash(template: str) -> str:
    return re.sub(r"\s+", "", template)


# the family a template that is no stock one most likely belongs to, by the turn markers it writes
_LOOKS_LIKE = (("[INST]", "mistral"), ("<|start_header_id|>", "llama3"), ("<start_of_turn>", "gemma"),
               ("<|im_start|>", "chatml"))


def _guess_family(template: str) -> str:
    known = _stock_twins().get(_squash(template))
    return known or next((family for marker, family in _LOOKS_LIKE if marker in template), "chatml")


def model_template(folder: Path | None) -> str | None:
    """The chat template saved with a model: chat_template.jinja, else tokenizer_config.json's (the default one)."""
    if folder is None:
        return None
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = _tokenizer_config(folder)
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) and template.strip() else None


def _tokenizer_config(folder: Path) -> dict[str, Any]:
    path = folder / "tokenizer_config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


def special_tokens(folder: Path | None) -> dict[str, str]:
    """bos_token, eos_token, pad_token, unk_token as a template sees them (what apply_chat_template passes)."""
    config = _tokenizer_config(folder) if folder else {}
    out = {}
    for key in SPECIAL_NAMES:
        value = config.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


def choose(option: str, folder: Path | None, *, where: str = "chat_template") -> ChatFormat | None:
    """The ChatFormat for `chat_template = option` on the model in `folder` (None: "auto" and the model has none).

    TemplateError when a named family does not exist, a file does not parse, or the model's own template cannot
    be trained turn by turn."""
    special = special_tokens(folder)
    if option != "auto":
        fmt = _compiled(_named(option, where), special)
        if not fmt.markers:  # located turn by turn: refused now (check, the drop) rather than in the trainer
            fmt.render(PROBE_CHAT if fmt.takes_system() else PROBE_CHAT[1:])
        return fmt
    own = model_template(folder)
    if own is None:
        return None
    if MARKER.search(own):
        return _compiled(ChatFormat(own, "the model's own", "it marks what the assistant says"), special)
    family = _stock_twins().get(_squash(own))
    if family is not None:
        path = families()[family]
        return _compiled(ChatFormat(path.read_text(encoding="utf-8"), f"{family} (trl's training version)",
                                    "the model's own template is the stock one; this renders the same tokens with "
                                    "what the assistant says marked"), special)
    fmt = _compiled(ChatFormat(own, "the model's own", "located turn by turn: it has no generation markers"), special)
    fmt.render(PROBE_CHAT if fmt.takes_system() else PROBE_CHAT[1:])  # refused now rather than at a record
    return fmt


def for_run(option: str, folder: Path | None, places: Sequence[Path] = ()) -> ChatFormat | None:
    """`choose` with a relative .jinja path tried in `places` (the home, the run folder), never in the current
    folder (the daemon's is not the user's): found nowhere, the first place's path is the one said missing."""
    if _is_path(option) and not Path(option).expanduser().is_absolute() and places:
        found = next((p / option for p in places if (p / option).is_file()), places[0] / option)
        option = str(found)
    return choose(option, folder)


def prompt_as_chat(prompt_format: str, fmt: ChatFormat | None) -> bool:
    """Whether prompt/completion and alpaca records are shown as one chat exchange; TemplateError when "chat" is
    asked of a run without a template."""
    if prompt_format == "chat" and fmt is None:
        raise TemplateError("prompt_format = \"chat\" needs a chat template, and the base model has none. Fix: set "
                            "chat_template to a family name (e.g. \"chatml\"), or prompt_format = \"raw\".")
    return prompt_format == "chat" or (prompt_format == "auto" and fmt is not None)


def _is_path(option: str) -> bool:
    return option.endswith((".jinja", ".j2")) or "/" in option


def unknown_family(option: str, where: str = "chat_template") -> str:
    """The message for a chat_template naming no family (its Fix lists them)."""
    return (f"{where} = \"{option}\" is not a chat template family overnight knows. Fix: use \"auto\" (the model's "
            f"own), a path to a .jinja file, or one of: {', '.join(families())}.")


def option_problem(option: str) -> str | None:
    """What is wrong with a chat_template value before any model or file is looked at: a name that is neither
    "auto", a path nor a known family (None: nothing yet; a path is read when the run's template is chosen)."""
    if option == "auto" or _is_path(option) or option in _families():
        return None
    return unknown_family(option)


def _named(option: str, where: str) -> ChatFormat:
    if _is_path(option):
        path = Path(option).expanduser()
        if path.suffix not in (".jinja", ".j2"):  # a template file, nothing else a run could read (an upload's sidecar)
            raise TemplateError(f"{where} = {json.dumps(option, ensure_ascii=False)} is not a .jinja file. Fix: give "
                                f"the path of a .jinja chat template, or a family name ({', '.join(families())}).")
        try:
            return ChatFormat(path.read_text(encoding="utf-8"), str(path), "chat_template names this file")
        except (OSError, UnicodeDecodeError, ValueError) as e:  # ValueError: a NUL in the path
            reason = "the path holds a NUL character" if "\0" in option else (getattr(e, "strerror", None) or e)
            raise TemplateError(f"{where} = {json.dumps(option, ensure_ascii=False)}: cannot read the file "
                                f"({reason}). Fix: give the path of a readable .jinja file, or a family "
                                f"name.") from None
    found = _families().get(option)
    if found is None:
        raise TemplateError(unknown_family(option, where))
    path, source = found
    kind = "trl's training version" if path.stem.endswith(TRAINING) else source
    return ChatFormat(path.read_text(encoding="utf-8"), f"{option} ({kind})", "chat_template names this family")


# A named template checked before any base model is set: the model's special tokens are not known yet, and a
# family that writes them (mistral's bos_token) must still render, so that what is checked is whether it accepts the
# conversations. Nothing rendered with these is shown or tokenised (no base model: no `--show`, no tokenizer).
_STAND_INS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def with_stand_ins(fmt: ChatFormat) -> ChatFormat:
    """The format with stand-ins for the special tokens of a base model not yet set (see above)."""
    return _compiled(ChatFormat(fmt.template, fmt.label, fmt.why), _STAND_INS)


def _compiled(fmt: ChatFormat, special: dict[str, str]) -> ChatFormat:
    """The format with the model's special tokens, once the template is known to parse."""
    import jinja2
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(fmt.template)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"the chat template {fmt.label} does not parse: {e.message} (line {e.lineno}). Fix: "
                            f"correct the template, or set chat_template to a family name.") from None
    plain = ChatFormat(fmt.template, fmt.label, fmt.why, special)
    return plain if _shows_content(plain) else ChatFormat(fmt.template, fmt.label, fmt.why, special, parts=True)


@lru_cache(maxsize=8)
def reads_parts(template: str) -> bool:
    """Whether a (parsing) template reads content as parts only, as training then gives it (`ChatFormat.parts`):
    for what renders through the tokenizer's own `apply_chat_template` (probes, `ask`)."""
    return not _shows_content(ChatFormat(template, "", "", _STAND_INS))


def _shows_content(fmt: ChatFormat) -> bool:
    """Whether the template renders plain-string contents (vision-language templates iterate over parts)."""
    try:
        text = fmt.prompt(PROBE_CHAT[1:3])
    except TemplateError:
        return False
    return "U1" in text and "A1" in text


def _render(template: str, messages: Sequence[dict[str, Any]], tools: list | None, special: dict[str, str], *,
            spans: bool, prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, indices = render_jinja_template([list(messages)], tools=tools or None, chat_template=template,
                                                  return_assistant_tokens_mask=spans, add_generation_prompt=prompt,
                                                  **special)
    except jinja2.UndefinedError as e:
        token = next((t for t in SPECIAL_NAMES if f"'{t}'" in str(e)), None)
        if token is None:
            raise TemplateError(f"the chat template refuses this conversation: {e}") from None
        raise TemplateError(f"the chat template uses {token}, which the base model's tokenizer does not define, so "
                            f"it renders no conversation. Fix: set chat_template to a template made for this model "
                            f"(a family name, e.g. \"chatml\"), or give the tokenizer a {token} "
                            f"(tokenizer_config.json)") from None
    except jinja2.TemplateError as e:
        raise TemplateError(f"the chat template refuses this conversation: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as e:
        raise TemplateError(f"the chat template fails on this conversation ({type(e).__name__}: {e})") from None
    return rendered[0], [tuple(s) for s in indices[0]] if spans else []


def serving_template(template: str) -> str:
    """The template for serving: the generation markers become a block that is always on, so every jinja engine
    (llama.cpp, Ollama, older transformers) parses it and renders the same text, whitespace included."""
    template = re.sub(r"{%(-?)\s*endgeneration\s*(-?)%}", r"{%\1 endif \2%}", template)
    return re.sub(r"{%(-?)\s*generation\s*(-?)%}", r"{%\1 if true \2%}", template)


# ------------------------------------------------------------------------------------------- segments and labels

def segments(text: str, spans: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """The rendered text cut into `{"text", "train"}` pieces whose concatenation is the text."""
    out: list[dict[str, Any]] = []
    at = 0
    for start, end in sorted(spans):
        if start > at:
            out.append({"text": text[at:start], "train": False})
        if end > max(start, at):
            out.append({"text": text[max(start, at):end], "train": True})
        at = max(at, end)
    if at < len(text):
        out.append({"text": text[at:], "train": False})
    return out


def token_labels(tokenizer: Any, text: str, spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Token ids of `text` (a `tokenizers.Tokenizer`, special tokens as written in the text, nothing added) and
    whether each is trained: a token is trained when its characters begin inside a span."""
    ids, trained = labels_of(tokenizer.encode(text, add_special_tokens=False), spans)
    return ids.tolist(), trained.tolist()


def labels_of(encoding: Any, spans: Sequence[tuple[int, int]]) -> tuple[Any, Any]:
    """`token_labels` for a text already encoded (e.g. by `encode_batch`), as numpy arrays (ids, trained)."""
    import numpy as np

    starts, ends = [], []
    for start, end in sorted(spans):  # merged, so that one lookup per token finds its span
        if starts and start <= ends[-1]:
            ends[-1] = max(ends[-1], end)
        elif end > start:
            starts.append(start)
            ends.append(end)
    offsets = np.asarray(encoding.offsets, dtype=np.int64).reshape(-1, 2)
    i = np.searchsorted(np.asarray(starts, dtype=np.int64), offsets[:, 0], side="right") - 1
    inside = (i >= 0) & (offsets[:, 0] < np.asarray(ends + [0], dtype=np.int64)[i])
    return np.asarray(encoding.ids, dtype=np.int32), inside & (offsets[:, 1] > offsets[:, 0])
