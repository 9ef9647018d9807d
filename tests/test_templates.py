"""A test per chat template: every `*.jinja` the installed trl ships (stock and `_training` versions) and overnight's
own daemon/core/templates/*.jinja, saved as a model's own template and taken through `choose("auto", folder)`: what it
refuses, which template trains, what trains of a 3-turn conversation (text and tokens), and whether turn 1 trains
the same whether or not later turns follow.

The tokenizer is a tiny byte-level BPE trained here, built with every special-token spelling any template renders,
so that special tokens are single tokens as in the real models and token boundaries fall where theirs do."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

from daemon.core import templating
from daemon.core.templating import (PROBE_TOOL_CHAT, PROBE_TOOLS, ChatFormat, TemplateError, choose, segments,
                                    token_labels)
from tests.conftest import unavailable

TRL = templating.trl_folder()
TRL_FILES = {p.name: p for p in sorted(TRL.glob("*.jinja"))} if TRL else {}
# overnight's own under their own prefix: trl could ship a chatml.jinja one day
OUR_FILES = {f"overnight/{p.name}": p for p in sorted(templating.OURS.glob("*.jinja"))}
FILES = {**TRL_FILES, **OUR_FILES}
NAMES = list(FILES)

# --------------------------------------------------------------------------------- what each template is expected to do
# Recorded by hand from the templates trl 1.16 ships: a trl upgrade that changes any of this fails here, by name.

# family -> the template's own raise_exception message for a system turn
REFUSES_SYSTEM = {"gemma": "System role not supported"}
# Stock templates with neither {% generation %} markers nor a trl training twin: "accepted" turn by turn, or
# "refused" (TemplateError with a Fix:).
BY_TURNS = {"gemma4.jinja": "accepted", "gemma4_v2.jinja": "accepted", "gemma4_v3.jinja": "accepted",
            "gemma4_v4.jinja": "accepted", "gemma4_v5.jinja": "accepted",
            "llama3_1.jinja": "accepted", "llama3_2.jinja": "accepted"}
# Stock templates that render an earlier assistant turn differently once later turns follow (Qwen3 drops the empty
# think block of all but the last answer): "auto" must train them with trl's training version.
REWRITES_EARLIER_TURNS = {"qwen3", "qwen3_5_nothink", "qwen3_5_think", "qwen3_6"}
# family -> (how the conversation's last answer ends, how an earlier one ends): harmony ends the final message with
# <|return|> but one in the history with <|end|>; Phi-3 closes the whole conversation with the eos token.
LAST_TURN_ENDS = {"gptoss": ("<|return|>", "<|end|>"), "phi3": ("<|end|>\n</s>", "<|end|>\n"),
                  "phi3_5": ("<|end|>\n</s>", "<|end|>\n")}
# family -> what trains around an answer {} (the assistant's own decoration: think blocks, channel headers, the
# end-of-turn tokens); turn 1 of the 3-turn conversation.
TRAINED_TURN = {
    "chatml": "{}<|im_end|>",
    "cohere": "{}<|END_OF_TURN_TOKEN|>",
    "cohere2": "{}<|END_RESPONSE|><|END_OF_TURN_TOKEN|>",
    "deepseek_r1_distill": "<｜Assistant｜>{}<｜end▁of▁sentence｜>",
    "deepseekv3": "<｜Assistant｜>{}<｜end▁of▁sentence｜>",
    "diffusion_gemma": "{}<turn|>\n",
    "gemma": "{}<end_of_turn>\n",
    "gemma3": "{}<end_of_turn>\n",
    "gemma4": "{}<turn|>\n",
    "gemma4_v2": "{}<turn|>\n",
    "gemma4_v3": "{}<turn|>\n",
    "gemma4_v4": "{}<turn|>\n",
    "gemma4_v5": "{}<turn|>\n",
    "glm4moe": "\n<think></think>\n{}<|user|>",
    "gptoss": "<|start|>assistant<|channel|>final<|message|>{}<|end|>",
    "idefics3": " {}<end_of_utterance>\n",
    "lfm2": "{}<|im_end|>\n",
    "lfm2_2_5": "{}<|im_end|>\n",
    "lfm2_2_5_v2": "{}<|im_end|>\n",
    "lfm2_2_5_vl": "{}<|im_end|>\n",
    "lfm2_v2": "{}<|im_end|>\n",
    "llama3": "{}<|eot_id|>",
    "llama3_1": "{}<|eot_id|>",
    "llama3_2": "{}<|eot_id|>",
    "llava_next": " {}</s>",
    "mistral": " {}</s>",
    "muse_glimmer": "<|start|>assistant to=user<|message|>{}<|eot|>",
    "nemotron_3_5_lightning": "<think></think>{}<|im_end|>\n",
    "nemotron_3_nano": "<think></think>{}<|im_end|>\n",
    "nemotron_3_super": "<think></think>{}<|im_end|>\n",
    "nemotron_3_ultra": "<think></think>{}<|im_end|>\n",
    "phi3": "{}<|end|>\n",
    "phi3_5": "{}<|end|>\n",
    # the newline after "assistant" is inside trl's generation block: trained although the prompt already ends with it
    "qwen2_5": "\n{}<|im_end|>\n",
    "qwen2_5_vl": "{}<|im_end|>\n",
    "qwen3": "<think>\n\n</think>\n\n{}<|im_end|>\n",
    "qwen3_5_nothink": "<think>\n\n</think>\n\n{}<|im_end|>\n",
    "qwen3_5_think": "<think>\n\n</think>\n\n{}<|im_end|>\n",
    "qwen3_6": "<think>\n\n</think>\n\n{}<|im_end|>\n",
    "qwen3_8": "<think>\n\n</think>\n\n{}<|im_end|>\n",
    "qwen3_instruct_2507": "{}<|im_end|>\n",
    "qwen3_vl": "{}<|im_end|>\n",
    "smolvlm": " {}<end_of_utterance>\n",
}
# Stock templates whose trl training twin renders other text than they do (every other twin renders the very same
# text, only with the answers marked): the Qwen3 twins keep the empty think block in earlier answers, GLM's closes
# the last answer with <|user|>, the token its generation stops on.
TWIN_DIFFERS = {"qwen3", "qwen3_5_nothink", "qwen3_5_think", "qwen3_6", "glm4moe"}
# Families whose template mentions tools but renders no `tool_calls` (LFM2 v1 expects the calls written in the
# content): the tool-call turn trains only its end-of-turn.
# what a model says before its answer, the generation prompt having left it to say (gpt-oss names its channel,
# muse_glimmer its recipient): it is generated, and scored with the answer
SAYS_FIRST = {"gptoss": "final", "muse_glimmer": "to=user"}
IGNORES_TOOL_CALLS = {"lfm2"}  # renders no tool call: such a conversation is refused


# ------------------------------------------------------------------------------------------------ the conversations
SYSTEM = {"role": "system", "content": "SYSTEM-RULES: answer in one short sentence."}
USERS = ["USER-ONE: which planet is red?", "USER-TWO: and the largest one?", "USER-THREE: how many moons has Mars?"]
ANSWERS = ["ASSIST-ONE: Mars is red.", "ASSIST-TWO: Jupiter is the largest.", "ASSIST-THREE: Mars has two moons."]
TURNS = [m for u, a in zip(USERS, ANSWERS) for m in ({"role": "user", "content": u},
                                                      {"role": "assistant", "content": a})]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "TOOL-DESCRIPTION: the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOL_QUESTION, TOOL_RESULT, TOOL_ANSWER = ("USER-WEATHER: is it sunny where I live?", "TOOL-RESULT: sunny, 24 C",
                                           "ASSIST-WEATHER: yes, it is sunny.")
TOOL_TURNS = [{"role": "user", "content": TOOL_QUESTION},
              {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function", "function": {
                  "name": "get_weather", "arguments": {"city": "Valparaiso"}}}]},
              {"role": "tool", "name": "get_weather", "tool_call_id": "call_1", "content": TOOL_RESULT},
              {"role": "assistant", "content": TOOL_ANSWER}]
BOS, EOS = "<s>", "</s>"

# Every special-token spelling a template renders (a broad net: a plain-text match only costs a vocabulary entry).
SPECIAL_SPELLINGS = re.compile(
    r"<\|[^|<>\s]{1,40}\|>"  # <|im_end|>, <|eot_id|>, <|START_OF_TURN_TOKEN|>, gemma4's <|"|>
    r"|<｜[^｜<>]{1,40}｜>"  # <｜Assistant｜>, <｜end▁of▁sentence｜>
    r"|<\|[a-z_]{1,40}>|<[a-z_]{1,40}\|>"  # gemma4's <|turn> … <turn|>
    r"|<[a-z_]+_of_[a-z_]+>"  # <start_of_turn>, <end_of_turn>, <end_of_utterance>
    r"|</?s>|\[/?INST\]|\[gMASK\]|<sop>")


def family(name: str) -> str:
    return Path(name).stem.removesuffix("_training")


def is_stock(name: str) -> bool:
    return name in TRL_FILES and not Path(name).stem.endswith("_training")


def twin(name: str) -> Path | None:
    """trl's training version of a stock template, where it ships one."""
    path = FILES[name].with_name(f"{Path(name).stem}_training.jinja")
    return path if is_stock(name) and path.is_file() else None


