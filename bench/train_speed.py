"""Training speed: overnight's trainer against a plain transformers Trainer script and a hand-written torch loop.

    python bench/train_speed.py [--quick] [--repeats 3] [--steps 20]

All three run the same LoRA job (r16, alpha 32, dropout 0.05, all linear layers) on the same random-init Qwen2
(hidden 512, 6 layers, 8 heads, ~26M parameters, built offline by daemon/client/tinymodel.py), the same data (text
packed into blocks of 128 tokens, batch 8, no padding), the same optimizer settings and seed, fp32 on the CPU
(bf16 on a GPU when one is present). Each run is its own process, and the three kinds take turns (interleaved
repeats, rotating the order), because the host's speed drifts ±15-20% from run to run.

Seconds per step are steady-state: from the end of the first logged step to the end of the last one (the first
step pays one-off warm-up; process start, model loading and the final save are not counted). overnight's figure
comes from its own metrics.jsonl timestamps; the baselines time their steps with perf_counter.
Target: overnight's step time within 1.03x of the plain Trainer's.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BATCH, LR, REPO, SEED, SIZES, build_model, lora_model, thread_env  # noqa: E402
from bench.common import make_run as _make_run, step_clock, train_overnight  # noqa: E402

LENGTH = 128
KINDS = ("overnight", "trainer", "loop")


# ----------------------------------------------------------------------------------------------- setup

def write_dataset(path: Path, n_lines: int = 600) -> None:
    """Plain text lines from the tiny model's own corpus, shuffled by a fixed seed."""
    import random

    from daemon.client.tinymodel import training_corpus

    rng = random.Random(SEED)
    words = " ".join(training_corpus()).split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) for _ in range(n_lines)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_run(root: Path, model: Path, dataset: Path, steps: int, log_every: int) -> Path:
    """A run folder as the daemon's intake leaves it."""
    n = sum(1 for line in dataset.read_text().splitlines() if line.strip())
    return _make_run(root, model, dataset, schema="plain_text", records=n, max_steps=steps, max_length=LENGTH,
                     log_every=log_every)


# ----------------------------------------------------------------------------------------------- the three kinds

def run_overnight(workdir: Path, model: Path, dataset: Path, steps: int, log_every: int,
                  threads: int | None) -> dict[str, float]:
    run = make_run(workdir, model, dataset, steps, log_every)
    result, records = train_overnight(run, threads)
    logged = [r for r in records if "loss" in r]
    first, last = logged[0], logged[-1]
    seconds = (dt.datetime.fromisoformat(last["time"]) - dt.datetime.fromisoformat(first["time"])).total_seconds()
    return {"s_per_step": seconds / (last["step"] - first["step"]), "final_loss": last["loss"],
            "cpu_per_step": result["train_cpu_seconds"] / steps}


def run_baseline(kind: str, model: Path, dataset: Path, steps: int, log_every: int,
                 threads: int | None) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, "--model", str(model), "--dataset",
                          str(dataset), "--steps", str(steps), "--log-every", str(log_every)],
                         cwd=REPO, capture_output=True, text=True, env=thread_env(threads))
    if out.returncode != 0:
        raise SystemExit(f"{kind} baseline failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _blocks(model: Path, dataset: Path) -> list[list[int]]:
    """The same packing as overnight's text kind: each line + eos, concatenated, cut into LENGTH blocks
    (the last one shorter), so that both Trainers see the same batches in the same order."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    stream: list[int] = []
    for line in dataset.read_text(encoding="utf-8").splitlines():
        if line.strip():
            stream += tok(line)["input_ids"] + [tok.eos_token_id]
    return [stream[i:i + LENGTH] for i in range(0, len(stream), LENGTH) if len(stream[i:i + LENGTH]) >= 2]


def _collator(model: Path) -> Any:
    """transformers' own padding collator (input_ids padded with pad, labels with -100)."""
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(AutoTokenizer.from_pretrained(model), label_pad_token_id=-100)


def worker_trainer(model: Path, dataset: Path, steps: int, log_every: int) -> dict[str, float]:
    """A plain script: transformers Trainer with a stock collator, nothing of overnight's."""
    import torch
    from transformers import Trainer, TrainingArguments

    data = [{"input_ids": b, "attention_mask": [1] * len(b), "labels": b} for b in _blocks(model, dataset)]
    clock, ends, losses = step_clock()

    cuda = torch.cuda.is_available()
    # save_steps beyond the run: like overnight, one checkpoint is written at the last step
    args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH, max_steps=steps,
                             learning_rate=LR, logging_steps=log_every, save_steps=10**6, seed=SEED,
                             use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(), report_to="none",
                             disable_tqdm=True, dataloader_num_workers=0, label_names=["labels"])
    trainer = Trainer(model=lora_model(model), args=args, train_dataset=data, data_collator=_collator(model),
                      callbacks=[clock])
    cpu0 = time.process_time()
    trainer.train()
    return {"s_per_step": (ends[-1] - ends[0]) / (len(ends) - 1), "final_loss": losses[-1],
            "cpu_per_step": (time.process_time() - cpu0) / steps}


