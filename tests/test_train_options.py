"""Every training option a sidecar sets reaches the Trainer: one tiny run through the daemon, read back from what
transformers and peft themselves saved (training_args.bin, optimizer.pt, trainer_state.json, adapter_config.json,
the adapter's weights) and from the learning rate the Trainer logged at each step."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from daemon.core.queries import Reader
from tests.conftest import budget, drop, wait_until

pytestmark = pytest.mark.e2e

# Each differs from its default (daemon/core/options.py), so a value dropped on the way shows up as the default.
OPTIONS = {
    "max_steps": 0,  # 0: epochs decide the length
    "epochs": 1.5,
    "learning_rate": 5e-3,
    "batch_size": 4,
    "grad_accum": 2,
    "lora_r": 4,
    "lora_alpha": 12,
    "lora_dropout": 0.1,
    "lora_targets": ["q_proj", "v_proj"],
    "seed": 11,
    "log_every": 1,
    "save_every": 4,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.25,
    "weight_decay": 0.03,
    "max_grad_norm": 0.5,
    "optim": "adagrad",  # runs on the CPU and keeps a state unlike AdamW's
    "gradient_checkpointing": True,
    "batching": "length_grouped",
    "attn_implementation": "eager",
    "max_length": 48,
    "eval_fraction": 0.1,
    "probe_count": 0,
}
RECORDS = 48  # 44 train, 4 eval: 11 micro-batches, 5.5 optimizer steps an epoch


def _toml(value: object) -> str:
    return json.dumps(value)  # numbers, strings, booleans and lists of strings read the same in TOML


def test_every_training_option_in_a_sidecar_reaches_the_trainer(home, tiny_model, daemon_proc, tmp_path):
    import torch
    from safetensors import safe_open

    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    rng = random.Random(0)
    words = "apple stone river green music horse bread moon".split()
    rows = []
    for _ in range(RECORDS):
        w = rng.sample(words, 3)
        rows.append(json.dumps({"prompt": "reverse: " + " ".join(w) + "\n", "completion": " ".join(w[::-1])}))
    (tmp_path / "opts.jsonl").write_text("\n".join(rows) + "\n")
    (tmp_path / "opts.toml").write_text("".join(f"{k} = {_toml(v)}\n" for k, v in OPTIONS.items()))
    daemon_proc()
    drop(tmp_path / "opts.toml", home / "inbox")
    drop(tmp_path / "opts.jsonl", home / "inbox")

    def ended():
        reader = Reader(home / "overnight.db")
        try:
            run = reader.find_run("opts")
        finally:
            reader.close()
        return run if run and run["state"] in ("completed", "failed") else None

    run = wait_until(ended, budget(180), interval=0.5, what="the run ends")
    run_dir = Path(run["run_dir"])
    assert run["state"] == "completed", (run_dir / "console.log").read_text()
    config = json.loads((run_dir / "config.json").read_text())
    assert all(config["sources"][k] == "sidecar" for k in OPTIONS)

    steps = sorted(int(p.name.removeprefix("step-")) for p in (run_dir / "checkpoints").glob("step-*"))
    last = run_dir / "checkpoints" / f"step-{steps[-1]}"
    args = torch.load(last / "training_args.bin", weights_only=False)
    assert args.num_train_epochs == 1.5 and args.max_steps == -1
    assert args.learning_rate == 5e-3
    assert args.per_device_train_batch_size == 4 and args.per_device_eval_batch_size == 4
    assert args.gradient_accumulation_steps == 2
    assert args.seed == 11
    assert args.logging_steps == 1
    assert args.save_steps == 4 and args.eval_steps == 4
    assert str(args.lr_scheduler_type.value) == "cosine"
    assert args.warmup_steps == 0.25  # transformers 5: a float below 1 is a share of the steps
    assert args.weight_decay == 0.03
    assert args.max_grad_norm == 0.5
    assert str(args.optim.value) == "adagrad"
    # transformers renamed gradient_checkpointing to activation_checkpointing; whichever this version has is on
    assert [getattr(args, n) for n in ("gradient_checkpointing", "activation_checkpointing") if hasattr(args, n)] \
        in ([True], [True, True])
    assert args.train_sampling_strategy == "group_by_length"

    # the optimizer that stepped: Adagrad's accumulators, not AdamW's moments; decay on the LoRA weights
    optim = torch.load(last / "optimizer.pt", weights_only=False)
    assert all("sum" in s and "exp_avg" not in s for s in optim["state"].values())
    assert all("lr_decay" in g and "initial_accumulator_value" in g for g in optim["param_groups"])
    assert optim["param_groups"][0]["weight_decay"] == 0.03 and optim["param_groups"][0]["params"]

    # 1.5 epochs of 5.5 steps, not the default 3 epochs (17 steps)
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] == 9 == steps[-1]
    assert 1.5 <= state["epoch"] < 1.5 + 1 / 5.5
    assert steps[:-1] == [8], "checkpoints every save_every steps (step-4 removed by keep_checkpoints = 2)"

    # the learning rate each step trained with: cosine after a linear warmup over ceil(0.25 * 9) = 3 steps
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    lrs = {r["step"]: r["lr"] for r in records if "loss" in r}
    assert sorted(lrs) == list(range(1, 10)), "a record every log_every = 1 steps"
    warmup, total = 3, 9
    for step, lr in lrs.items():
        i = step - 1  # the lr a step trained with is the schedule's value before that step
        want = 5e-3 * (i / warmup if i < warmup else 0.5 * (1 + math.cos(math.pi * (i - warmup) / (total - warmup))))
        assert lr == pytest.approx(want, abs=1e-9), (step, lr, want)
    assert [r["step"] for r in records if "eval_loss" in r] == [4, 8, 9], "eval every save_every steps and at the end"

    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["lora_dropout"]) == (4, 12, 0.1)
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    with safe_open(str(run_dir / "adapter" / "adapter_model.safetensors"), "pt") as f:
        modules = {k.split(".lora_")[0].rsplit(".", 1)[1] for k in f.keys()}
        rank = f.get_tensor(next(k for k in f.keys() if "lora_A" in k)).shape[0]
    assert modules == {"q_proj", "v_proj"} and rank == 4

    # what the trainer reports choosing where transformers saves nothing: the attention kernel, the batching
    console = (run_dir / "console.log").read_text()
    assert "attention: eager (set in the options)" in console
    assert "batching: length-grouped (set in the options)" in console
    assert "gradient checkpointing: on (set in the options)" in console
    assert "0 truncated at max_length 48" in console
