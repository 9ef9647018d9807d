"""Token-budget micro-batches (`batch_tokens`) and the memory plan that sizes them before the first step."""
from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from daemon.core.preflight import (AUTO_TOKENS, FIT_SHARE, GIB, Shape, Sizing, busy_tokens, estimate_memory,
                                   plan_memory)
from daemon.core.tokenbatches import cost, epoch_order, for_rank, token_batches
from daemon.trainer.config import RunError, TrainOptions
from daemon.trainer.oom import next_rung
from tests.conftest_trainer import (WORDS, finish, jsonl, make_run, metrics, read_json, send, start, tiny_model,
                                    reversal_records, train_losses, wait_for)

QWEN_05B = {"vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864,
            "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True}
# Llama-3-8B's published config.json (128K vocabulary: the logits dominate a 24 GB card's budget)
LLAMA3_8B = {"vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 14336,
             "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False}


def _sizing(**kw: object) -> Sizing:
    base = dict(checkpointing="auto", batch_tokens="auto", batch_size=8, grad_accum=1, longest=1024, lora_r=16,
                quantization="none", dtype_bytes=2)
    return Sizing(**{**base, **kw})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ the batches

@pytest.mark.parametrize("padded,grouped", [(True, True), (False, True), (True, False)])
def test_every_example_is_in_exactly_one_batch_within_the_budget(padded: bool, grouped: bool) -> None:
    rng = random.Random(3)
    lengths = [rng.randint(5, 700) for _ in range(2000)] + [1500, 1200]  # two longer than the budget
    batches = token_batches(lengths, 1024, padded=padded, grouped=grouped, seed=7, multiple_of=8)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or cost([lengths[i] for i in b], padded=padded, multiple_of=8) <= 1024
    assert [b for b in batches if len(b) == 1 and lengths[b[0]] > 1024] == [[2000], [2001]] or padded is False \
        or {2000, 2001} <= {b[0] for b in batches if len(b) == 1}
    assert batches == token_batches(lengths, 1024, padded=padded, grouped=grouped, seed=7, multiple_of=8)


def test_grouping_by_length_leaves_little_padding() -> None:
    rng = random.Random(5)
    lengths = [rng.randint(20, 900) for _ in range(3000)]

    def padding(grouped: bool) -> float:
        batches = token_batches(lengths, 4096, padded=True, grouped=grouped, seed=1)
        return 1 - sum(lengths) / sum(cost([lengths[i] for i in b], padded=True) for b in batches)

    assert padding(True) < 0.03 < 0.3 < padding(False)


def test_each_epoch_has_its_own_order_the_same_in_every_process_and_the_same_share_per_rank() -> None:
    orders = [epoch_order(101, seed=42, epoch=e) for e in range(3)]
    assert all(sorted(o) == list(range(101)) for o in orders)
    assert orders[0] != orders[1] != orders[2] and orders[1] == epoch_order(101, seed=42, epoch=1)
    shares = [for_rank(orders[0], rank, 4) for rank in range(4)]
    assert {len(s) for s in shares} == {26} and set().union(*shares) == set(range(101))
    assert for_rank([5], 2, 3) == [5]


# ------------------------------------------------------------------------------------------ the memory plan

def test_auto_fills_an_h100_with_a_05b_and_sizes_an_8b_qlora_to_a_24gb_card() -> None:
    small = plan_memory(Shape.from_config(QWEN_05B), 79 * GIB, _sizing(liger=True))
    assert (small.checkpointing, small.batch_tokens, small.grad_accum) == (False, AUTO_TOKENS, 1)
    assert "keep the GPU busy" in small.batch_line() and "fits 80% of the 79.0 GiB" in small.checkpointing_why

    shape = Shape.from_config(LLAMA3_8B)
    big = plan_memory(shape, 23 * GIB, _sizing(quantization="4bit", longest=2048))
    assert big.checkpointing and "without it only" in big.checkpointing_why
    # the micro-batch fits the card with the margin, and the step still holds AUTO_TOKENS
    fits = estimate_memory(shape, batch_size=1, seq_len=big.batch_tokens, lora_r=16, quantization="4bit",
                           dtype_bytes=2, checkpointing=True)
    assert 2048 <= big.batch_tokens and fits.total <= FIT_SHARE * 23 * GIB
    assert AUTO_TOKENS <= big.batch_tokens * big.grad_accum < AUTO_TOKENS + 64 * big.grad_accum
    # the preflight figure the issue quotes: batch 8 × 2048 without checkpointing is ~35 GiB, ~19.6 of it logits
    old = estimate_memory(shape, batch_size=8, seq_len=2048, lora_r=16, quantization="4bit", dtype_bytes=2,
                          checkpointing=True)
    assert 19 * GIB < old.logits < 20.5 * GIB
    assert busy_tokens(shape) < 1000 < busy_tokens(Shape.from_config(QWEN_05B))


def test_batch_size_keeps_its_meaning_when_set_and_on_the_cpu() -> None:
    shape = Shape.from_config(QWEN_05B)
    cpu = plan_memory(shape, None, _sizing())
    assert (cpu.batch_tokens, cpu.batch_size, cpu.grad_accum, cpu.checkpointing) == (0, 8, 1, False)
    assert "no GPU" in cpu.batch_why
    kept = plan_memory(shape, 79 * GIB, _sizing(batch_size_set=True))
    assert kept.batch_tokens == 0 and kept.batch_size == 8 and "batch_size is set" in kept.batch_why
    dpo = plan_memory(shape, 79 * GIB, _sizing(rows=2, budgets=False))
    assert dpo.batch_tokens == 0 and "preference" in dpo.batch_why
    # a batch that cannot fit even with checkpointing is split, the effective batch kept
    split = plan_memory(Shape.from_config(LLAMA3_8B), 23 * GIB,
                        _sizing(batch_size=64, batch_size_set=True, quantization="4bit", longest=2048))
    assert split.checkpointing and split.batch_size * split.grad_accum == 64 and split.batch_size < 64
    assert "the effective batch stays 64" in split.batch_why


def test_a_set_budget_is_kept_or_split_with_as_much_more_accumulation() -> None:
    shape = Shape.from_config(LLAMA3_8B)
    kept = plan_memory(shape, None, _sizing(batch_tokens=8192))
    assert (kept.batch_tokens, kept.grad_accum) == (8192, 1) and kept.batch_why == "set in the options"
    split = plan_memory(shape, 23 * GIB, _sizing(batch_tokens=65536, grad_accum=2, quantization="4bit",
                                                 longest=2048))
    assert split.batch_tokens * split.grad_accum == 65536 * 2 and split.batch_tokens < 65536
    assert "a step keeps its 131,072 tokens" in split.batch_why
    short = plan_memory(shape, None, _sizing(batch_tokens=512, longest=2048))
    assert "a sequence longer than it is a micro-batch alone" in short.batch_why
    # checkpointing is decided for the largest micro-batch: a 2048-token sequence alone, not the smaller budget
    for budget in (64, 1024, 1500):
        sized = _sizing(batch_tokens=budget, longest=2048, quantization="4bit", checkpointing="auto")
        assert plan_memory(shape, 23 * GIB, sized).checkpointing, budget


def test_the_ladder_halves_a_budget_down_to_the_longest_sequence() -> None:
    opts = TrainOptions(base_model="m", batch_tokens=4096, grad_accum=1, gradient_checkpointing=True)
    opts, why = next_rung(opts, longest=1500)
    assert (opts.batch_tokens, opts.grad_accum) == (2048, 2) and "a step keeps its 4,096 tokens" in why
    opts, _ = next_rung(opts, longest=1500)
    assert (opts.batch_tokens, opts.grad_accum) == (1500, 4)
    with pytest.raises(RunError, match="longest sequence.*Fix:"):
        next_rung(opts, longest=1500)


# ------------------------------------------------------------------------------------------ a real run

def _records(n: int, seed: int) -> list[dict[str, str]]:
    """Reversal records of 2 to 12 words: lengths that differ, so budget batches hold different counts."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w = rng.sample(WORDS, rng.randint(2, 12))
        out.append({"prompt": "reverse: " + " ".join(w) + "\n", "completion": " ".join(reversed(w))})
    return out


def test_a_budget_epoch_sees_every_example_once_and_stop_resume_is_exact(tmp_path: Path) -> None:
    model = tiny_model(tmp_path.parent)
    opts = {"lora_dropout": 0.0, "eval_fraction": 0.0, "learning_rate": 1e-3, "max_steps": 0, "epochs": 2,
            "batch_tokens": 160, "batching": "length_grouped", "save_every": 4}
    content = jsonl(_records(60, seed=4))
    runs = {name: make_run(tmp_path / name, model, dataset_name="d.jsonl", content=content,
                           schema="prompt_completion", records=60, options=opts) for name in ("straight", "stopped")}
    straight = start(runs["straight"])
    run = runs["stopped"]
    proc = start(run)
    wait_for(lambda: (read_json(run / "progress.json") or {}).get("max_steps"), 180, "max_steps", proc)
    steps = int(read_json(run / "progress.json")["max_steps"])
    wait_for(lambda: any(m.get("step", 0) > steps // 2 + 1 for m in metrics(run)), 180, "the second epoch", proc)
    send(proc, "stop")
    assert proc.wait(120) == 0 and read_json(run / "result.json")["outcome"] == "stopped"
    assert finish(start(run), 300) == 0 and finish(straight, 300) == 0
    resumed, reference = train_losses(run), train_losses(runs["straight"])
    assert sorted(resumed) == list(range(1, steps + 1)) == sorted(reference)
    assert max(abs(resumed[s] - reference[s]) for s in reference) < 1e-6
    log = (run / "console.log").read_text()
    assert "batches: micro-batches of up to 160 tokens × grad_accum 1 (set in the options)" in log
    epoch = next(x for x in log.splitlines() if "one epoch:" in x)
    sizes = re.search(r"micro-batches of (\d+)–(\d+) examples", epoch)
    assert sizes and int(sizes[1]) < int(sizes[2])  # the budget, not a count, decides
    # two epochs: every training example's tokens exactly twice
    from transformers import AutoTokenizer

    from daemon.core.datasets import as_chat
    from daemon.core.templating import for_run
    from daemon.trainer.sequences import Encoder

    # the records as the run trains them: one chat exchange each, through the model's template
    encoder = Encoder(AutoTokenizer.from_pretrained(model), 64, str(model), for_run("auto", model, ()), True)
    one_epoch = sum(len(encoder.encode(as_chat({"kind": "prompt", **r})).input_ids) for r in _records(60, seed=4))
    assert "prompt format: chat" in log
    assert read_json(runs["straight"] / "result.json")["tokens_seen"] == 2 * one_epoch


def test_check_says_which_batching_options_a_run_would_set_aside(tmp_path: Path) -> None:
    from tests.conftest import overnight

    model = tiny_model(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    (home / "overnight.toml").write_text(f'base_model = "{model}"\n')
    (tmp_path / "d.jsonl").write_text(jsonl(reversal_records(20)))
    (tmp_path / "d.toml").write_text("batch_tokens = 64\nbatch_size = 2\nmax_length = 128\n")
    said = overnight("check", str(tmp_path / "d.jsonl"), home=home, check=True).stdout
    assert "note: batch_size = 2 is not used: batch_tokens = 64 sets the micro-batches" in said, said
    assert "note: batch_tokens = 64 is below max_length 128: each example longer than it is a micro-batch" in said
    pairs = [{"prompt": f"q{i}", "chosen": "yes", "rejected": "no"} for i in range(20)]
    (tmp_path / "p.jsonl").write_text(jsonl(pairs))
    (tmp_path / "p.toml").write_text("batch_tokens = 512\n")
    said = overnight("check", str(tmp_path / "p.jsonl"), home=home, check=True).stdout
    assert "note: batch_tokens = 512 is not used: TRL's preference trainers (dpo) batch by examples" in said, said
