"""DPO step time: overnight's preference trainer against a plain TRL `DPOTrainer` script.

    python bench/dpo_speed.py [--quick] [--repeats 3] [--steps 20]

Both run the same DPO job: the same random-init Qwen2 (hidden 512, 6 layers, 8 heads, ~26M parameters, built
offline by daemon/client/tinymodel.py), the same LoRA (r16, alpha 32, dropout 0.05, all linear layers), the same
preference pairs (prompt "reverse: w1 w2 w3 w4\\n", chosen the four words reversed, rejected four words no prompt
holds), batch 8, the same lr and seed, beta 0.1, loss "sigmoid", nothing truncated, no eval, no probes, gradient
checkpointing off, fp32 on the CPU (bf16 on a GPU when one is present). Raw prompts on both sides: overnight runs
with prompt_format = "raw", and the baseline hands TRL plain {prompt, chosen, rejected} strings, which it tokenises
itself; the baseline checks that TRL's token ids equal overnight's encoding pair by pair, so the batches are the
same (same rows, same sampler seed, same order) and both must end on the same loss.

Each run is its own process, and the two kinds take turns (interleaved repeats, rotating the order), because the
host's speed drifts ±15-20% from run to run. Seconds per step are steady-state and taken the same way on both
sides: from the end of the first logged step to the end of the last one (every step is logged; the first pays
one-off warm-up; process start, model loading, TRL's tokenisation and the final save are not counted). overnight's
figure comes from its own metrics.jsonl timestamps; the baseline's from perf_counter in on_step_end.
Target: overnight's step time within 1.05x of the plain DPOTrainer's.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BATCH, LORA, LR, REPO, SEED, SIZES, build_model, thread_env  # noqa: E402
from bench.common import make_run as _make_run, step_clock, train_overnight  # noqa: E402

PAIRS = 400
MAX_LENGTH = 128  # the pairs are ~15 tokens: nothing is cut (overnight's encoder counts truncations; see the check)
BETA, LOSS = 0.1, "sigmoid"
KINDS = ("overnight", "trl")


# ----------------------------------------------------------------------------------------------- setup

def write_dataset(path: Path, n: int = PAIRS) -> None:
    """{prompt, chosen, rejected} pairs from the tiny model's own words: reverse four words; the rejected answer is
    four words that no prompt holds (the shape of tests/test_preference_train.py `pairs()`)."""
    import random

    from daemon.client.tinymodel import training_corpus

    rng = random.Random(SEED)
    words = sorted({w for line in training_corpus() for w in line.split() if w.isalpha()})
    rng.shuffle(words)
    other, words = words[:12], words[12:]
    rows = []
    for _ in range(n):
        w = rng.sample(words, 4)
        rows.append({"prompt": "reverse: " + " ".join(w) + "\n", "chosen": " ".join(reversed(w)),
                     "rejected": " ".join(rng.sample(other, 4))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def read_pairs(dataset: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in dataset.read_text(encoding="utf-8").splitlines() if line.strip()]


def make_run(root: Path, model: Path, dataset: Path, steps: int, log_every: int) -> Path:
    """A run folder as the daemon's intake leaves it: a preference drop, trained with DPO on raw prompts."""
    return _make_run(root, model, dataset, schema="preference", records=len(read_pairs(dataset)), max_steps=steps,
                     max_length=MAX_LENGTH, log_every=log_every, objective="dpo", prompt_format="raw", beta=BETA,
                     loss_type=LOSS, gradient_checkpointing=False)


# ----------------------------------------------------------------------------------------------- the two kinds

def run_overnight(workdir: Path, model: Path, dataset: Path, steps: int, log_every: int,
                  threads: int | None) -> dict[str, Any]:
    run = make_run(workdir, model, dataset, steps, log_every)
    result, records = train_overnight(run, threads)
    logged = [r for r in records if "loss" in r and "step" in r]
    first, last = logged[0], logged[-1]
    seconds = (dt.datetime.fromisoformat(last["time"]) - dt.datetime.fromisoformat(first["time"])).total_seconds()
    stats = json.loads((run / "stats.json").read_text())
    return {"s_per_step": seconds / (last["step"] - first["step"]), "final_loss": last["loss"],
            "cpu_per_step": result["train_cpu_seconds"] / steps, "truncated": stats.get("truncated")}