def mentions_tools(name: str) -> bool:
    return "tools" in FILES[name].read_text(encoding="utf-8")


def _as_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]


def raw_render(template: str, messages: list[dict[str, Any]], tools: list | None = None) -> str | None:
    """transformers' own rendering, without overnight's: None where the template refuses the conversation (string
    contents, else the vision-language templates' parts)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    for msgs in (messages, _as_parts(messages)):
        try:  # any failure: this form of the contents is refused, the other is tried
            text = render_jinja_template([msgs], tools=tools, chat_template=template, bos_token=BOS,
                                         eos_token=EOS)[0][0]
        except Exception:
            continue
        if messages[-1]["content"] in text:
            return text
    return None


# ------------------------------------------------------------------------------------- the tokenizer and model folders
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny tokenizer (once per module) and a model folder per template: what `choose` reads."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from daemon.client.tinymodel import QWEN2_SPLIT_REGEX, training_corpus

    rendered = []
    for path in FILES.values():
        template = path.read_text(encoding="utf-8")
        for messages, tools in (([SYSTEM, *TURNS], None), (TURNS, None), ([SYSTEM, *TOOL_TURNS], TOOLS)):
            text = raw_render(template, messages, tools)
            rendered += [text] if text else []
    specials = sorted({s for text in rendered for s in SPECIAL_SPELLINGS.findall(text)} | {BOS, EOS})
    # the same pipeline as the embedded tiny model (daemon/client/tinymodel.py); the rendered texts in the corpus give
    # merges across headers and newlines, where a span edge could fall inside a token
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_corpus() + rendered, trainer=trainer)

    root = tmp_path_factory.mktemp("models")
    folders = {}
    for i, (name, path) in enumerate(FILES.items()):
        folder = root / f"{i:02d}-{Path(name).stem}"
        folder.mkdir()
        tok.save(str(folder / "tokenizer.json"))
        (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}),
                                                      encoding="utf-8")
        (folder / "chat_template.jinja").write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
        folders[name] = folder
    # what the trainer hands stop_strings: the tokenizer's own special tokens
    specials = [t.content for t in tok.get_added_tokens_decoder().values() if t.special]
    return {"tokenizer": tok, "specials": specials, "folders": folders}


@lru_cache(maxsize=None)
def _chosen(folder: Path) -> ChatFormat | TemplateError:
    try:
        return choose("auto", folder)
    except TemplateError as e:
        return e


def chosen(world: dict[str, Any], name: str) -> ChatFormat:
    """The format "auto" trains this model with; where it is refused, test_auto_choice checks the refusal."""
    fmt = _chosen(world["folders"][name])
    if isinstance(fmt, TemplateError):
        assert BY_TURNS.get(name) == "refused", f"choose('auto') refuses {name}: {fmt}"
        pytest.skip("choose('auto') refuses this template (test_auto_choice checks that it says the fix)")
    return fmt


def conversation(name: str, turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return turns if family(name) in REFUSES_SYSTEM else [SYSTEM, *turns]


def trained_text(text: str, spans: list[tuple[int, int]], start: int = 0, end: int | None = None) -> str:
    """What trains of text[start:end]."""
    end = len(text) if end is None else end
    return "".join(text[max(a, start):min(b, end)] for a, b in sorted(spans) if min(b, end) > max(a, start))


def regions(text: str, asks: list[str]) -> list[tuple[int, int]]:
    """Where each reply is: from the end of what was asked to the start of the next ask (or the end)."""
    ends = [text.index(a) + len(a) for a in asks]
    starts = [text.index(a) for a in asks[1:]] + [len(text)]
    return list(zip(ends, starts))


def specials_after(piece: str, content: str, specials: list[str]) -> list[str]:
    after = piece[piece.index(content) + len(content):]
    return [s for s in specials if s in after]


# ---------------------------------------------------------------------------------------------------------- the tests
def test_trl_templates_found() -> None:
    if TRL is None:
        unavailable("trl is not installed: its chat templates cannot be tested (it is a dependency of overnight: pip install -e .)")
    # the stock and training versions of every family recorded above, overnight's own included
    assert {family(n) for n in FILES} == set(TRAINED_TURN), "a template family was added or removed: record it above"
    assert {"overnight/chatml.jinja", "overnight/mistral.jinja"} <= set(OUR_FILES)
    assert set(BY_TURNS) <= set(TRL_FILES) and REWRITES_EARLIER_TURNS | TWIN_DIFFERS <= set(TRAINED_TURN)


@pytest.mark.parametrize("name", NAMES)
def test_system_turn(world: dict[str, Any], name: str) -> None:
    fmt = chosen(world, name)
    refusal = REFUSES_SYSTEM.get(family(name))
    if refusal is None:
        text, spans = fmt.render([SYSTEM, *TURNS])
        assert SYSTEM["content"] in text
        assert SYSTEM["content"] not in trained_text(text, spans)
        return
    with pytest.raises(TemplateError) as refused:
        fmt.render([SYSTEM, *TURNS])
    # the template's own words, not a crash of ours
    own = re.findall(r"raise_exception\(\s*['\"]([^'\"]+)['\"]", FILES[name].read_text(encoding="utf-8"))
    assert refusal in own and refusal in str(refused.value)
    fmt.render(TURNS)


@pytest.mark.parametrize("name", NAMES)
def test_auto_choice(world: dict[str, Any], name: str) -> None:
    source = FILES[name].read_text(encoding="utf-8")
    fmt = _chosen(world["folders"][name])
    if twin(name) is not None:
        assert isinstance(fmt, ChatFormat), fmt
        assert fmt.label == f"{family(name)} (trl's training version)"
        assert fmt.template == twin(name).read_text(encoding="utf-8") and fmt.markers
        messages = conversation(name, TURNS)
        differs = raw_render(source, messages) != raw_render(fmt.template, messages)
        assert differs == (family(name) in TWIN_DIFFERS)
    elif templating.MARKER.search(source):
        assert isinstance(fmt, ChatFormat), fmt
        assert fmt.label == "the model's own" and fmt.template == source
    else:
        assert name in BY_TURNS, f"{name}: no markers, no training twin: record in BY_TURNS what 'auto' does"
        if BY_TURNS[name] == "refused":
            assert isinstance(fmt, TemplateError) and "Fix:" in str(fmt), fmt
            return
        assert isinstance(fmt, ChatFormat), fmt
        assert fmt.label == "the model's own" and fmt.template == source and not fmt.markers
    fmt.render(conversation(name, TURNS))


@pytest.mark.parametrize("name", NAMES)
def test_trained_segments(world: dict[str, Any], name: str) -> None:
    fmt = chosen(world, name)
    specials = world["specials"]
    system = [] if family(name) in REFUSES_SYSTEM else [SYSTEM["content"]]
    text, spans = fmt.render(conversation(name, TURNS))
    pieces = segments(text, spans)
    assert "".join(p["text"] for p in pieces) == text
    trained = [p["text"] for p in pieces if p["train"]]
    assert "".join(trained) == trained_text(text, spans)
    for asked in [*system, *USERS]:
        at = text.index(asked)
        assert not any(a < at + len(asked) and at < b for a, b in spans), f"{asked!r} is trained"
        assert not any(asked in t for t in trained)
    # outside the replies nothing trains: the system turn, the user turns, their headers
    replies = regions(text, USERS)
    assert trained_text(text, spans, 0, replies[0][0]) == ""
    for answer, (start, end) in zip(ANSWERS, replies):
        turn = trained_text(text, spans, start, end)
        assert answer in turn, f"{answer!r} is not trained: {trained}"
        assert any(a <= text.index(answer, start) and text.index(answer, start) + len(answer) <= b
                   for a, b in spans), f"{answer!r} is cut across spans"
        # one stretch per reply, ending with what ends the turn
        first = min(max(a, start) for a, b in spans if b > start and a < end)
        last = max(min(b, end) for a, b in spans if b > start and a < end)
        assert text[first:last] == turn
        assert specials_after(turn, answer, specials), f"no end-of-turn token trained after {answer!r}: {turn!r}"
    first_turn = trained_text(text, spans, *replies[0])
    assert first_turn == TRAINED_TURN[family(name)].format(ANSWERS[0])
    stops = fmt.stop_strings(specials)
    try:  # the token that ends a tool-call turn (GLM's <|observation|>, gpt-oss's <|call|>) trains in a tool chat
        with_tools = trained_text(*fmt.render(PROBE_TOOL_CHAT, PROBE_TOOLS))
    except TemplateError:
        with_tools = ""
    assert stops and all(s in "".join(trained) or s in with_tools for s in stops), (stops, trained)


@pytest.mark.parametrize("name", NAMES)
def test_an_answer_weighted_0_is_rendered_but_not_trained(world: dict[str, Any], name: str) -> None:
    """A record's "weight": 0 on an assistant turn (datasets.py): the same text, and every span but that turn's."""
    fmt = chosen(world, name)
    turns = [dict(m) for m in TURNS]
    turns[3]["weight"] = 0  # the second answer
    text, spans = fmt.render(conversation(name, turns))
    whole, all_spans = fmt.render(conversation(name, TURNS))
    assert text == whole
    replies = regions(text, USERS)
    assert trained_text(text, spans, *replies[1]) == "", trained_text(text, spans, *replies[1])
    for i in (0, 2):
        assert trained_text(text, spans, *replies[i]) == trained_text(text, all_spans, *replies[i])
    assert trained_text(text, spans, 0, replies[0][0]) == ""


@pytest.mark.parametrize("name", NAMES)
def test_token_labels(world: dict[str, Any], name: str) -> None:
    tok = world["tokenizer"]
    fmt = chosen(world, name)
    text, spans = fmt.render(conversation(name, TURNS))
    ids, flags = token_labels(tok, text, spans)
    enc = tok.encode(text, add_special_tokens=False)
    assert ids == enc.ids and len(flags) == len(ids)
    for special in world["specials"]:  # each end-of-turn token is one token, as in the real vocabulary
        if special in text:
            assert tok.token_to_id(special) in ids
    inside = [False] * len(text)
    for a, b in spans:
        inside[a:b] = [True] * (b - a)
    straddling = [(tok.id_to_token(i), text[s:e]) for i, (s, e) in zip(ids, enc.offsets)
                  if len(set(inside[s:e])) > 1]
    # the pre-tokenizer cuts at every special token and newline run, so no token crosses a span's edge here;
    # one that did would train characters outside the span, or leave some inside untrained
    assert straddling == [], straddling
    trained_ids = [i for i, f in zip(ids, flags) if f]
    by_offsets = "".join(text[s:e] for (s, e), f in zip(enc.offsets, flags) if f)
    assert tok.decode(trained_ids, skip_special_tokens=False) == by_offsets
    assert by_offsets == "".join(p["text"] for p in segments(text, spans) if p["train"])


@pytest.mark.parametrize("name", NAMES)
def test_turns_agree(world: dict[str, Any], name: str) -> None:
    fmt = chosen(world, name)
    source = FILES[name].read_text(encoding="utf-8")
    three = raw_render(source, conversation(name, TURNS))
    one = raw_render(source, conversation(name, TURNS[:2]))
    assert three is not None and one is not None
    # measured on the file itself: a stock template rewrites turn 1 when its render of turn 1 (up to the answer)
    # is not where the 3-turn render starts
    rewrites = not three.startswith(one[:one.index(ANSWERS[0]) + len(ANSWERS[0])])
    assert rewrites == (is_stock(name) and family(name) in REWRITES_EARLIER_TURNS), one
    if rewrites:
        assert fmt.label == f"{family(name)} (trl's training version)" and fmt.markers
    text3, spans3 = fmt.render(conversation(name, TURNS))
    text1, spans1 = fmt.render(conversation(name, TURNS[:2]))
    turn1_of_three = trained_text(text3, spans3, *regions(text3, USERS)[0])
    alone = trained_text(text1, spans1)
    last, earlier = LAST_TURN_ENDS.get(family(name), ("", ""))
    assert turn1_of_three.endswith(earlier)
    assert alone == turn1_of_three.removesuffix(earlier) + last


TOOL_NAMES = [n for n in NAMES if mentions_tools(n)]


@pytest.mark.parametrize("name", [n for n in NAMES if not mentions_tools(n) and family(n) in ("gemma", "cohere")])
def test_a_family_with_no_place_for_tools_says_so_not_fix_the_roles(world: dict[str, Any], name: str) -> None:
    """Gemma's and Cohere's templates raise on a tool turn ("roles must alternate"): the record is valid, the
    template has no tool role, and the fix is the family, not the record."""
    fmt = chosen(world, name)
    with pytest.raises(TemplateError, match="has no place for.*Fix: set chat_template to a family that renders tools"):
        fmt.render(conversation(name, TOOL_TURNS), TOOLS)


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_tools(world: dict[str, Any], name: str) -> None:
    fmt = chosen(world, name)
    if family(name) in IGNORES_TOOL_CALLS:  # the call would train as an empty turn: refused, with the fix
        with pytest.raises(TemplateError, match="does not show the tool call 'get_weather'.*Fix: set chat_template"):
            fmt.render(conversation(name, TOOL_TURNS), TOOLS)
        return
    text, spans = fmt.render(conversation(name, TOOL_TURNS), TOOLS)
    assert "TOOL-DESCRIPTION" in text and TOOL_RESULT in text
    trained = trained_text(text, spans)
    for untrained in ("TOOL-DESCRIPTION", TOOL_QUESTION, TOOL_RESULT, SYSTEM["content"]):
        assert untrained not in trained
    call, answer = regions(text, [TOOL_QUESTION, TOOL_RESULT])
    call_turn, answer_turn = trained_text(text, spans, *call), trained_text(text, spans, *answer)
    assert trained == call_turn + answer_turn
    assert "get_weather" in call_turn and "Valparaiso" in call_turn, call_turn
    assert TOOL_ANSWER in answer_turn and specials_after(answer_turn, TOOL_ANSWER, world["specials"])


@pytest.mark.parametrize("name", [n for n in TOOL_NAMES if family(n) not in IGNORES_TOOL_CALLS])
def test_tool_token_labels(world: dict[str, Any], name: str) -> None:
    tok = world["tokenizer"]
    text, spans = chosen(world, name).render(conversation(name, TOOL_TURNS), TOOLS)
    ids, flags = token_labels(tok, text, spans)
    enc = tok.encode(text, add_special_tokens=False)
    by_offsets = "".join(text[s:e] for (s, e), f in zip(enc.offsets, flags) if f)
    # the tool call's JSON and quoting give BPE other merges than plain answers: still no token across a span edge
    assert by_offsets == trained_text(text, spans)


def test_system_refusing_template_of_a_fine_tune(tmp_path: Path) -> None:
    """A model's own template that is no stock one (a fine-tune's edited Gemma) and refuses a system turn: usable
    turn by turn for conversations without one, as the same template is when it is the stock one."""
    if "gemma.jinja" not in TRL_FILES:
        unavailable("trl's gemma.jinja is not installed")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}))
    stock = TRL_FILES["gemma.jinja"].read_text(encoding="utf-8")
    (folder / "chat_template.jinja").write_text("{#- fine-tuned: our own copy -#}\n" + stock, encoding="utf-8")
    fmt = choose("auto", folder)
    assert fmt is not None and fmt.label == "the model's own" and not fmt.markers
    text, spans = fmt.render(TURNS)
    assert trained_text(text, spans, *regions(text, USERS)[0]) == TRAINED_TURN["gemma"].format(ANSWERS[0])


@pytest.mark.parametrize("trim", [False, True], ids=["offsets", "trimmed-offsets"])
@pytest.mark.parametrize("name", NAMES)
def test_probe_is_asked_as_training_shows_it(world: dict[str, Any], name: str, trim: bool) -> None:
    """An evolution probe (and `overnight ask`) renders through the tokenizer's template as the trainer sets it: the
    context and the reference it is scored on are the start of the very sequence training sees, the reference holds
    the answer — DeepSeek's generation prompt adds a "<think>" its trained turns lack, vision-language templates read
    content as parts only."""
    from transformers import PreTrainedTokenizerFast

    from daemon.core.evolution import answer_of
    from daemon.trainer.snapshots import encode_probe

    fmt = chosen(world, name)
    tok = PreTrainedTokenizerFast(tokenizer_object=world["tokenizer"], bos_token=BOS, eos_token=EOS)
    tok.chat_template = fmt.template  # as the trainer does (daemon/trainer/setup.py)
    if trim:  # GPT-2's tokenizer trims its offsets: " Teal" starts at "T"
        from tokenizers import processors
        tok.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    turns = conversation(name, TURNS)
    stops = [tok.convert_tokens_to_ids(s) for s in fmt.stop_strings(world["specials"])] or None
    probe = encode_probe(tok, {"messages": turns[:-1], "reference": ANSWERS[-1]}, stops)
    trained = world["tokenizer"].encode(fmt.render(turns)[0], add_special_tokens=False).ids
    asked = probe.prompt_ids + probe.reference_ids
    assert trained[:len(asked)] == asked
    # the context runs up to the answer: what the model is to say next is the answer (after a think block), as a
    # server prompts it, not the cue ("Assistant:") a context cut short would leave it to say first
    said = answer_of(tok.decode(probe.reference_ids, skip_special_tokens=True), ANSWERS[-1]).strip()
    assert said.removeprefix(SAYS_FIRST.get(family(name), "")).startswith(ANSWERS[-1]), said


@pytest.mark.parametrize("name", NAMES)
def test_a_base_lacking_the_templates_tokens_gets_them_and_stops_on_them(world: dict[str, Any], name: str) -> None:
    """A named template on a base model whose tokenizer lacks its special tokens: overnight finds them by their look
    (to add them, and to stop generation at the end of a turn) as a tokenizer holding them all would —
    <end_of_utterance> (SmolVLM, Idefics3) and Gemma 4's <|turn> … <turn|> included."""
    fmt = chosen(world, name)
    assert fmt.stop_strings() == fmt.stop_strings(world["specials"])
    assert set(fmt.special_strings()) == set(fmt.special_strings(world["specials"]))