def worker_loop(model: Path, dataset: Path, steps: int, log_every: int) -> dict[str, float]:
    """A hand-written loop: AdamW, linear decay, grad-norm clipping at 1.0 (the Trainer's defaults)."""
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    net = lora_model(model).to(device)
    net.train()
    blocks = _blocks(model, dataset)
    collate = _collator(model)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    gen = torch.Generator().manual_seed(SEED)
    order = torch.randperm(len(blocks), generator=gen)
    ends, loss_value = [], math.nan
    cpu0 = time.process_time()
    for step in range(steps):
        idx = order[(step * BATCH) % len(order):][:BATCH]
        if len(idx) < BATCH:
            order = torch.randperm(len(blocks), generator=gen)
            idx = order[:BATCH]
        batch = collate([{"input_ids": blocks[i], "attention_mask": [1] * len(blocks[i]), "labels": blocks[i]}
                         for i in idx.tolist()])
        loss = net(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % log_every == 0 or step == 0 or step == steps - 1:
            loss_value = loss.item()  # the Trainer logs (and syncs) on the same steps
        ends.append(time.perf_counter())
    return {"s_per_step": (ends[-1] - ends[0]) / (len(ends) - 1), "final_loss": loss_value,
            "cpu_per_step": (time.process_time() - cpu0) / steps}


# ----------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 8 steps: a smoke run, not a measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--log-every", type=int, default=1, help="log interval of all three kinds")
    parser.add_argument("--threads", type=int, help="torch threads of every run (OMP_NUM_THREADS); default: "
                        "torch's own. 1 is the steadiest figure on a shared machine")
    parser.add_argument("--size", choices=sorted(SIZES), default="27m", help="the model (default: 27m)")
    parser.add_argument("--worker", choices=("trainer", "loop"), help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        fn = worker_trainer if args.worker == "trainer" else worker_loop
        print(json.dumps(fn(args.model, args.dataset, args.steps, args.log_every)))
        return
    if args.quick:
        args.repeats, args.steps = 1, 8

    work = Path(tempfile.mkdtemp(prefix="overnight-bench-"))
    model = build_model(work / "model", args.size)
    dataset = work / "bench.txt"
    write_dataset(dataset)
    print(f"model {model} ({args.size}: {SIZES[args.size] or 'the embedded tiny model'}), batch {BATCH} x {LENGTH} tokens, {args.steps} steps, "
          f"{args.repeats} interleaved repeat(s), log every {args.log_every} step(s)")
    wall: dict[str, list[float]] = {k: [] for k in KINDS}
    cpu: dict[str, list[float]] = {k: [] for k in KINDS}
    for r in range(args.repeats):
        order = KINDS[r % 3:] + KINDS[:r % 3]
        for kind in order:
            if kind == "overnight":
                res = run_overnight(work, model, dataset, args.steps, args.log_every, args.threads)
            else:
                res = run_baseline(kind, model, dataset, args.steps, args.log_every, args.threads)
            wall[kind].append(res["s_per_step"])
            cpu[kind].append(res["cpu_per_step"])
            print(f"  repeat {r + 1} {kind:9s} {res['s_per_step']:.3f} s/step "
                  f"{BATCH * LENGTH / res['s_per_step']:7.0f} tokens/s  CPU {res['cpu_per_step']:.3f} s/step  "
                  f"final loss {res['final_loss']:.4f}", flush=True)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print("\nmedians (wall-clock steady state; CPU time of the whole train() call incl. warm-up and final save):")
    for kind in KINDS:
        print(f"  {kind:9s} {med[kind]:.3f} s/step  {BATCH * LENGTH / med[kind]:7.0f} tokens/s  "
              f"CPU {med_cpu[kind]:.3f} s/step")
    for a, b, label in (("overnight", "trainer", "overnight / plain Trainer"), ("overnight", "loop",
                        "overnight / torch loop"), ("trainer", "loop", "plain Trainer / torch loop")):
        target = " (target <= 1.03x)" if b == "trainer" else ""
        print(f"{label:27s} step time {med[a] / med[b]:.3f}x, CPU time {med_cpu[a] / med_cpu[b]:.3f}x{target}")


if __name__ == "__main__":
    main()
