"""Useful tokens per second on real alpaca data: overnight's default batching against padded batches, the plain
transformers Trainer (random and length-grouped) and TRL's SFTTrainer.

    python bench/useful_tokens.py [--size 27m|tiny] [--records N] [--repeats 1] [--quick] [--data PATH]

One LoRA job (r16, alpha 32, dropout 0.05, all linear layers, lr 2e-4, linear decay, AdamW, seed 1234, batch 8,
fp32 on the CPU) over ONE epoch of the first N records of realdata/alpaca_en_demo.json (alpaca: instruction +
input -> output, normalised to prompt/completion by overnight's `daemon.core.datasets.iter_examples`), tokenised the
same way for every run: tokens(prompt) + tokens(completion) + eos, the prompt masked from the loss, cut at
max_length 1024. The random-init Qwen2 and its tokenizer are built offline by daemon/client/tinymodel.py (bench/common.py).

Five runs, each its own process, interleaved (the order rotates every repeat):
- overnight        `python -m daemon.trainer RUN` with its defaults (batching "auto": length-grouped on the CPU);
- overnight_padded the same with batching = "padded" (random batches padded to their longest sequence);
- overnight_budget the same with batch_tokens = 8 × the mean length (token-budget micro-batches, length-grouped);
- trainer          a plain transformers Trainer, DataCollatorForSeq2Seq, random batches;
- trainer_grouped  the same with train_sampling_strategy="group_by_length" (the best stock setting on a CPU);
- trl              TRL's SFTTrainer, prompt-completion dataset, completion_only_loss, length-grouped batches
                   (--trl-modes adds or swaps padded / padding_free / packing runs).

Per run: the wall time of the training loop (overnight: result.json's train_seconds, the Trainer's construction
and train() call; the others: trainer.train(); neither counts process start, imports, tokenisation or model load),
useful tokens per second (useful tokens = the real sequence lengths of the epoch, the same for every run), tokens
computed (padded tokens fed to the model: counted by a collator wrapper in the baselines; for overnight, replayed
from its own sampler with its seed, since its process is run unmodified), the last step's loss and the mean loss
over the epoch. Not a test: it prints figures and ratios.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BATCH, LR, REPO, SEED, SIZES, build_model, lora_model, make_run, thread_env  # noqa: E402
from bench.common import train_overnight  # noqa: E402

MAX_LENGTH = 1024
DEFAULT_DATA = Path(os.environ.get("OVERNIGHT_REALDATA", REPO.parent / "shared" / "realdata")) / "alpaca_en_demo.json"
# ~15 minutes for the six runs on the 2-core CPU (26M model: ~1.3 s per record padded, ~0.75 s length-grouped)
DEFAULT_RECORDS = {"27m": 128, "tiny": 512}
KINDS = ("overnight", "overnight_padded", "overnight_budget", "trainer", "trainer_grouped", "trl")
TRL_MODES = ("grouped", "padded", "padding_free", "packing")
LABELS = {"overnight": "overnight default (auto)", "overnight_padded": "overnight batching=padded",
          "overnight_budget": "overnight batch_tokens (8 × the mean length)",
          "trainer": "plain Trainer (random, padded)", "trainer_grouped": "plain Trainer group_by_length"}
# what every Trainer-based run shares with overnight's defaults (lr_scheduler, warmup_ratio, weight_decay,
# max_grad_norm, optim in daemon/core/options.py)
TRAINER_ARGS = {"per_device_train_batch_size": BATCH, "num_train_epochs": 1, "learning_rate": LR,
                "lr_scheduler_type": "linear", "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0,
                "optim": "adamw_torch_fused", "logging_steps": 1, "save_steps": 10**6, "seed": SEED,
                "report_to": "none", "disable_tqdm": True, "dataloader_num_workers": 0}


# ----------------------------------------------------------------------------------------------- data

def write_records(source: Path, n: int, dest: Path) -> int:
    """The first n records of the alpaca JSON array, as a JSON array again (what a user would drop)."""
    records = json.loads(source.read_text(encoding="utf-8"))[:n]
    dest.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return len(records)


def encode(model: Path, dataset: Path) -> tuple[list[dict[str, Any]], list[dict[str, list[int]]]]:
    """prompt/completion pairs (overnight's normaliser) and their token ids and labels, encoded once for all runs.

    tokens(prompt) + tokens(completion) + eos, prompt labels -100, cut at MAX_LENGTH; checked to equal overnight's
    own Encoder sequence by sequence (records whose answer is cut away entirely are dropped, as overnight does)."""
    from transformers import AutoTokenizer

    from daemon.core.datasets import iter_examples
    from daemon.trainer.sequences import Encoder

    tok = AutoTokenizer.from_pretrained(model)
    theirs = Encoder(tok, MAX_LENGTH, str(model))
    pairs, encoded = [], []
    for ex in iter_examples(dataset):
        assert ex["kind"] == "prompt", ex["kind"]
        prompt = tok(ex["prompt"])["input_ids"]
        answer = tok(ex["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids, labels = (prompt + answer)[:MAX_LENGTH], ([-100] * len(prompt) + answer)[:MAX_LENGTH]
        other = theirs.encode(ex)
        if all(x == -100 for x in labels):
            assert other is None
            continue
        assert other is not None and other.input_ids.tolist() == ids and other.labels.tolist() == labels
        pairs.append({"prompt": ex["prompt"], "completion": ex["completion"]})
        encoded.append({"input_ids": ids, "labels": labels})
    return pairs, encoded


def padded_width_sum(lengths: list[int], order: list[int]) -> int:
    """Tokens computed when batches of BATCH taken in `order` are padded to their longest sequence."""
    from daemon.core.preflight import computed_tokens

    return computed_tokens(lengths, order, BATCH)


def batch_widths(lengths: list[int], order: list[int]) -> list[int]:
    """The width (longest sequence) of each batch of BATCH taken in `order`."""
    return [max(lengths[k] for k in order[i:i + BATCH]) for i in range(0, len(order), BATCH)]


def replay_overnight(batching: str, lengths: list[int]) -> tuple[int, list[int]]:
    """Tokens computed in overnight's epoch and its batch widths, from its own sampler replayed with its seed.

    length_grouped: daemon.trainer.batching.GroupedSampler (seeded from seed + epoch 0); padded: the stock random
    order, accelerate's SeedableRandomSampler (torch.randperm from a generator seeded with the run's seed);
    padding_free: one row of exactly the useful tokens."""
    import torch

    if batching == "padding_free":  # one row per batch, exactly the useful tokens (the order is not replayed)
        return sum(lengths), [sum(lengths[i:i + BATCH]) for i in range(0, len(lengths), BATCH)]
    if batching == "padded":
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(SEED)).tolist()
        return padded_width_sum(lengths, order), batch_widths(lengths, order)
    from daemon.trainer.batching import GroupedSampler

    class Lengths:
        def lengths(self) -> list[int]:
            return lengths

    sampler = GroupedSampler(BATCH, Lengths(), SEED)  # type: ignore[arg-type]
    sampler.set_epoch(0)
    order = list(sampler)
    return padded_width_sum(lengths, order), batch_widths(lengths, order)


# ----------------------------------------------------------------------------------------------- overnight

def run_overnight(kind: str, work: Path, model: Path, dataset: Path, records: int, lengths: list[int],
                  threads: int | None) -> dict[str, Any]:
    # raw prompts, as the baselines encode them (the tiny model has a chat template, which "auto" would use)
    options = {"epochs": 1, "max_steps": 0, "max_length": MAX_LENGTH, "log_every": 1, "prompt_format": "raw"}
    if kind == "overnight_padded":
        options["batching"] = "padded"
    if kind == "overnight_budget":  # micro-batches of about as many tokens as batch 8 holds on average
        options["batch_tokens"] = BATCH * round(statistics.fmean(lengths))
    run = make_run(work, model, dataset, schema="alpaca", records=records, **options)
    t0 = time.perf_counter()
    result, metrics = train_overnight(run, threads)
    process_s = time.perf_counter() - t0
    stats = json.loads((run / "stats.json").read_text())
    if stats["sequences"]["train"] != len(lengths) or result["tokens_seen"] != sum(lengths):
        raise SystemExit(f"overnight trained {stats['sequences']['train']} sequences of {result['tokens_seen']} "
                         f"tokens, the bench encoded {len(lengths)} of {sum(lengths)}: the data differ")
    console = (run / "console.log").read_text(encoding="utf-8")
    found = re.search(r"batching: ([\w-]+) \(.*?; one epoch: (.*)$", console, re.M)
    if not found:
        raise SystemExit(f"no 'batching:' line in {run}/console.log")
    batching = found.group(1).replace("-", "_")
    losses = [r["loss"] for r in metrics if r.get("loss") is not None]
    computed, widths = replay_overnight(batching, lengths)
    how = "replayed"
    if kind == "overnight_budget":  # its own count (result.json): the budget's batches are not replayed here
        computed, widths, how = result["tokens_computed"], [], "counted"
    stamps = [dt.datetime.fromisoformat(r["time"]) for r in metrics if "loss" in r]
    return {"wall_s": result["train_seconds"], "process_s": process_s, "widths": widths,
            "step_s": [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])],  # from step 2 on
            "computed": computed, "how": how,
            "steps": result["step"], "final_loss": losses[-1], "mean_loss": statistics.fmean(losses),
            "note": f"{batching}; its console: {found.group(2).strip()}", "batching": batching}


# ----------------------------------------------------------------------------------------------- baselines

class CountingCollator:
    """Wraps a collator; adds up the tokens of every batch it builds (padding included)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens = 0
        self.widths: list[int] = []

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        self.tokens += int(batch["input_ids"].numel())
        self.widths.append(int(batch["input_ids"].shape[-1]))
        return batch


