"""Examples → token ids and loss masks, the deterministic train/eval/probe split, and the padding collator.

Three kinds of normalised examples come from `daemon.core.datasets.iter_examples` (see docs/ARCHITECTURE.md):
- prompt: with a chat format (prompt_format), one chat exchange (below); raw: tokens(prompt) + tokens(completion)
  + eos, the prompt masked from the loss (label -100);
- chat: the run's chat template (daemon.core.templating), rendered once; only what the assistant says and its
  end-of-turn tokens carry labels;
- text: every record + eos, concatenated and cut into blocks of max_length; every token is a label.
Datasets are tokenised once up front and held as int32 arrays (a few bytes per token).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from daemon.core.as_trained import encode_bounded
from daemon.core.datasets import ExampleKind, as_chat
from daemon.core.probes import eval_count
from daemon.core.templating import ChatFormat, TemplateError, at_record, labels_of, no_template
from daemon.trainer.config import RunError

IGNORE = -100
BATCH_RECORDS = 256  # records tokenised per batch call


@dataclass
class Encoded:
    """One training sequence: token ids and labels (None: every token is a label, as in text blocks)."""

    input_ids: np.ndarray
    labels: np.ndarray | None = None


class SequenceDataset(torch.utils.data.Dataset):
    """A list of Encoded sequences in the dict form the Trainer and the collator expect."""

    def __init__(self, items: list[Encoded]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[int]:
        return [len(item.input_ids) for item in self.items]

    def __getitem__(self, i: int) -> dict[str, np.ndarray | None]:
        item = self.items[i]
        return {"input_ids": item.input_ids, "labels": item.labels}


@dataclass
class PadCollator:
    """Right-pads a batch to its longest sequence: pad id in input_ids, -100 in labels, 0 in attention_mask."""

    pad_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(features)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, f in enumerate(features):
            row = torch.from_numpy(np.asarray(f["input_ids"], dtype=np.int64))
            k = len(row)
            ids[i, :k] = row
            lab = f.get("labels")
            labels[i, :k] = row if lab is None else torch.from_numpy(np.asarray(lab, dtype=np.int64))
            mask[i, :k] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# ------------------------------------------------------------------------------------------ encoding

@dataclass
class Encoder:
    """Tokenises one example of any kind; counts lengths (before truncation) and truncated records.

    `chat` is the run's chat format (None: the model has none and chat_template is "auto"); `prompt_chat` shows
    prompt records as one chat exchange (prompt_format)."""

    tokenizer: Any
    max_length: int
    model_name: str
    chat: ChatFormat | None = None
    prompt_chat: bool = False
    lengths: list[int] = field(default_factory=list)
    truncated: int = 0
    capped: int = 0  # records tokenised only in part (as_trained.char_bound): their lengths are lower bounds

    def __post_init__(self) -> None:
        self.eos_id: int | None = self.tokenizer.eos_token_id

    def shaped(self, example: dict[str, Any]) -> dict[str, Any]:
        """The example as this run trains it (a prompt record becomes a chat exchange under a chat format)."""
        return as_chat(example) if self.prompt_chat else example

    def encode(self, example: dict[str, Any]) -> Encoded | None:
        """Token ids + labels of one prompt/chat example (None when truncation left nothing to learn)."""
        return self.encode_many([(0, example)])[0]

    def encode_many(self, examples: list[tuple[int, dict[str, Any]]]) -> list[Encoded | None]:
        """`encode` for (record index, example) pairs: chat examples rendered one by one, then tokenised in one
        batch call (the tokenizer's threads); a conversation the template refuses names its record."""
        chats = {n: self._render(n, ex) for n, ex in examples if ex["kind"] == ExampleKind.CHAT}
        # no more of a long conversation is tokenised than max_length can keep: the same first max_length tokens
        # (daemon/core/as_trained.py says why), without minutes and gigabytes spent on a huge record's tail
        encoded, cut = encode_bounded([text for text, _ in chats.values()], self.max_length, lambda b: (
            self.tokenizer.backend_tokenizer.encode_batch(b, add_special_tokens=False)), lambda e: len(e.ids))
        encodings = dict(zip(chats, encoded))
        self.capped += sum(cut)
        out = []
        for n, ex in examples:
            if ex["kind"] == ExampleKind.PROMPT:
                ids, labels = self._prompt(ex)
            elif ex["kind"] == ExampleKind.CHAT:
                ids, trained = labels_of(encodings[n], chats[n][1])
                labels = np.where(trained, ids, IGNORE).astype(np.int32)
            else:
                raise ValueError(f"encode() takes prompt or chat examples, got {str(ex['kind'])!r}")
            out.append(self._finish(ids, labels))
        return out

    def _finish(self, ids: Any, labels: Any) -> Encoded | None:
        ids, labels = np.asarray(ids, dtype=np.int32), np.asarray(labels, dtype=np.int32)
        self.lengths.append(len(ids))
        if len(ids) > self.max_length:
            self.truncated += 1
            ids, labels = ids[:self.max_length], labels[:self.max_length]
        if not (labels != IGNORE).any():
            return None
        return Encoded(ids, labels)

    def text_ids(self, example: dict[str, Any]) -> list[int]:
        """A text record's ids followed by eos (the separator between concatenated records)."""
        ids = list(self.tokenizer(example["text"])["input_ids"])
        if self.eos_id is not None:
            ids.append(self.eos_id)
        self.lengths.append(len(ids))
        return ids

    def _prompt(self, ex: dict[str, Any]) -> tuple[list[int], list[int]]:
        prompt, cut = bounded_ids(self.tokenizer, ex["prompt"], self.max_length, True)  # with the model's own BOS
        answer, answer_cut = bounded_ids(self.tokenizer, ex["completion"], self.max_length, False)
        self.capped += cut or answer_cut
        if self.eos_id is not None:
            answer.append(self.eos_id)
        return prompt + answer, [IGNORE] * len(prompt) + answer

    def _render(self, n: int, ex: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
        if self.chat is None:
            raise RunError(str(no_template(self.model_name)))
        try:
            return self.chat.render(ex["messages"], ex.get("tools"))
        except TemplateError as e:
            raise RunError(at_record(f"record {n + 1}", e)) from None


def bounded_ids(tokenizer: Any, text: str, max_length: int, special: bool,
                from_end: bool = False) -> tuple[list[int], bool]:
    """A text's ids (`special`: with the tokenizer's own special tokens, e.g. a BOS), no more of it tokenised than
    max_length can keep: its first max_length ids are the whole text's (`from_end`: its last; daemon/core/as_trained.py
    says why); a text cut so is longer than max_length, and is cut to it anyway. And whether it was cut so (its
    count: a lower bound)."""
    (ids,), (cut,) = encode_bounded([text], max_length, lambda b: [
        list(tokenizer(t, add_special_tokens=special)["input_ids"]) for t in b], len, from_end)
    return ids, cut


def pack_blocks(streams: Iterable[list[int]], max_length: int) -> list[Encoded]:
    """Concatenate token streams and cut them into blocks of max_length (the last one may be shorter)."""
    blocks: list[Encoded] = []
    buf: list[int] = []
    for ids in streams:
        buf.extend(ids)
        while len(buf) >= max_length:
            blocks.append(Encoded(np.asarray(buf[:max_length], dtype=np.int32)))
            del buf[:max_length]
    if len(buf) >= 2:  # a single token has nothing to predict
        blocks.append(Encoded(np.asarray(buf, dtype=np.int32)))
    return blocks


# ------------------------------------------------------------------------------------------ the split

def eval_indices(n_records: int, fraction: float, seed: int, exclude: set[int]) -> set[int]:
    """The held-out eval records: a seeded sample of `fraction` of the records not used as probes.

    Empty when the fraction is 0 or there are too few records for a meaningful eval loss (`eval_count`: the rule
    `overnight check` and the console's note read too).
    """
    candidates = [i for i in range(n_records) if i not in exclude]
    count = eval_count(len(candidates), fraction)
    if count < 1:
        return set()
    return set(random.Random(seed).sample(candidates, count))


@dataclass
class Prepared:
    """The tokenised splits, the probes, and what stats.json gains from tokenisation."""

    train: SequenceDataset
    eval: SequenceDataset | None
    probes: list[dict[str, Any]]
    kind: str
    stats: dict[str, Any]


def length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"min": 0, "mean": 0, "p50": 0, "p95": 0, "max": 0}
    a = np.asarray(lengths)
    return {"min": int(a.min()), "mean": round(float(a.mean()), 1), "p50": int(np.percentile(a, 50)),
            "p95": int(np.percentile(a, 95)), "max": int(a.max())}


def prepare(examples: Callable[[], Iterator[dict[str, Any]]], n_records: int, encoder: Encoder, *,
            eval_fraction: float, seed: int, probe_holdout: set[int],
            probe_from_example: Callable[[dict[str, Any]], dict[str, Any] | None],
            file_probes: list[dict[str, Any]] | None, log: Callable[[str], None]) -> Prepared:
    """Stream the examples once: hold out probes, split off eval, tokenise the rest.

    `probe_holdout` are record indices proposed as probes (used only when there is no probe file); a record
    that cannot be a probe (e.g. plain text) stays in training.
    """
    held_eval = eval_indices(n_records, eval_fraction, seed, probe_holdout if file_probes is None else set())
    probes: list[dict[str, Any]] = list(file_probes or [])
    train: list[Encoded] = []
    evals: list[Encoded] = []
    text_train: list[list[int]] = []
    text_eval: list[list[int]] = []
    kinds: set[str] = set()
    n_seen = dropped = n_train = n_eval = 0
    pending: list[tuple[int, dict[str, Any], bool]] = []

    def flush() -> int:
        items = encoder.encode_many([(i, example) for i, example, _ in pending])
        for (_, _, to_eval), item in zip(pending, items):
            if item is not None:
                (evals if to_eval else train).append(item)
        pending.clear()
        return sum(item is None for item in items)

    for i, example in enumerate(examples()):
        n_seen += 1
        example = encoder.shaped(example)
        kinds.add(example["kind"])
        if file_probes is None and i in probe_holdout:
            probe = probe_from_example(example)
            if probe is not None:
                probes.append({**probe, "id": len(probes)})
                continue
        to_eval = i in held_eval
        n_eval += to_eval
        n_train += not to_eval
        if example["kind"] == ExampleKind.TEXT:
            (text_eval if to_eval else text_train).append(encoder.text_ids(example))
            continue
        pending.append((i, example, to_eval))
        if len(pending) >= BATCH_RECORDS:
            dropped += flush()
    dropped += flush()
    if len(kinds) > 1:
        raise RunError(f"the dataset mixes example kinds {sorted(map(str, kinds))}; one file must hold one schema.")
    kind = kinds.pop() if kinds else "none"
    if kind == ExampleKind.TEXT:
        train, evals = pack_blocks(text_train, encoder.max_length), pack_blocks(text_eval, encoder.max_length)
    if dropped:
        log(f"{dropped} record(s) dropped: after cutting to max_length={encoder.max_length} tokens nothing of "
            f"their answer was left to learn (raise max_length to keep them)")
    if not train:
        raise RunError(f"no training sequences left from {n_seen} record(s) (after holding out "
                       f"{len(probes)} probe(s) and {n_eval} eval record(s)). Fix: add records, or raise max_length.")
    stats = {
        "tokens": length_stats(encoder.lengths),
        "truncated": encoder.truncated,
        **counted_in_part(encoder.capped),
        "split": {"train": n_train, "eval": n_eval, "probes": len(probes)},
        "sequences": {"train": len(train), "eval": len(evals), "dropped": dropped},
    }
    return Prepared(SequenceDataset(train), SequenceDataset(evals) if evals else None, probes, kind, stats)


def counted_in_part(capped: int) -> dict[str, int]:
    """stats.json's note of the records tokenised only in part (named as `overnight check --json` names them)."""
    return {"counted_in_part": capped} if capped else {}


def count_records(examples: Iterator[Any]) -> int:
    """How many examples a stream yields (when stats.json does not say)."""
    return sum(1 for _ in examples)


def dataset_examples(path: Path) -> Callable[[], Iterator[dict[str, Any]]]:
    """A re-iterable source of normalised examples (daemon.core.datasets does the parsing and validation)."""
    from daemon.core.datasets import iter_examples

    return lambda: iter_examples(path)
