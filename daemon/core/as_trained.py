"""A dataset as the trainer will see it, torch-free, for `overnight check`: each example rendered the way the run
lays it out (chat template or raw prompt), its trained segments, and its length in the base model's tokens — so
`check` reports the lengths, truncations and dropped records the run will have, not those of the bare text."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from daemon.core.datasets import ExampleKind, Lengths, as_chat
from daemon.core.templating import ChatFormat, TemplateError, at_record, labels_of, no_template, segments

BATCH = 256  # examples tokenised per batch call


@dataclass
class TrainedView:
    """What the run will train on, counted over every record."""

    lengths: Lengths = field(default_factory=Lengths)
    truncated: int = 0  # records longer than max_length (cut)
    dropped: int = 0  # records with nothing left to learn once cut
    shown: list[list[dict[str, Any]]] = field(default_factory=list)  # the first `show` examples' segments

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.lengths.summary() if self.lengths.count else None, "truncated": self.truncated,
                "dropped": self.dropped}


def example_segments(example: dict[str, Any], fmt: ChatFormat | None, eos: str) -> list[dict[str, Any]]:
    """One example as the trainer lays it out: {"text", "train"} segments whose concatenation is what it sees."""
    if example["kind"] == ExampleKind.CHAT:
        if fmt is None:
            raise no_template(None)
        return segments(*fmt.render(example["messages"], example.get("tools")))
    if example["kind"] == ExampleKind.PROMPT:
        return [{"text": example["prompt"], "train": False}, {"text": example["completion"] + eos, "train": True}]
    return [{"text": example["text"] + eos, "train": True}]


def view(examples: Iterator[dict[str, Any]], fmt: ChatFormat | None, prompt_chat: bool, eos: str,
         tokenizer: Any, max_length: int, show: int, name: str) -> TrainedView:
    """Render every example (a record the template refuses is an error naming it), keep the first `show`, and
    with a `tokenizers.Tokenizer` count tokens, truncations and drops at `max_length`."""
    out = TrainedView()
    pending: list[list[dict[str, Any]]] = []
    for number, example in enumerate(examples, 1):
        try:
            segs = example_segments(as_chat(example) if prompt_chat else example, fmt, eos)
        except TemplateError as e:
            raise TemplateError(at_record(f"{name}, record {number}", e)) from None
        if number <= show:
            out.shown.append(segs)
        if tokenizer is not None:
            pending.append(segs)
            if len(pending) >= BATCH:
                _count(out, pending, tokenizer, max_length)
    if tokenizer is not None:
        _count(out, pending, tokenizer, max_length)
    return out


def _count(out: TrainedView, pending: list[list[dict[str, Any]]], tokenizer: Any, max_length: int) -> None:
    texts, spans = [], []
    for segs in pending:
        at, marked = 0, []
        for s in segs:
            if s["train"]:
                marked.append((at, at + len(s["text"])))
            at += len(s["text"])
        texts.append("".join(s["text"] for s in segs))
        spans.append(marked)
    for encoding, marked in zip(tokenizer.encode_batch(texts, add_special_tokens=False), spans):
        ids, trained = labels_of(encoding, marked)
        out.lengths.add(len(ids))
        out.truncated += len(ids) > max_length
        out.dropped += not trained[:max_length].any()
    pending.clear()


def load_tokenizer(folder: Path | None) -> Any:
    """The base model's tokenizer.json through the `tokenizers` library (no torch), or None."""
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))