class Log:
    """A Trainer callback keeping the logged losses and the step ends' times (as overnight's metrics.jsonl does)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        self.losses: list[float] = []
        self.ends: list[float] = []
        log = self

        class Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                log.ends.append(time.perf_counter())

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
                if logs and "loss" in logs:
                    log.losses.append(float(logs["loss"]))

        self.callback = Callback()

    def result(self, wall: float, collate: CountingCollator, steps: int, note: str) -> dict[str, Any]:
        return {"wall_s": wall, "computed": collate.tokens, "how": "counted", "widths": collate.widths,
                "step_s": [b - a for a, b in zip(self.ends, self.ends[1:])], "steps": steps,
                "final_loss": self.losses[-1], "mean_loss": statistics.fmean(self.losses), "note": note}


def _use_cpu() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {"use_cpu": not cuda, "bf16": cuda and torch.cuda.is_bf16_supported()}


def worker_trainer(kind: str, model: Path, work: Path) -> dict[str, Any]:
    """A plain script: transformers Trainer, DataCollatorForSeq2Seq, nothing of overnight's."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    encoded = json.loads((work / "encoded.json").read_text())
    data = [{**e, "attention_mask": [1] * len(e["input_ids"])} for e in encoded]
    collate = CountingCollator(DataCollatorForSeq2Seq(AutoTokenizer.from_pretrained(model), label_pad_token_id=-100))
    log = Log()
    strategy = "group_by_length" if kind == "trainer_grouped" else "random"
    args = TrainingArguments(output_dir=tempfile.mkdtemp(dir=work), train_sampling_strategy=strategy,
                             label_names=["labels"], **TRAINER_ARGS, **_use_cpu())
    net = lora_model(model)
    t0 = time.perf_counter()
    trainer = Trainer(model=net, args=args, train_dataset=data, data_collator=collate, callbacks=[log.callback])
    t1 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t1
    return log.result(wall, collate, trainer.state.global_step,
                      f"{strategy}; building the Trainer took {t1 - t0:.2f} s (not counted)")