@pytest.mark.parametrize("name", [n for n in NAMES if not mentions_tools(n)])
def test_a_template_without_tools_refuses_tool_turns_with_the_fix(world: dict[str, Any], name: str) -> None:
    """Phi-3, Llama 3, … render no tool turn (or not the tools given): a conversation with one would train answers to
    results the model never sees, so it is refused with the fix, unless the template refuses it itself (Gemma's
    roles must alternate)."""
    fmt = chosen(world, name)
    with pytest.raises(TemplateError, match=r"does not show .*Fix: set chat_template|refuses this conversation"):
        fmt.render(conversation(name, TOOL_TURNS), TOOLS)


def test_a_template_that_cannot_be_located_turn_by_turn_names_the_family_it_looks_like(tmp_path: Path) -> None:
    """A fine-tune's Mistral-style template (the system prompt moved into the last user turn, as v0.3 does) is
    refused with a fix naming mistral, not ChatML."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS}))
    (folder / "chat_template.jinja").write_text(
        "{%- for m in messages %}{%- if m.role == 'user' %}[INST] {% if loop.last %}(last) {% endif %}"
        "{{ m.content }} [/INST]{%- elif m.role == 'assistant' %}{{ m.content }}</s>{%- endif %}{%- endfor %}")
    with pytest.raises(TemplateError, match='e.g. "mistral"'):
        choose("auto", folder).render(TURNS)


STOCK = [n for n in NAMES if is_stock(n)]


@pytest.mark.parametrize("name", STOCK)
def test_a_stock_file_named_by_path_trains_every_answer_or_is_refused_at_once(world: dict[str, Any], name: str) -> None:
    """chat_template = "…/phi3.jinja": the file as it is, located turn by turn. What `check` and the intake get from
    `choose` is what the trainer gets: refused there (with the family to use), or every answer trains, each with
    its end of turn, and nothing the user said; Phi-3's eos, written only where the conversation ends, trains after
    the last answer only."""
    folder = world["folders"][name]
    try:
        fmt = choose(str(FILES[name]), folder)
    except TemplateError as e:
        assert family(name) not in ("phi3", "phi3_5")  # an eos only at the very end is no reason to refuse
        assert "renders a turn differently" in str(e) and f'"{family(name)}"' in str(e)
        return
    text, spans = fmt.render(conversation(name, TURNS))
    fmt.special_strings(world["specials"])  # what the trainer asks of it first
    trained = trained_text(text, spans)
    assert all(a in trained for a in ANSWERS) and not any(u in trained for u in USERS)
    if family(name) == "phi3":
        assert [text[a:b] for a, b in spans][:2] == [f"{ANSWERS[0]}<|end|>\n", f"{ANSWERS[1]}<|end|>\n"]
        assert text.endswith(f"{ANSWERS[2]}<|end|>\n</s>") and trained.endswith(f"{ANSWERS[2]}<|end|>\n</s>")


def test_a_chat_template_path_that_is_not_a_jinja_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "template.txt"
    other.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    with pytest.raises(TemplateError, match=r"is not a \.jinja file\. Fix: give the path of a \.jinja chat template"):
        choose(str(other), None)


def test_a_template_needing_a_special_token_the_model_lacks_says_so(tmp_path: Path) -> None:
    """Llama 3's template writes bos_token; a model without one gets that said, not 'correct that record'."""
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(TemplateError, match="uses bos_token, which the base model's tokenizer does not define.*Fix: "):
        choose(str(TRL_FILES["llama3.jinja"]), tmp_path)


def test_harmonys_stock_file_whose_eos_replaces_an_earlier_turns_end_is_refused(tmp_path: Path) -> None:
    """gpt-oss ends the last answer with <|return|> (its eos) where an earlier one ends with <|end|>: taken as a
    closing, the earlier answers would train without their end; refused, with the family to use."""
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "<|return|>"}))
    with pytest.raises(TemplateError, match='renders a turn differently.*"gptoss"'):
        choose(str(TRL_FILES["gptoss.jinja"]), tmp_path)
