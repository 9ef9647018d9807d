"""Evolution snapshots during training: what the model answers on fixed probes, at step 0, every N steps, at the end.

`EvolutionCallback` is a transformers `TrainerCallback`. At each snapshot it puts the model in eval mode, and for
every probe (batched, left-padded) computes the greedy generation and the mean token loss on the reference answer;
it appends one record per probe to `evolution.jsonl` and logs one console line. It then restores train mode and
every random-number generator, so a run with snapshots trains exactly like one without (same per-step losses).

A snapshot must never cost the run: probes are cut to `max_length` (as training examples are), the reference loss
keeps only the logits of the reference positions, and a snapshot that runs out of memory retries with half the probe
batch, then is skipped with a console note, while training goes on.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from transformers import GenerationConfig, TrainerCallback

from daemon.core.evolution import AUTO_MIN_SNAPSHOTS, is_exact, load_records, similarity
from daemon.core.templating import as_parts, reads_parts
from daemon.core.timefmt import iso
from daemon.trainer.oom import free_memory, is_out_of_memory
from daemon.trainer.sequences import bounded_ids


@dataclass
class EncodedProbe:
    """A probe as token ids: the context the model sees, and the reference answer that should follow it."""

    probe: dict[str, Any]
    prompt_ids: list[int]
    reference_ids: list[int]


def encode_probe(tokenizer: Any, probe: dict[str, Any], stop_ids: Sequence[int] | None = None,
                 max_length: int | None = None) -> EncodedProbe:
    """Token ids laid out the way the trainer tokenises training examples.

    Prompt probes: the raw prompt (with the tokenizer's own special tokens, e.g. a BOS), then the reference plus
    eos. Chat probes: the chat template with the generation prompt (as far as the conversation trained with the
    reference as the assistant turn starts so), then the rest of that conversation, up to its first end-of-turn
    token (`stop_ids`, by default the eos). With `max_length`, a huge prompt or reference is tokenised only as far
    as `fit_to_length` can keep of it (the end of the prompt, the start of the reference): the same ids, without
    minutes spent on a 50 MB record.
    """
    def ids(text: str, special: bool, from_end: bool = False) -> list[int]:
        if max_length is None:
            return list(tokenizer(text, add_special_tokens=special)["input_ids"])
        return bounded_ids(tokenizer, text, max_length, special, from_end)[0]

    stop = set(stop_ids) if stop_ids else {tokenizer.eos_token_id}
    if probe.get("messages") is not None:
        tools = probe.get("tools") or None
        messages = [*probe["messages"], {"role": "assistant", "content": probe["reference"]}]
        template = tokenizer.chat_template
        if isinstance(template, str) and template and reads_parts(template):  # vision-language: as training gives it
            messages = as_parts(messages)
        context = tokenizer.apply_chat_template(messages[:-1], tools=tools, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
        context = _asked_before(context, full, tokenizer)
        tail = full[len(context):]
        reference_ids = ids(tail, False)
        end = next((i for i, t in enumerate(reference_ids) if t in stop), None)
        if end is not None:  # the turn ends at its end-of-turn token; what follows is never trained on
            reference_ids = reference_ids[:end + 1]
        return EncodedProbe(probe, ids(context, False, from_end=True), reference_ids)
    prompt_ids = ids(probe["prompt"], True, from_end=True)
    reference_ids = ids(probe["reference"], False)
    if tokenizer.eos_token_id is not None:
        reference_ids = reference_ids + [tokenizer.eos_token_id]
    return EncodedProbe(probe, prompt_ids, reference_ids)


WINDOW = 256  # characters either side of the split whose tokens show where a token starts


def _asked_before(context: str, full: str, tokenizer: Any) -> str:
    """What training shows before the answer: the start the generation prompt shares with the conversation trained
    (DeepSeek-R1's prompt adds a "<think>\n" its trained turns lack), back to where one of the trained sequence's
    tokens ends, so that the context tokenises as training does (the "\n" of Qwen3's "<think>\n" prompt is half of
    the "\n\n" trained after it). Only a window around the split is tokenised: away from the window's start a token
    ends where it does in the whole text. (Ends, not starts: a tokenizer that trims offsets starts " Teal" at "T".)"""
    i = len(os.path.commonprefix([context, full]))
    start = max(0, i - WINDOW)
    try:
        offsets = tokenizer(full[start:i + WINDOW], add_special_tokens=False,
                            return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, TypeError, ValueError, KeyError):  # a slow tokenizer: no offsets
        return full[:i]
    ends = [start + b for _, b in offsets[1 if start else 0:] if start + b <= i]
    return full[:max(ends)] if ends else full[:i]


def _rejected_side(probe: dict[str, Any]) -> dict[str, Any] | None:
    """A preference probe with its rejected answer as the reference (to score it); None for other probes."""
    if probe.get("kind") != "pair":
        return None
    rejected = probe["rejected"]
    return {**probe, "reference": rejected if isinstance(rejected, str) else "\n".join(m["content"] for m in rejected)}


def fit_to_length(enc: EncodedProbe, max_length: int | None, prompt_keep: int | None = None) -> tuple[EncodedProbe, bool]:
    """The probe cut so that prompt + reference fits `max_length` tokens, and whether anything was cut.

    The end of the prompt is kept (the tokens right before the answer are what the answer depends on, and the
    answers are generated from it), then the start of the reference; a long reference takes at most half of
    `max_length` (a long prompt was cut to one token, and every probe answered that token alike), and at least one
    prompt token stays, so every scored reference token has a predecessor. `prompt_keep`: the prompt's tokens kept
    for the other side of a preference pair, so that both answers are scored after the same context. The model
    never trained on longer sequences, and an uncut probe could take more memory than a training step.
    """
    if max_length is None or (prompt_keep is None and len(enc.prompt_ids) + len(enc.reference_ids) <= max_length):
        return enc, False
    if prompt_keep is None:
        keep = min(len(enc.reference_ids), max(max_length - len(enc.prompt_ids), (max_length + 1) // 2))
        keep = min(keep, max_length - 1) if enc.prompt_ids else keep
        prompt_keep = max_length - keep
    prompt = enc.prompt_ids[len(enc.prompt_ids) - min(prompt_keep, len(enc.prompt_ids)):]
    reference = enc.reference_ids[:max(max_length - len(prompt), 0)]
    cut = (len(prompt), len(reference)) != (len(enc.prompt_ids), len(enc.reference_ids))
    return EncodedProbe(enc.probe, prompt, reference), cut


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the causal LM's forward takes `logits_to_keep` (transformers 5 models do; remote code may not)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel passes it through
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def preserved_training_state(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no_grad inside; train mode and every RNG state (torch CPU/CUDA, python, numpy) restored after."""
    was_training = model.training
    cpu_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    py_state = random.getstate()
    np_state = np.random.get_state()
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
        torch.random.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        random.setstate(py_state)
        np.random.set_state(np_state)


def _left_pad(rows: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # left padding: each row's real tokens must start at position 0, as they do in training
    return (mask.cumsum(-1) - 1).clamp(min=0)


def generate_answers(model: torch.nn.Module, tokenizer: Any, encoded_probes: Sequence[EncodedProbe],
                     stop_ids: Sequence[int], max_new_tokens: int) -> list[str]:
    """Greedy generations for a batch of probes (left-padded, one `generate` call), each cut at its first stop id.

    The caller chooses the mode: inside a training run it is wrapped in `preserved_training_state`; a loaded
    version for `overnight ask` is already in eval mode under no_grad.
    """
    stop = list(stop_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop or [0])[0]
    device = next(model.parameters()).device
    ids, mask = _left_pad([e.prompt_ids for e in encoded_probes], pad, device)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=stop or None, pad_token_id=pad, use_cache=True)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    texts = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((k for k, t in enumerate(row) if t in stop), len(row))
        texts.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


class EvolutionCallback(TrainerCallback):
    """Takes evolution snapshots at step 0, every `every` steps and at the end; resume-aware.

    The end of a completed run is always taken; a stop (skip, preemption, shutdown) takes one only when the newest
    snapshot is `every` steps old or more.

    Steps already recorded in `out_path` (a resumed run) are never snapshotted twice. `max_overhead` (the
    automatic interval, e.g. 0.04): the snapshots the run can afford within that share of its projected training
    time (each estimated at the median cost, step 0 and the final one included) are spread evenly over the run, on
    multiples of `every`. Step 0 and the end are always taken, and the budget never thins a run below
    `min_snapshots` (step 0 and the end counted). None: every multiple of `every` is taken.
    """

    def __init__(self, probes: list[dict[str, Any]], tokenizer: Any, out_path: Path, every: int,
                 max_new_tokens: int = 32, batch_size: int = 16, log: Callable[[str], None] = print,
                 similarity_threshold: float = 0.9, max_overhead: float | None = None,
                 max_length: int | None = None, stop_ids: Sequence[int] | None = None,
                 min_snapshots: int = AUTO_MIN_SNAPSHOTS, board: Any = None) -> None:
        if every < 1:
            raise ValueError(f"evolution interval must be >= 1 step, got {every}")
        self.probes = probes
        self.board = board  # daemon/trainer/board.Board: each snapshot's answers as TensorBoard text too
        self.tokenizer = tokenizer
        self.out_path = Path(out_path)
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.batch_size = max(1, min(batch_size, len(probes)))  # halving a batch larger than the probes gains nothing
        self.log = log
        self.threshold = similarity_threshold
        self.max_overhead = max_overhead
        self.min_snapshots = min_snapshots
        fitted = [fit_to_length(encode_probe(tokenizer, p, stop_ids, max_length), max_length) for p in probes]
        self.encoded = [enc for enc, _ in fitted]
        # a preference probe is also scored on its rejected answer: the margin says which one the model prefers
        # (after the same prompt tokens as the chosen one: the margin compares the two answers, not two contexts)
        self.rejected = {i: fit_to_length(encode_probe(tokenizer, r, stop_ids, max_length), max_length,
                                          len(self.encoded[i].prompt_ids))[0]
                         for i, r in enumerate(map(_rejected_side, probes)) if r is not None}
        if any(cut for _, cut in fitted):
            log(f"evolution: {sum(cut for _, cut in fitted)} probe(s) longer than max_length {max_length} tokens are "
                f"cut to fit, keeping the end of the prompt and the start of the reference")
        self.skipped: set[int] = set()  # steps whose snapshot ran out of memory even one probe at a time
        self.done_steps = self._recover()
        self.seconds = 0.0  # time spent in snapshots since this process started training
        self.costs: list[float] = []  # each snapshot's seconds; their median estimates the next one
        self._seconds_at_begin = 0.0  # self.seconds when the training loop began (after the step-0 snapshot)
        self._first_step = 0  # the step this process started training from
        self.train_started = time.perf_counter()

    def _recover(self) -> set[int]:
        """Steps already in evolution.jsonl (after a resume); a half-written last line from a crash is cut off.
        Under torchrun only rank 0 takes snapshots, and only it touches the file."""
        from daemon.trainer import ddp

        if not self.out_path.exists() or not ddp.is_main():
            return set()
        data = self.out_path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.out_path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        return {int(r["step"]) for r in load_records(self.out_path)}

    # ------------------------------------------------------------------------------- TrainerCallback hooks

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self.done_steps = self._recover()  # a retry after out-of-memory may have dropped records since __init__
        self.skipped.clear()  # and a retry (smaller batch, checkpointing) may leave a snapshot the memory it lacked
        if state.global_step == 0:
            self._maybe_snapshot(state, model)
        self.train_started = time.perf_counter()
        self._seconds_at_begin, self._first_step = self.seconds, int(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every == 0 and self._within_budget(state):
            self._maybe_snapshot(state, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        step = int(state.global_step)
        if not (state.max_steps and step >= state.max_steps):  # a stop, skip, preemption or shutdown
            last = max((s for s in self.done_steps if s <= step), default=None)
            if last is not None and last + self.every > step:
                # the newest snapshot already says what the model answers now: another would only delay the stop
                # (the trainer checkpoints and exits after this), and a resumed run takes the next one on schedule
                return
        self._maybe_snapshot(state, model)

    def _within_budget(self, state: Any) -> bool:
        if self.max_overhead is None or not self.costs:
            return True
        # the first snapshot also pays generate()'s warm-up: later ones estimate from the rest when there are any
        estimate = statistics.median(self.costs[1:] or self.costs)
        trained = time.perf_counter() - self.train_started - (self.seconds - self._seconds_at_begin)
        steps, step, total = state.global_step - self._first_step, state.global_step, state.max_steps
        projected = trained + (trained / steps * (total - step) if steps > 0 and total > step else 0.0)
        budget = self.max_overhead * projected
        # besides step 0 and the end; when even this one and the final one would break the budget, the floor only
        affordable = int(budget / estimate) - 2 if self.seconds + 2 * estimate <= budget else 0
        affordable = max(affordable, self.min_snapshots - 2)
        if not total:
            return affordable > self.min_snapshots - 2
        # one snapshot per slice of the run, the first multiple of `every` in it: spread evenly, never drifting
        # towards the end (an integer step `spacing` after the last one would lose one to rounding on a short run)
        spacing = total / (affordable + 1)
        last = max((s for s in self.done_steps if s <= step), default=0)
        return int(step / spacing) > int(last / spacing)

    def _maybe_snapshot(self, state: Any, model: Any) -> None:
        """Take the snapshot for the current step unless it exists."""
        step = int(state.global_step)
        # one writer: under DDP only the main process takes snapshots (the others wait at the next all-reduce)
        if step in self.done_steps or step in self.skipped or not self.probes or model is None:
            return
        if not state.is_world_process_zero:
            return
        self.snapshot(model, step)

    # ------------------------------------------------------------------------------- the snapshot

    def snapshot(self, model: torch.nn.Module, step: int) -> list[dict[str, Any]] | None:
        """Score every probe at `step`, append the records to evolution.jsonl and log one line (None: skipped)."""
        started = time.perf_counter()
        results = self._score_fitting(model, step)
        if results is None:
            self.skipped.add(step)
            self.seconds += time.perf_counter() - started
            return None
        stamp = iso()
        records = []
        for enc, (generation, loss, margin) in zip(self.encoded, results):
            probe = enc.probe
            records.append({"step": step, "probe": probe["id"], "prompt": probe["prompt"],
                            "reference": probe["reference"], "generation": generation,
                            "loss": None if loss != loss else round(loss, 6),  # NaN is not JSON
                            "exact": is_exact(generation, probe["reference"]),
                            "similarity": round(similarity(generation, probe["reference"]), 4), "time": stamp,
                            **({} if margin is None or margin != margin else
                               {"margin": round(margin, 4), "prefers": margin > 0})})
        self._append(records)
        if self.board is not None:
            self.board.snapshot(step, records)
        self.done_steps.add(step)
        elapsed = time.perf_counter() - started
        self.seconds += elapsed
        self.costs.append(elapsed)
        exact = sum(r["exact"] for r in records)
        close = sum(r["exact"] or r["similarity"] >= self.threshold for r in records)
        mean_sim = sum(r["similarity"] for r in records) / len(records)
        pairs = [r for r in records if "margin" in r]
        prefer = (f"{sum(r['prefers'] for r in pairs)}/{len(pairs)} prefer the chosen answer (mean margin "
                  f"{statistics.fmean(r['margin'] for r in pairs):.3g}), " if pairs else "")
        self.log(f"evolution @ step {step}: {prefer}{exact}/{len(records)} exact, {close}/{len(records)} matching "
                 f"(similarity >= {self.threshold:g}), mean similarity {mean_sim:.2f}, {elapsed:.2f} s")
        return records

    def _score_fitting(self, model: torch.nn.Module, step: int) -> list[tuple[str, float, float | None]] | None:
        """(generation, loss, margin) per probe (the margin of a preference probe, else None), halving the probe batch on out-of-memory; None when even 1 does not fit.

        The error is handled here, not in the training loop: a snapshot's memory is not the training step's, and
        halving the training batch (or failing the run) for it would be wrong. The batch that fit is kept for the
        snapshots after this one.
        """
        while True:
            why = ""
            try:
                with preserved_training_state(model):
                    results: list[tuple[str, float, float | None]] = []
                    for i in range(0, len(self.encoded), self.batch_size):
                        batch = self.encoded[i:i + self.batch_size]
                        losses = self._reference_loss(model, batch)
                        results += zip(self._generate(model, batch), losses,
                                       self._margins(model, range(i, i + len(batch)), losses))
                    return results
            except Exception as e:  # noqa: BLE001 - anything but out-of-memory is re-raised at once
                if not is_out_of_memory(e):
                    raise
                why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            free_memory()  # outside the except block: its traceback pinned the failed attempt's tensors
            memory = "GPU memory" if next(model.parameters()).device.type == "cuda" else "memory"
            if self.batch_size <= 1:
                self.log(f"evolution @ step {step} skipped: out of {memory} even with one probe at a time ({why}). "
                         f"Training goes on. Fix: lower probe_max_new_tokens or max_length, or use shorter probes.")
                return None
            tried, self.batch_size = self.batch_size, self.batch_size // 2
            self.log(f"evolution @ step {step}: out of {memory} with {tried} probes per batch; "
                     f"retrying with {self.batch_size}")

    def _append(self, records: list[dict[str, Any]]) -> None:
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with open(self.out_path, "a", encoding="utf-8") as f:
            f.write(text)  # one write per snapshot: readers see whole snapshots (bar a crash mid-write)
            f.flush()
            os.fsync(f.fileno())

    def _stop_ids(self, model: torch.nn.Module) -> list[int]:
        ids: set[int] = set()
        for source in (getattr(model, "generation_config", None), self.tokenizer):
            eos = getattr(source, "eos_token_id", None)
            ids.update(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
        return sorted(ids)

    def _generate(self, model: torch.nn.Module, batch: list[EncodedProbe]) -> list[str]:
        """Greedy generations, each cut at its first stop token."""
        return generate_answers(model, self.tokenizer, batch, self._stop_ids(model), self.max_new_tokens)

    def _margins(self, model: torch.nn.Module, indices: range, losses: list[float]) -> list[float | None]:
        """Per probe of a batch: log p(chosen) - log p(rejected) after its context (summed over each answer's
        tokens), for preference probes; None for the others."""
        pairs = [k for k in indices if k in self.rejected]
        if not pairs:
            return [None] * len(indices)
        rejected = dict(zip(pairs, self._reference_loss(model, [self.rejected[k] for k in pairs])))
        return [None if k not in rejected else
                rejected[k] * len(self.rejected[k].reference_ids) - loss * len(self.encoded[k].reference_ids)
                for k, loss in zip(indices, losses)]

    def _reference_loss(self, model: torch.nn.Module, batch: list[EncodedProbe]) -> list[float]:
        """Mean cross-entropy per reference token, teacher-forced after the probe's context.

        Left padding puts every reference at the end of its row, so only the last (longest reference + 1) positions'
        logits are asked for (`logits_to_keep`), and only each probe's own positions are cast to fp32: full-row
        logits over a 152k vocabulary are gigabytes for a handful of long probes.
        """
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = next(model.parameters()).device
        rows = [e.prompt_ids + e.reference_ids for e in batch]
        ids, mask = _left_pad(rows, pad, device)
        width = ids.shape[1]
        keep = min(max(len(e.reference_ids) for e in batch) + 1, width)
        extra = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
        logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), **extra).logits
        kept = logits.shape[1]  # `keep`, or the whole row for a model without logits_to_keep
        losses = []
        for i, (e, row) in enumerate(zip(batch, rows)):
            n = min(len(e.reference_ids), len(row) - 1)  # a reference token needs a token before it
            if n <= 0:
                losses.append(float("nan"))
                continue
            # logits at position t predict token t+1: the reference occupies the last n positions
            pred = logits[i, kept - n - 1: kept - 1].float()
            losses.append(torch.nn.functional.cross_entropy(pred, ids[i, width - n:]).item())
        return losses