def _trl_trainer(mode: str, model: Path, work: Path, pairs: list[dict[str, Any]],
                 encoded: list[dict[str, Any]]) -> tuple[Any, str]:
    """SFTTrainer for `mode`; the note says what it runs (and what it refused)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model)

    def make(dataset: Any, **kw: Any) -> Any:
        cfg = SFTConfig(output_dir=tempfile.mkdtemp(dir=work), gradient_checkpointing=False,
                        completion_only_loss=True, **{**TRAINER_ARGS, **_use_cpu(), "max_length": MAX_LENGTH, **kw})
        return SFTTrainer(model=lora_model(model), args=cfg, train_dataset=dataset, processing_class=tok)

    text = Dataset.from_list(pairs)
    if mode in ("grouped", "padded"):
        strategy = "group_by_length" if mode == "grouped" else "random"
        return make(text, train_sampling_strategy=strategy), f"prompt-completion, {strategy}"
    if mode == "packing":
        return make(text, packing=True, packing_strategy="bfd"), "prompt-completion, packing=True (bfd)"
    try:  # padding_free
        return make(text, padding_free=True), "prompt-completion, padding_free=True"
    except ValueError as e:
        refusal = str(e).split(".")[0]
    # TRL's own advice: give it inputs already cut to max_length and max_length=None
    tokens = Dataset.from_list([{"input_ids": e["input_ids"], "completion_mask": [int(x != -100) for x in e["labels"]]}
                                for e in encoded])
    return (make(tokens, padding_free=True, max_length=None),
            f"padding_free=True refused with max_length={MAX_LENGTH} ('{refusal}'); ran on token ids already cut "
            f"to {MAX_LENGTH} with max_length=None")


def worker_trl(mode: str, model: Path, work: Path) -> dict[str, Any]:
    """TRL's SFTTrainer on the prompt-completion pairs, completion_only_loss, in `mode`."""
    pairs = json.loads((work / "pairs.json").read_text())
    encoded = json.loads((work / "encoded.json").read_text())
    try:
        trainer, note = _trl_trainer(mode, model, work, pairs, encoded)
    except Exception as e:  # noqa: BLE001 - a setting TRL refuses: fall back to the best stock one, and say so
        if mode == "grouped":
            raise
        trainer, note = _trl_trainer("grouped", model, work, pairs, encoded)
        note = f"{mode} refused ({type(e).__name__}: {str(e)[:160]}); fell back to {note}"
    if mode != "packing":  # packed rows are not the records any more; the others must be our sequences exactly
        ds = trainer.train_dataset
        same = ds["input_ids"] == [e["input_ids"] for e in encoded] and ds["labels"] == [e["labels"] for e in encoded]
        if not same:
            raise SystemExit("TRL tokenised the records differently from the other runs")
        note += "; same token ids and labels as the others"
    collate = CountingCollator(trainer.data_collator)
    trainer.data_collator = collate
    log = Log()
    trainer.add_callback(log.callback)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return log.result(wall, collate, trainer.state.global_step, note)


