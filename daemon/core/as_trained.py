"""A dataset as the trainer will see it, torch-free, for `overnight check`: each example rendered the way the run
lays it out (chat template or raw prompt), its trained segments, and its length in the base model's tokens — so
`check` reports the lengths, truncations and dropped records the run will have, not those of the bare text."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from daemon.core.datasets import ExampleKind, Lengths, as_chat
from daemon.core.templating import ChatFormat, TemplateError, at_record, labels_of, no_template, segments

BATCH = 256  # examples tokenised per batch call

# -- how much of a long text is tokenised -------------------------------------------------------------------------
# A sequence longer than max_length tokens is cut to its first max_length tokens (the trainer keeps those, and check
# counts the record as cut), so nothing past them can reach the model; tokenising all of a 50 MB record cost minutes
# and gigabytes for nothing. So a text is cut to `char_bound(max_length)` characters before it is tokenised, and
# its first max_length tokens are still exactly those of the whole text: a tokenizer normalises character by
# character and splits the text into words before its model (BPE, unigram, …) sees them, so a cut changes only the
# tokens of the word it falls in and what follows, and the cut text must still give MARGIN tokens past max_length,
# so that the changed tail lies beyond what is trained. CHARS_PER_TOKEN is generous: real vocabularies average 3-5
# characters a token on prose, a few more on code. A text whose tokens are longer still (a vocabulary with long runs
# of '=' or spaces as one token) gives fewer tokens once cut: it is tokenised again with 4x the characters, up to
# the whole text, so the bound costs time at worst and never changes a token. Plain text records (packed into
# blocks: every token is trained) are never cut. A cut text is longer than max_length by construction: its token
# count is a lower bound, and it counts as truncated.
CHARS_PER_TOKEN = 16
MARGIN = 64  # tokens past max_length the cut text must still give

E = TypeVar("E")


def char_bound(max_length: int) -> int:
    """The characters of a text tokenised at first (see above)."""
    return (max_length + MARGIN) * CHARS_PER_TOKEN


def encode_bounded(texts: list[str], max_length: int, encode: Callable[[list[str]], list[E]],
                   size: Callable[[E], int], from_end: bool = False) -> tuple[list[E], list[bool]]:
    """`encode(texts)` (a batch call) with each text cut to the characters that can matter at `max_length` (see
    above), and for each whether it was cut: its encoding then holds more than max_length tokens, and its first
    max_length are the whole text's (`from_end`: its end is kept instead, and its last max_length tokens are the
    whole text's, as a cut changes only the word it falls in). `size` gives an encoding's token count."""
    def kept(text: str, limit: int) -> str:
        return text[-limit:] if from_end else text[:limit]

    limit = char_bound(max_length)
    out = encode([kept(t, limit) for t in texts])  # a text within the limit is passed as it is
    cut = [len(t) > limit for t in texts]
    todo = [i for i, t in enumerate(texts) if cut[i] and size(out[i]) < max_length + MARGIN]
    while todo:  # long tokens: the cut text is too short to be sure; more of it, up to the whole text
        limit *= 4
        for i, encoding in zip(todo, encode([kept(texts[i], limit) for i in todo])):
            out[i], cut[i] = encoding, len(texts[i]) > limit
        todo = [i for i in todo if cut[i] and size(out[i]) < max_length + MARGIN]
    return out, cut


@dataclass
class TrainedView:
    """What the run will train on, counted over every record."""

    lengths: Lengths = field(default_factory=Lengths)
    truncated: int = 0  # records longer than max_length (cut)
    dropped: int = 0  # records with nothing left to learn once cut
    identical: int = 0  # preference pairs whose two sides are the same once cut
    # records so long that only their first char_bound(max_length) characters were tokenised: cut, and their token
    # counts in `lengths` are lower bounds
    capped: int = 0
    # the first `show` examples' segments (a preference pair gives two: prompt + chosen, then prompt + rejected)
    shown: list[list[dict[str, Any]]] = field(default_factory=list)
    # what each of `shown` is, for preference data: "record 1, chosen", "record 2, label false (undesirable)"
    shown_of: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {"tokens": self.lengths.summary() if self.lengths.count else None, "truncated": self.truncated,
               "dropped": self.dropped}
        if self.capped:
            out["counted_in_part"] = self.capped
        return {**out, "identical_after_cut": self.identical} if self.identical else out


def example_segments(example: dict[str, Any], fmt: ChatFormat | None, eos: str, bos: str = "") -> list[dict[str, Any]]:
    """One example as the trainer lays it out: {"text", "train"} segments whose concatenation is what it sees (a raw
    prompt starts with `bos`, what the tokenizer puts before a text: Llama's <|begin_of_text|>)."""
    if example["kind"] == ExampleKind.CHAT:
        if fmt is None:
            raise no_template(None)
        return segments(*fmt.render(example["messages"], example.get("tools")))
    if example["kind"] == ExampleKind.PROMPT:
        return [{"text": bos + example["prompt"], "train": False},
                {"text": example["completion"] + eos, "train": True}]
    if example["kind"] in (ExampleKind.PAIR, ExampleKind.JUDGED):
        return example_sequences(example, fmt, eos, bos)[0]
    return [{"text": example["text"] + eos, "train": True}]


def example_sequences(example: dict[str, Any], fmt: ChatFormat | None, eos: str,
                      bos: str = "") -> list[list[dict[str, Any]]]:
    """The sequences an example becomes: a preference pair two (prompt + chosen, prompt + rejected, laid out as SFT
    lays out prompt + completion: raw, or through the chat template), anything else one."""
    kind = example["kind"]
    if kind == ExampleKind.PAIR:
        return [_with_answer(example, example[side], fmt, eos, bos) for side in ("chosen", "rejected")]
    if kind == ExampleKind.JUDGED:
        return [_with_answer(example, example["completion"], fmt, eos, bos)]
    return [example_segments(example, fmt, eos, bos)]


def _sides(example: dict[str, Any], number: int) -> list[str]:
    """What each sequence of a preference example is (none for other examples)."""
    if example["kind"] == ExampleKind.PAIR:
        return [f"record {number}, chosen", f"record {number}, rejected"]
    if example["kind"] == ExampleKind.JUDGED:
        return [f"record {number}, label {'true (desirable)' if example['label'] else 'false (undesirable)'}"]
    return []


def _with_answer(example: dict[str, Any], answer: Any, fmt: ChatFormat | None, eos: str,
                 bos: str) -> list[dict[str, Any]]:
    """The prompt followed by one answer, the answer marked as what the objective scores."""
    if "messages" not in example:  # the text form, raw
        return [{"text": bos + example["prompt"], "train": False}, {"text": answer + eos, "train": True}]
    if fmt is None:
        raise no_template(None)
    tools = example.get("tools")
    text, spans = fmt.render(example["messages"] + answer, tools)
    head = fmt.render(example["messages"], tools)[0]
    # only the answer is scored: earlier assistant turns of a multi-turn prompt are context
    own = [s for s in spans if s[0] >= len(head)] if text.startswith(head) else sorted(spans)[-len(answer):]
    return segments(text, own)


def view(examples: Iterator[dict[str, Any]], fmt: ChatFormat | None, prompt_chat: bool, eos: str,
         tokenizer: Any, max_length: int, show: int, name: str) -> TrainedView:
    """Render every example (a record the template refuses is an error naming it), keep the first `show`, and
    with a `tokenizers.Tokenizer` count tokens, truncations and drops at `max_length` (a record with nothing of its
    answer left; a preference pair whose prompt alone fills it) and pairs made identical by the cut."""
    out = TrainedView()
    bos = bos_text(tokenizer) if tokenizer is not None else ""
    pending: list[tuple[int, list[list[dict[str, Any]]]]] = []
    for number, example in enumerate(examples, 1):
        try:
            seqs = example_sequences(as_chat(example) if prompt_chat else example, fmt, eos, bos)
        except TemplateError as e:
            raise TemplateError(at_record(f"{name}, record {number}", e)) from None
        if number <= show:
            out.shown.extend(seqs)
            out.shown_of.extend(_sides(example, number))
        if tokenizer is not None:
            pending.append((number, seqs))
            if len(pending) >= BATCH:
                _count(out, pending, tokenizer, max_length, name)
    if tokenizer is not None:
        _count(out, pending, tokenizer, max_length, name)
    return out


def _count(out: TrainedView, pending: list[tuple[int, list[list[dict[str, Any]]]]], tokenizer: Any,
           max_length: int, name: str) -> None:
    texts, spans = [], []
    for _, seqs in pending:
        for segs in seqs:
            at, marked = 0, []
            for s in segs:
                if s["train"]:
                    marked.append((at, at + len(s["text"])))
                at += len(s["text"])
            texts.append("".join(s["text"] for s in segs))
            spans.append(marked)
    encodings, cut = encode_bounded(texts, max_length, lambda batch: tokenizer.encode_batch(
        batch, add_special_tokens=False), lambda encoding: len(encoding.ids))
    del texts
    encoded = iter(zip(encodings, spans, cut))
    for number, seqs in pending:
        each = [next(encoded) for _ in seqs]
        sides = [labels_of(encoding, marked) for encoding, marked, _ in each]
        longest = max(len(ids) for ids, _ in sides)
        out.lengths.add(longest)
        out.truncated += longest > max_length
        out.capped += any(c for _, _, c in each)
        if len(sides) == 1:
            out.dropped += not sides[0][1][:max_length].any()
            continue
        if not all(trained[:max_length].any() for _, trained in sides):
            out.dropped += 1  # its prompt alone fills max_length: the trainer drops it, as an SFT record cut to nothing
            continue
        (chosen, _), (rejected, _) = sides
        if longest > max_length and list(chosen[:max_length]) == list(rejected[:max_length]):
            out.identical += 1
    pending.clear()


def text_blocks(examples: Iterator[dict[str, Any]], tokenizer: Any, eos: str, max_length: int,
                n: int) -> list[list[dict[str, Any]]]:
    """The first `n` blocks of a text dataset as the trainer packs them (sequences.pack_blocks): its records' tokens
    joined, each record followed by the end-of-sequence token, cut every max_length tokens; each block one trained
    segment. Only as much of the records is tokenised as the blocks take."""
    eos_ids = [tokenizer.token_to_id(eos)] if eos and tokenizer.token_to_id(eos) is not None else []
    need, stream = n * max_length, []
    for example in examples:
        stream += tokenizer.encode(example["text"][: char_bound(need)]).ids + eos_ids
        if len(stream) >= need:
            break
    return [[{"text": tokenizer.decode(stream[i:i + max_length], skip_special_tokens=False), "train": True}]
            for i in range(0, min(len(stream), need), max_length)]


def bos_text(tokenizer: Any) -> str:
    """What a `tokenizers.Tokenizer` puts before a text it encodes with its special tokens, as the trainer encodes a
    raw prompt (Llama 3's <|begin_of_text|>; "" for Qwen's)."""
    with_special = tokenizer.encode("a", add_special_tokens=True).ids
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    head = with_special.index(plain[0]) if plain and plain[0] in with_special else 0
    return tokenizer.decode(with_special[:head], skip_special_tokens=False) if head else ""


def missing_specials(backend: Any, chat: ChatFormat | None) -> list[str]:
    """The special tokens `chat`'s template writes that a `tokenizers.Tokenizer` lacks (ChatML's <|im_start|> on a
    base model): the trainer adds them for a template the user chose (model.add_template_tokens), and check's
    counts do the same (add_template_tokens below)."""
    return [t for t in (chat.special_strings() if chat else [])
            if len(backend.encode(t, add_special_tokens=False).ids) != 1]


def add_template_tokens(tokenizer: Any, chat: ChatFormat | None) -> None:
    """The tokenizer as the trainer extends it for `chat`: the special tokens it lacks, one token each."""
    from tokenizers import AddedToken

    missing = missing_specials(tokenizer, chat)
    if missing:
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])


def adapter_token_rows(adapter: Path) -> list[int]:
    """The token ids whose embedding rows an adapter carries (the tokens its run's chat template added)."""
    try:
        indices = json.loads((adapter / "adapter_config.json").read_text()).get("trainable_token_indices")
    except (OSError, ValueError, AttributeError):
        return []
    if isinstance(indices, dict):  # per embedding layer
        indices = [i for layer in indices.values() for i in layer]
    return sorted(set(indices or []))


def load_tokenizer(folder: Path | None) -> Any:
    """The base model's tokenizer.json through the `tokenizers` library (no torch), or None."""
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))