def run_baseline(model: Path, dataset: Path, steps: int, log_every: int, threads: int | None) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--worker", "--model", str(model), "--dataset", str(dataset),
                          "--steps", str(steps), "--log-every", str(log_every)],
                         cwd=REPO, capture_output=True, text=True, env=thread_env(threads))
    if out.returncode != 0:
        raise SystemExit(f"TRL baseline failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _same_tokens(model: Path, pairs: list[dict[str, str]], tokenised: Any) -> tuple[int, int]:
    """How many of TRL's tokenised pairs differ from overnight's raw encoding (preference.PreferenceEncoder), and
    the total tokens of all sequences (prompt + chosen, prompt + rejected): a check only, it is not timed."""
    from transformers import AutoTokenizer

    from daemon.core.datasets import ExampleKind
    from daemon.trainer.objectives.preference import PreferenceEncoder

    encoder = PreferenceEncoder(AutoTokenizer.from_pretrained(model), MAX_LENGTH, str(model))
    differ = tokens = 0
    for i, (pair, row) in enumerate(zip(pairs, tokenised, strict=True)):
        ours = encoder.encode(i, {"kind": ExampleKind.PAIR, **pair})
        assert ours is not None
        theirs = {k: list(row[k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
        differ += ours != theirs
        tokens += 2 * len(theirs["prompt_ids"]) + len(theirs["chosen_ids"]) + len(theirs["rejected_ids"])
    return differ, tokens


def worker_trl(model: Path, dataset: Path, steps: int, log_every: int) -> dict[str, Any]:
    """A plain script: TRL's DPOTrainer with a peft_config and a datasets.Dataset of strings, nothing of overnight's."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    pairs = read_pairs(dataset)
    clock, ends, losses = step_clock()

    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16 if bf16 else torch.float32)
    base.config.use_cache = False
    peft_config = LoraConfig(r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"], lora_dropout=LORA["lora_dropout"],
                             target_modules="all-linear", task_type="CAUSAL_LM")
    # save_steps beyond the run: like overnight, one checkpoint is written at the last step. bf16 and gradient
    # checkpointing set explicitly: TRL's configs default both on, overnight has both off on the CPU.
    args = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH, max_steps=steps,
                     learning_rate=LR, logging_steps=log_every, save_steps=10**6, seed=SEED, use_cpu=not cuda,
                     bf16=bf16, gradient_checkpointing=False, report_to="none", disable_tqdm=True,
                     dataloader_num_workers=0, beta=BETA, loss_type=[LOSS], max_length=None)
    set_seed(SEED)  # the LoRA weights are drawn inside DPOTrainer (get_peft_model)
    trainer = DPOTrainer(model=base, args=args, train_dataset=datasets.Dataset.from_list(pairs),
                         processing_class=AutoTokenizer.from_pretrained(model), peft_config=peft_config,
                         callbacks=[clock])
    differ, tokens = _same_tokens(model, pairs, trainer.train_dataset)
    cpu0 = time.process_time()
    trainer.train()
    return {"s_per_step": (ends[-1] - ends[0]) / (len(ends) - 1), "final_loss": losses[-1],
            "cpu_per_step": (time.process_time() - cpu0) / steps, "pairs_differ": differ, "tokens": tokens}


# ----------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 8 steps: a smoke run, not a measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--log-every", type=int, default=1, help="log interval of both kinds")
    parser.add_argument("--threads", type=int, help="torch threads of every run (OMP_NUM_THREADS); default: "
                        "torch's own. 1 is the steadiest figure on a shared machine")
    parser.add_argument("--size", choices=sorted(SIZES), default="27m", help="the model (default: 27m)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker_trl(args.model, args.dataset, args.steps, args.log_every)))
        return
    if args.quick:
        args.repeats, args.steps = 1, 8

    work = Path(tempfile.mkdtemp(prefix="overnight-dpo-bench-"))
    model = build_model(work / "model", args.size)
    dataset = work / "pairs.jsonl"
    write_dataset(dataset)
    print(f"model {model} ({args.size}: {SIZES[args.size] or 'the embedded tiny model'}), {PAIRS} pairs, "
          f"batch {BATCH} pairs, beta {BETA}, loss {LOSS}, {args.steps} steps, {args.repeats} interleaved "
          f"repeat(s), log every {args.log_every} step(s)")
    wall: dict[str, list[float]] = {k: [] for k in KINDS}
    cpu: dict[str, list[float]] = {k: [] for k in KINDS}
    for r in range(args.repeats):
        order = KINDS[r % 2:] + KINDS[:r % 2]
        for kind in order:
            if kind == "overnight":
                res = run_overnight(work, model, dataset, args.steps, args.log_every, args.threads)
                extra = f"  truncated {res['truncated']}"
            else:
                res = run_baseline(model, dataset, args.steps, args.log_every, args.threads)
                extra = (f"  pairs whose TRL token ids differ from overnight's: {res['pairs_differ']}/{PAIRS} "
                         f"({res['tokens'] / PAIRS:.1f} tokens per pair, both sequences)")
            wall[kind].append(res["s_per_step"])
            cpu[kind].append(res["cpu_per_step"])
            print(f"  repeat {r + 1} {kind:9s} {res['s_per_step']:.3f} s/step  CPU {res['cpu_per_step']:.3f} s/step  "
                  f"final loss {res['final_loss']:.4f}{extra}", flush=True)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print("\nmedians (wall-clock steady state; CPU time of the whole train() call incl. warm-up and final save):")
    for kind in KINDS:
        print(f"  {kind:9s} {med[kind]:.3f} s/step  {BATCH / med[kind]:6.1f} pairs/s  CPU {med_cpu[kind]:.3f} s/step")
    print(f"overnight / plain DPOTrainer step time {med['overnight'] / med['trl']:.3f}x, "
          f"CPU time {med_cpu['overnight'] / med_cpu['trl']:.3f}x (target <= 1.05x)")


if __name__ == "__main__":
    main()