def run_worker(kind: str, model: Path, work: Path, threads: int | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--model", str(model), "--work", str(work)],
                         cwd=REPO, capture_output=True, text=True, env=thread_env(threads))
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------- main

def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _label(kind: str) -> str:
    return LABELS.get(kind) or f"TRL SFTTrainer ({kind.split(':', 1)[1]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="27m", help="the model (default: 27m, ~26M params)")
    parser.add_argument("--records", type=int, help="the first N records of the data (default: "
                        + ", ".join(f"{n} with {s}" for s, n in DEFAULT_RECORDS.items()) + ")")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats of every run (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 64 records, 1 repeat: a smoke run")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"alpaca JSON array (default {DEFAULT_DATA})")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every run (default: torch's own)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"runs to include (default: all of {','.join(KINDS)})")
    parser.add_argument("--trl-modes", default="grouped", help=f"TRL settings, comma-separated, of {TRL_MODES} "
                        "(default: grouped, its fastest on a CPU; padding_free and packing flatten rows that sdpa "
                        "attends to as one long masked sequence)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.worker.startswith("trl:"):
            res = worker_trl(args.worker.split(":", 1)[1], args.model, args.work)
        else:
            res = worker_trainer(args.worker, args.model, args.work)
        print(json.dumps(res))
        return
    if args.quick:
        args.size, args.records, args.repeats = "tiny", args.records or 64, 1
    n_wanted = args.records or DEFAULT_RECORDS[args.size]
    modes = [m.strip() for m in args.trl_modes.split(",") if m.strip()]
    if bad := [m for m in modes if m not in TRL_MODES]:
        parser.error(f"unknown TRL mode(s) {bad}; choose from {TRL_MODES}")
    kinds: list[str] = []
    for k in (k.strip() for k in args.kinds.split(",") if k.strip()):
        if k not in KINDS:
            parser.error(f"unknown run {k!r}; choose from {KINDS}")
        kinds += [f"trl:{m}" for m in modes] if k == "trl" else [k]
    if not kinds:
        parser.error("--kinds names no run")

    load_before = _load()
    work = Path(tempfile.mkdtemp(prefix="overnight-useful-"))
    model = build_model(work / "model", args.size)
    dataset = work / "alpaca.json"
    records = write_records(args.data, n_wanted, dataset)
    pairs, encoded = encode(model, dataset)
    (work / "pairs.json").write_text(json.dumps(pairs))
    (work / "encoded.json").write_text(json.dumps(encoded))
    lengths = [len(e["input_ids"]) for e in encoded]
    useful = sum(lengths)
    import random

    from daemon.core.preflight import length_grouped_order

    random_est = padded_width_sum(lengths, random.Random(SEED).sample(range(len(lengths)), len(lengths)))
    grouped_est = padded_width_sum(lengths, length_grouped_order(lengths, BATCH, random.Random(SEED)))
    print(f"model {args.size} ({SIZES[args.size] or 'the embedded tiny model'}), {records} records of {args.data} "
          f"-> {len(encoded)} sequences, {useful:,} useful tokens (mean {useful / len(encoded):.0f}, longest "
          f"{max(lengths)}, max_length {MAX_LENGTH}), batch {BATCH}, one epoch, {args.repeats} interleaved "
          f"repeat(s), threads {args.threads or 'torch default'}; load average before {load_before}")
    print(f"padding of one epoch, estimated from the lengths: random batches {random_est:,} tokens computed "
          f"({1 - useful / random_est:.0%} padding), length-grouped {grouped_est:,} ({1 - useful / grouped_est:.0%})")

    results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(args.repeats):
        shift = r % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            if kind.startswith("overnight"):
                res = run_overnight(kind, work, model, dataset, records, lengths, args.threads)
            else:
                res = run_worker(kind, model, work, args.threads)
            results[kind].append(res)
            (work / "results.json").write_text(json.dumps(results))
            print(f"  repeat {r + 1} {_label(kind):34s} {res['wall_s']:7.1f} s  {useful / res['wall_s']:6.0f} useful "
                  f"tok/s  computed {res['computed']:,} ({res['how']}, {1 - useful / res['computed']:.0%} padding)  "
                  f"{res['steps']} steps  loss last {res['final_loss']:.4f} mean {res['mean_loss']:.4f}  "
                  f"[process {res['process_s']:.0f} s]  load {_load()}", flush=True)
            print(f"      {res['note']}", flush=True)
    load_after = _load()

    med = {k: statistics.median(x["wall_s"] for x in v) for k, v in results.items()}
    rate = {k: useful / s for k, s in med.items()}
    print(f"\nuseful tokens per epoch: {useful:,} (identical in every run); load average after {load_after}")
    print("| run | train time | useful tokens/s | tokens computed | padding | steps | last loss | mean loss |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, runs in results.items():
        x = runs[0]
        print(f"| {_label(kind)} | {med[kind]:.1f} s | {rate[kind]:.0f} | {x['computed']:,} ({x['how']}) | "
              f"{1 - useful / x['computed']:.0%} | {x['steps']} | {x['final_loss']:.4f} | {x['mean_loss']:.4f} |")
    print()
    if "overnight" in rate and "trainer" in rate:
        print(f"overnight default / plain Trainer (random, padded): {rate['overnight'] / rate['trainer']:.2f}x useful "
              f"tokens/s (goal >= 1.5x)")
    others = {k: v for k, v in rate.items() if not k.startswith("overnight")}  # the baselines, not its own variants
    if "overnight" in rate and others:
        best = max(others, key=others.get)  # type: ignore[arg-type]
        print(f"overnight default / best of the others ({_label(best)}): {rate['overnight'] / others[best]:.2f}x "
              f"(goal >= 1.0x: no slower)")
    for a, b, what in (("overnight_padded", "trainer", "same random batches: overnight's own overhead"),
                       ("trainer_grouped", "trainer", "what group_by_length gives the plain Trainer"),
                       ("overnight", "trainer_grouped", "overnight's length-grouping against the stock one")):
        if a in rate and b in rate:
            print(f"{_label(a)} / {_label(b)}: {rate[a] / rate[b]:.2f}x ({what})")
    for kind in (k for k in kinds if k.startswith("trl:")):
        if "trainer_grouped" in rate:
            print(f"{_label(kind)} / {_label('trainer_grouped')}: {rate[kind] / rate['trainer_grouped']:.2f}x")
    if "overnight_padded" in results and "trainer" in results:
        a, b = results["overnight_padded"][0], results["trainer"][0]
        same = a["computed"] == b["computed"] and abs(a["final_loss"] - b["final_loss"]) < 1e-3
        print(f"check: overnight padded and the plain Trainer saw the same batches: {'yes' if same else 'NO'} "
              f"(tokens computed {a['computed']:,} replayed vs {b['computed']:,} counted; last loss "
              f"{a['final_loss']:.4f} vs {b['final_loss']:.4f})")
    print(f"(run folders and models under {work})")


if __name__ == "__main__":
    main()
