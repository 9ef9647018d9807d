"""Preference examples (pairs for DPO, judged answers for KTO) → token ids, with the run's chat format exactly as SFT
encodes its examples: a text prompt raw (the model's own BOS, the answer and one eos) or, under `prompt_format =
"chat"` and for conversations, rendered through the chat template, the prompt ending with the assistant's cue and
each answer its assistant turn with the end-of-turn tokens. No BOS or EOS is added twice (the template's own are
the only ones; `tests/test_preference_train.py` renders a pair and checks).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from daemon.core.as_trained import encode_bounded
from daemon.core.datasets import ExampleKind, as_chat
from daemon.core.templating import TemplateError, at_record, labels_of, no_template
from daemon.trainer.config import RunError
from daemon.trainer.console import say
from daemon.trainer.sequences import (Prepared, bounded_ids, count_records, counted_in_part, dataset_examples,
                                     eval_indices, length_stats)
from daemon.trainer.session import Session

ANSWERS = {ExampleKind.PAIR: ("chosen", "rejected"), ExampleKind.JUDGED: ("completion",)}
IDS = {"chosen": "chosen_ids", "rejected": "rejected_ids", "completion": "completion_ids"}


class PreferenceDataset(torch.utils.data.Dataset):
    """Encoded preference examples: prompt_ids and each answer's ids (and a KTO example's label)."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]

    def lengths(self) -> list[int]:
        """Each example's longest sequence (prompt + its longest answer)."""
        return [len(it["prompt_ids"]) + max(len(it[k]) for k in IDS.values() if k in it) for it in self.items]

    def hf(self) -> Any:
        """As the `datasets.Dataset` TRL's trainers take."""
        import datasets

        return datasets.Dataset.from_list(self.items)


@dataclass
class PreferenceEncoder:
    """Encodes preference examples; counts lengths, truncated examples and prompts that leave no room."""

    tokenizer: Any
    max_length: int
    model_name: str
    chat: Any = None  # the run's ChatFormat
    prompt_chat: bool = False

    def __post_init__(self) -> None:
        self.lengths: list[int] = []
        self.truncated = 0
        self.too_long = 0
        self.capped = 0  # examples tokenised only in part (as_trained.char_bound): their lengths are lower bounds

    def shaped(self, example: dict[str, Any]) -> dict[str, Any]:
        return as_chat(example) if self.prompt_chat else example

    def encode(self, n: int, example: dict[str, Any]) -> dict[str, Any] | None:
        """prompt_ids and each answer's ids (lists of ints); None when the prompt leaves no room for an answer."""
        names = ANSWERS[example["kind"]]
        prompt, answers = (self._chat(n, example, names) if example.get("messages") is not None else
                           self._raw(example, names))
        self.lengths.append(len(prompt) + max(len(a) for a in answers))
        if len(prompt) >= self.max_length:
            self.too_long += 1
            return None
        room = self.max_length - len(prompt)
        self.truncated += any(len(a) > room for a in answers)
        item: dict[str, Any] = {"prompt_ids": prompt, **{IDS[k]: a[:room] for k, a in zip(names, answers)}}
        if "label" in example:
            item["label"] = bool(example["label"])
        return item

    def _raw(self, example: dict[str, Any], names: tuple[str, ...]) -> tuple[list[int], list[list[int]]]:
        (prompt, cut), *answers = [bounded_ids(self.tokenizer, text, self.max_length, special) for text, special in
                                   [(example["prompt"], True), *((example[k], False) for k in names)]]
        self.capped += cut or any(c for _, c in answers)
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return prompt, [ids + eos for ids, _ in answers]

    def _chat(self, n: int, example: dict[str, Any], names: tuple[str, ...]) -> tuple[list[int], list[list[int]]]:
        if self.chat is None:
            raise RunError(str(no_template(self.model_name)))
        prompts, answers, capped = [], [], False
        for k in names:
            turns = example[k]
            try:
                text, spans = self.chat.render([*example["messages"], *turns], example.get("tools"))
            except TemplateError as e:
                raise RunError(at_record(f"record {n + 1}", e)) from None
            # the answer's turns are the last spans; the prompt is everything before the first (the assistant's cue
            # included), the answer runs to the end of its last trained token (its end-of-turn tokens)
            cut = sorted(spans)[-len(turns)][0]
            (encoding,), (cut_short,) = encode_bounded([text], self.max_length, lambda b: [
                self.tokenizer.backend_tokenizer.encode(t, add_special_tokens=False) for t in b], lambda e: len(e.ids))
            capped |= cut_short
            ids, trained = labels_of(encoding, spans)
            starts = [start for start, _ in encoding.offsets]
            head = sum(1 for start in starts if start < cut)
            # a text cut before its answer (a prompt longer than max_length: dropped below) has no trained token
            end = max((i for i in range(len(ids)) if trained[i]), default=len(ids) - 1) + 1
            prompts.append(ids[:head].tolist())
            answers.append(ids[head:end].tolist())
        if any(p != prompts[0] for p in prompts):
            raise RunError(f"record {n + 1}: the chat template renders the prompt differently before the chosen and "
                           f"the rejected answer, so the two cannot be compared. Fix: set chat_template to a family "
                           f"name with a training version (e.g. \"chatml\").")
        self.capped += capped
        return prompts[0], answers


