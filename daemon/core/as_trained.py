"""A dataset as the trainer will see it, torch-free, for `overnight check`: each example rendered the way the run
lays it out (chat template or raw prompt), its trained segments, and its length in the base model's tokens — so
`check` reports the lengths, truncations and dropped records the run will have, not those of the bare text."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from daemon.core.datasets import DatasetError, ExampleKind, Lengths, as_chat
from daemon.core.templating import ChatFormat, TemplateError, at_record, labels_of, no_template, segments

BATCH = 256  # examples tokenised per batch call


@dataclass
class TrainedView:
    """What the run will train on, counted over every record."""

    lengths: Lengths = field(default_factory=Lengths)
    truncated: int = 0  # records longer than max_length (cut)
    dropped: int = 0  # records with nothing left to learn once cut
    identical: int = 0  # preference pairs whose two sides are the same once cut
    # the first `show` examples' segments (a preference pair gives two: prompt + chosen, then prompt + rejected)
    shown: list[list[dict[str, Any]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {"tokens": self.lengths.summary() if self.lengths.count else None, "truncated": self.truncated,
               "dropped": self.dropped}
        return {**out, "identical_after_cut": self.identical} if self.identical else out


def example_segments(example: dict[str, Any], fmt: ChatFormat | None, eos: str) -> list[dict[str, Any]]:
    """One example as the trainer lays it out: {"text", "train"} segments whose concatenation is what it sees."""
    if example["kind"] == ExampleKind.CHAT:
        if fmt is None:
            raise no_template(None)
        return segments(*fmt.render(example["messages"], example.get("tools")))
    if example["kind"] == ExampleKind.PROMPT:
        return [{"text": example["prompt"], "train": False}, {"text": example["completion"] + eos, "train": True}]
    if example["kind"] in (ExampleKind.PAIR, ExampleKind.JUDGED):
        return example_sequences(example, fmt, eos)[0]
    return [{"text": example["text"] + eos, "train": True}]


def example_sequences(example: dict[str, Any], fmt: ChatFormat | None, eos: str) -> list[list[dict[str, Any]]]:
    """The sequences an example becomes: a preference pair two (prompt + chosen, prompt + rejected, laid out as SFT
    lays out prompt + completion: raw, or through the chat template), anything else one."""
    kind = example["kind"]
    if kind == ExampleKind.PAIR:
        return [_with_answer(example, example[side], fmt, eos) for side in ("chosen", "rejected")]
    if kind == ExampleKind.JUDGED:
        return [_with_answer(example, example["completion"], fmt, eos)]
    return [example_segments(example, fmt, eos)]


def _with_answer(example: dict[str, Any], answer: Any, fmt: ChatFormat | None, eos: str) -> list[dict[str, Any]]:
    """The prompt followed by one answer, the answer marked as what the objective scores."""
    if "messages" not in example:  # the text form, raw
        return [{"text": example["prompt"], "train": False}, {"text": answer + eos, "train": True}]
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
    with a `tokenizers.Tokenizer` count tokens, truncations and drops at `max_length`; a preference pair whose
    prompt alone fills max_length is a DatasetError naming it."""
    out = TrainedView()
    pending: list[tuple[int, list[list[dict[str, Any]]]]] = []
    for number, example in enumerate(examples, 1):
        try:
            seqs = example_sequences(as_chat(example) if prompt_chat else example, fmt, eos)
        except TemplateError as e:
            raise TemplateError(at_record(f"{name}, record {number}", e)) from None
        if number <= show:
            out.shown.extend(seqs)
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
    encoded = iter(zip(tokenizer.encode_batch(texts, add_special_tokens=False), spans))
    for number, seqs in pending:
        sides = [labels_of(encoding, marked) for encoding, marked in (next(encoded) for _ in seqs)]
        longest = max(len(ids) for ids, _ in sides)
        out.lengths.add(longest)
        out.truncated += longest > max_length
        if len(sides) == 1:
            out.dropped += not sides[0][1][:max_length].any()
            continue
        if not all(trained[:max_length].any() for _, trained in sides):
            prompt = min(int(trained.argmax()) if trained.any() else len(ids) for ids, trained in sides)
            raise DatasetError(name, f"record {number}", "prompt",
                               f"the prompt alone takes {prompt} tokens as trained, and max_length is {max_length}: "
                               "nothing of the chosen and rejected answers is left to compare",
                               f"raise max_length (this pair needs {longest} tokens), or shorten the prompt, or "
                               "remove the record")
        (chosen, _), (rejected, _) = sides
        if longest > max_length and list(chosen[:max_length]) == list(rejected[:max_length]):
            out.identical += 1
    pending.clear()


def load_tokenizer(folder: Path | None) -> Any:
    """The base model's tokenizer.json through the `tokenizers` library (no torch), or None."""
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))