def prepare_pairs(s: Session, tokenizer: Any, stats: dict[str, Any]) -> Prepared:
    """Stream the examples once: hold out probes, split off eval, encode the rest (as `sequences.prepare` does)."""
    from daemon.core.probes import holdout_indices, load_probe_file, probe_from_example

    cfg, opts = s.cfg, s.cfg.options
    examples = dataset_examples(cfg.dataset_path)
    records = stats.get("records")
    n_records = int(records) if isinstance(records, int) else count_records(examples())
    encoder = PreferenceEncoder(tokenizer, opts.max_length, opts.base_model, s.chat, s.prompt_chat)
    probes = [] if cfg.probes_path is None else [{**p, "id": p.get("id", i)}
                                                 for i, p in enumerate(load_probe_file(cfg.probes_path))]
    if s.prompt_chat:  # asked the way training asks: as a user turn
        probes = [p if p.get("messages") else {**p, "messages": [{"role": "user", "content": p["prompt"]}]}
                  for p in probes]
    holdout = set(holdout_indices(n_records, opts.probe_count, opts.seed)) if cfg.probes_path is None else set()
    held_eval = eval_indices(n_records, opts.eval_fraction, opts.seed, holdout)
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    kind, held = None, 0
    for i, example in enumerate(examples()):
        example = encoder.shaped(example)
        kind = kind or example["kind"]
        probe = probe_from_example(example) if i in holdout else None
        if probe is not None:  # a completion labelled false is no probe: it trains
            probes.append({**probe, "id": len(probes)})
            held += 1
            continue
        item = encoder.encode(i, example)
        if item is not None:
            (evals if i in held_eval else train).append(item)
    if encoder.too_long:
        say(f"{encoder.too_long} record(s) dropped: their prompt alone fills max_length={opts.max_length} tokens, so "
            f"nothing of the answers is left to compare (raise max_length to keep them)")
    if not train:
        raise RunError(f"no training pairs left from {n_records} record(s). Fix: add records, or raise max_length.")
    stats_out = {
        "tokens": length_stats(encoder.lengths),
        "truncated": encoder.truncated,
        **counted_in_part(encoder.capped),
        "split": {"train": n_records - len(held_eval) - held, "eval": len(held_eval), "probes": len(probes)},
        "sequences": {"train": len(train), "eval": len(evals), "dropped": encoder.too_long},
        "chat_template": s.chat.label if s.chat else None,
        "prompt_format": "chat" if s.prompt_chat else "raw",
    }
    return Prepared(PreferenceDataset(train), PreferenceDataset(evals) if evals else None, probes, str(kind), stats_out)


def base_as_reference(trainer: Any, continued: bool) -> Any:
    """A fresh adapter starts as the base model itself (LoRA's B matrices are zero), so the reference is the model
    with its adapter switched off: TRL's frozen copy of the adapter ("ref") is dropped, and the reference pass runs
    no LoRA at all (as with TRL's own `peft_config`). A continued adapter (`init_adapter`) keeps the copy: its
    reference is the parent."""
    model = trainer.model
    if not continued and "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
    return trainer
