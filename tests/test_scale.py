"""Scale: batching strategies, quantisation, gradient checkpointing and the out-of-memory ladder.

The trainer runs the embedded tiny model for real, as a subprocess (batching, quantisation) or in-process where a
fault must be injected (out of memory).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from daemon.core.options import LR_SCHEDULERS, OPTIMIZERS, OptionsError, check_value
from daemon.core.preflight import Shape, checkpointing_decision, estimate_memory, padding_report
from daemon.trainer.config import RunError, TrainOptions
from daemon.trainer.oom import is_out_of_memory, next_rung
from tests.conftest import overnight
from tests.conftest_trainer import (chat_records, jsonl, make_run, metrics, read_json, reversal_records, send, start,
                                    finish, tiny_model, train_losses, wait_for)

EXACT = {"lora_dropout": 0.0, "eval_fraction": 0.0, "learning_rate": 1e-3}  # dropout masks depend on the layout


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp(), "qwen2")


def _runs(tmp_path: Path, model: Path, content: str, schema: str, records: int,
          variants: dict[str, dict]) -> dict[str, Path]:
    return {name: make_run(tmp_path / name, model, dataset_name="d.jsonl", content=content, schema=schema,
                           records=records, options=opts) for name, opts in variants.items()}


def _train_all(runs: dict[str, Path]) -> None:
    """Train side by side (each one torch thread): the suite runs on two cores."""
    procs = {name: start(run) for name, run in runs.items()}
    for name, proc in procs.items():
        assert finish(proc, 300) == 0, (runs[name] / "console.log").read_text()[-2000:]


@pytest.mark.parametrize("schema", ["prompt_completion", "messages"])
def test_padding_free_trains_exactly_like_padded(tmp_path: Path, qwen: Path, schema: str) -> None:
    records = reversal_records(64, seed=3) if schema == "prompt_completion" else chat_records(64, seed=3)
    base = {**EXACT, "max_steps": 20, "batch_size": 4, "save_every": 100}
    runs = _runs(tmp_path, qwen, jsonl(records), schema, 64,
                 {"padded": {**base, "batching": "padded"}, "flat": {**base, "batching": "padding_free"}})
    _train_all(runs)
    padded, flat = train_losses(runs["padded"]), train_losses(runs["flat"])
    assert sorted(padded) == list(range(1, 21)) and padded.keys() == flat.keys()
    assert max(abs(padded[s] - flat[s]) for s in padded) < 1e-4
    header = (runs["flat"] / "console.log").read_text()
    assert "batching: padding-free (set in the options)" in header
    assert "padding-free: " in header and "tokens computed instead of" in header


def test_gradient_checkpointing_changes_memory_not_losses(tmp_path: Path, qwen: Path) -> None:
    base = {**EXACT, "max_steps": 8, "batch_size": 4, "save_every": 100}
    runs = _runs(tmp_path, qwen, jsonl(reversal_records(40)), "prompt_completion", 40,
                 {"off": {**base, "gradient_checkpointing": False}, "on": {**base, "gradient_checkpointing": True}})
    _train_all(runs)
    off, on = train_losses(runs["off"]), train_losses(runs["on"])
    assert max(abs(off[s] - on[s]) for s in off) < 1e-5
    assert "gradient checkpointing: on (set in the options)" in (runs["on"] / "console.log").read_text()


def test_length_grouped_stop_and_resume_is_exact(tmp_path: Path, qwen: Path) -> None:
    opts = {**EXACT, "batching": "length_grouped", "max_steps": 16, "save_every": 4, "batch_size": 4}
    runs = _runs(tmp_path, qwen, jsonl(reversal_records(48, seed=4)), "prompt_completion", 48,
                 {"straight": opts, "stopped": opts})
    straight = start(runs["straight"])
    run = runs["stopped"]
    proc = start(run)
    wait_for(lambda: any(m.get("step", 0) >= 6 for m in metrics(run)), 180, "step 6", proc)
    send(proc, "stop")
    assert proc.wait(120) == 0
    assert read_json(run / "result.json")["outcome"] == "stopped"
    assert finish(start(run), 300) == 0
    assert finish(straight, 300) == 0
    resumed, reference = train_losses(run), train_losses(runs["straight"])
    assert sorted(resumed) == list(range(1, 17))
    assert max(abs(resumed[s] - reference[s]) for s in reference) < 1e-6


def test_length_grouped_sees_every_example_once_per_epoch() -> None:
    from daemon.trainer.batching import GroupedSampler
    from daemon.trainer.sequences import Encoded, SequenceDataset
    import numpy as np

    lengths = [3, 50, 7, 7, 120, 9, 1, 64, 33, 2] * 13
    data = SequenceDataset([Encoded(np.zeros(n, dtype=np.int32)) for n in lengths])
    sampler = GroupedSampler(8, data, seed=1)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(lengths)))
        assert order == list(sampler)  # the same epoch gives the same order (exact resume)
    sampler.set_epoch(0)
    assert list(sampler) != order  # another epoch, another order


def test_length_grouping_leaves_little_padding_on_alpaca(qwen: Path, realdata: Path) -> None:
    from tokenizers import Tokenizer

    from daemon.core.datasets import iter_examples

    tok = Tokenizer.from_file(str(qwen / "tokenizer.json"))
    lengths = [len(tok.encode(e["prompt"] + e["completion"]).ids) + 1
               for e in iter_examples(realdata / "alpaca_en_demo.json")]
    padded = padding_report(lengths, 8, 1024, "padded")
    grouped = padding_report(lengths, 8, 1024, "length_grouped")
    assert 1 - padded.useful / padded.padded > 0.4  # random batches: about half is padding (FINDINGS: 55%)
    assert grouped.padding_share < 0.05
    assert padding_report(lengths, 8, 1024, "padding_free").padding_share == 0


def test_check_reports_the_padding_the_default_batching_avoids(tmp_path: Path, qwen: Path, realdata: Path) -> None:
    (tmp_path / "overnight.toml").write_text(f'base_model = "{qwen}"\n', encoding="utf-8")
    out = overnight("check", str(realdata / "alpaca_en_demo.json"), str(realdata / "wiki_demo.txt"),
                    home=tmp_path).stdout
    line = next(x for x in out.splitlines() if "batching:" in x and "length-grouped" in x)
    grouped, padded = map(int, re.search(r"\((\d+)% padding instead of (\d+)%\)", line).groups())
    assert grouped < 5 and padded > 40 and "per epoch at batch 8, max_length 1024" in line
    assert "batching: text is cut into full blocks of max_length: no padding" in out


def test_check_compares_the_memory_estimate_with_the_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.client import checking
    from daemon.core.datasets import DatasetReport
    from daemon.core.options import resolve

    model = tmp_path / "qwen7b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(QWEN_7B), encoding="utf-8")
    report = DatasetReport(tmp_path / "d.jsonl", "jsonl", "alpaca", 10, {}, {"max": 2000})
    monkeypatch.setattr(checking, "gpu_free_bytes", lambda: 23 * 2**30)
    _, batches, memory = checking._plan_lines(
        report, resolve({"base_model": str(model), "quantization": "4bit"}, None), tmp_path, None, "sft")
    # a 7B's compute keeps the GPU busy at ~1K tokens: no recomputation, as many micro-batches as make 16K tokens
    assert "gradient checkpointing off: auto: without it a micro-batch of up to 1,215 tokens fits" in memory
    assert "batches: micro-batches of up to 1,152 tokens × grad_accum 15 (batch_tokens auto: 1,152 tokens fit " \
           "80% of the 23.0 GiB free on the GPU, accumulated to 17,280 a step)" == batches
    options = resolve({"base_model": str(model), "quantization": "4bit"}, {"batch_size": 8})
    _, batches, memory = checking._plan_lines(report, options, tmp_path, None, "sft")
    assert "gradient checkpointing on: auto: without it the estimate at batch 8 × 1024 tokens" in memory
    assert "batch_size is set, and keeps its meaning" in batches
    monkeypatch.setattr(checking, "gpu_free_bytes", lambda: None)
    assert checking._plan_lines(report, resolve({"base_model": str(model)}, None), tmp_path, None, "sft")[1:] == [
        None, None]


# ------------------------------------------------------------------------------------- quantisation

def test_4bit_run_of_the_demo_model_trains_after_its_step_0_snapshot(tmp_path: Path, tiny_model: Path) -> None:
    """The demo's Qwen2 has biases: bitsandbytes' CPU fast path, taken once by the step-0 snapshot (no grad), broke
    every training step after it ("a view of a leaf Variable ... in-place")."""
    pytest.importorskip("bitsandbytes")
    probes = jsonl([{"prompt": r["prompt"], "reference": r["completion"]} for r in reversal_records(2, seed=9)])
    run = make_run(tmp_path, tiny_model, dataset_name="d.jsonl", content=jsonl(reversal_records(40)),
                   schema="prompt_completion", records=40, probes=probes,
                   options={"quantization": "4bit", "max_steps": 3, "probe_every": 2})
    assert finish(start(run), 300) == 0, (run / "console.log").read_text()[-2000:]
    assert read_json(run / "result.json")["outcome"] == "completed"


def test_4bit_run_completes_and_its_adapter_loads_on_the_plain_base(tmp_path: Path, qwen: Path) -> None:
    pytest.importorskip("bitsandbytes")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = make_run(tmp_path, qwen, dataset_name="d.jsonl", content=jsonl(reversal_records(40)),
                   schema="prompt_completion", records=40, options={"quantization": "4bit", "max_steps": 4})
    assert finish(start(run), 300) == 0, (run / "console.log").read_text()[-2000:]
    log = (run / "console.log").read_text()
    assert "4-bit nf4, double quantisation" in log and "gemm_4bit" not in log
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(qwen), run / "adapter")
    ids = AutoTokenizer.from_pretrained(qwen)("reverse: cat dog\n", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_an_8bit_run_says_its_input_cast_once(tmp_path: Path, tiny_model: Path) -> None:
    """bitsandbytes' 8-bit matmul warns at every call of every layer (112 of a 3-step run's 141 console lines)."""
    pytest.importorskip("bitsandbytes")
    run = make_run(tmp_path, tiny_model, dataset_name="d.jsonl", content=jsonl(reversal_records(40)),
                   schema="prompt_completion", records=40, options={"quantization": "8bit", "max_steps": 3})
    assert finish(start(run), 300) == 0, (run / "console.log").read_text()[-2000:]
    assert (run / "console.log").read_text().count("MatMul8bitLt: inputs will be cast") == 1


# ------------------------------------------------------------------------------------- out of memory

def _oom_run(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, fail_at: dict[int, BaseException],
             **options: object) -> tuple[Path, str]:
    """Train in-process with an out-of-memory error raised once at each given step (a fault the CPU can't make)."""
    from daemon.trainer.objectives import sft
    from daemon.trainer.run import main

    probes = jsonl([{"prompt": r["prompt"], "reference": r["completion"]} for r in reversal_records(2, seed=9)])
    run = make_run(tmp_path, model, dataset_name="d.jsonl", content=jsonl(reversal_records(40)),
                   schema="prompt_completion", records=40, probes=probes,
                   options={"max_steps": 8, "save_every": 4, "batch_size": 4, "probe_every": 2, **options})
    pending = dict(fail_at)
    original = sft.OvernightTrainer.training_step

    def training_step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        error = pending.pop(self.state.global_step + 1, None)
        if error is not None:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sft.OvernightTrainer, "training_step", training_step)
    import io
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(run, read_stdin=False) == 0
    return run, out.getvalue()


def test_out_of_memory_turns_checkpointing_on_then_halves_the_micro_batch(
        tmp_path: Path, qwen: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from daemon.trainer import model, setup

    loads: list[int] = []
    monkeypatch.setattr(setup, "load_model", lambda *a, **k: loads.append(1) or model.load_model(*a, **k))
    run, log = _oom_run(tmp_path, qwen, monkeypatch, {2: torch.OutOfMemoryError("CUDA out of memory."),
                                                      6: RuntimeError("CUDA error: out of memory")},
                        lora_dropout=0.0, eval_fraction=0.0)
    assert ("out of memory: retrying from the start, turning gradient checkpointing on (the model stays "
            "loaded)") in log
    assert ("out of memory: retrying from step-4, batch_size 4 → 2 and grad_accum 1 → 2 "
            "(the effective batch stays 4) (the model stays loaded)") in log
    assert len(loads) == 1  # a 4-bit base would not be quantised again either
    assert read_json(run / "result.json")["plan"] == {"batch_tokens": 0, "batch_size": 2, "grad_accum": 2,
                                                      "gradient_checkpointing": True, "out_of_memory_retries": 2}
    steps = [m["step"] for m in metrics(run) if "loss" in m]
    assert steps == list(range(1, 9))  # the first attempt's step 1 is not there twice
    # the retry from the start began from the same initial adapter: the run trains like one that never failed
    straight = make_run(tmp_path / "straight", qwen, dataset_name="d.jsonl", content=jsonl(reversal_records(40)),
                        schema="prompt_completion", records=40,
                        options={"max_steps": 8, "save_every": 4, "batch_size": 4, "lora_dropout": 0.0,
                                 "eval_fraction": 0.0})
    assert finish(start(straight), 300) == 0
    retried, reference = train_losses(run), train_losses(straight)
    assert max(abs(retried[s] - reference[s]) for s in reference) < 1e-4
    snapshots = [(r["step"], r["probe"]) for r in map(json.loads, (run / "evolution.jsonl").read_text().splitlines())]
    assert len(snapshots) == len(set(snapshots)) and {s for s, _ in snapshots} == {0, 2, 4, 6, 8}
    assert read_json(run / "result.json")["outcome"] == "completed" and (run / "adapter").is_dir()


def test_a_plain_runtime_error_is_not_mistaken_for_out_of_memory(
        tmp_path: Path, qwen: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.trainer.objectives import sft
    from daemon.trainer.run import main

    run = make_run(tmp_path, qwen, dataset_name="d.jsonl", content=jsonl(reversal_records(20)),
                   schema="prompt_completion", records=20, options={"max_steps": 3})
    monkeypatch.setattr(sft.OvernightTrainer, "training_step",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    assert main(run, read_stdin=False) == 1
    assert read_json(run / "result.json")["reason"] == "RuntimeError: shape mismatch"


def test_the_ladder_keeps_the_effective_batch() -> None:
    opts = TrainOptions(base_model="m", batch_size=3, grad_accum=2, gradient_checkpointing=False)
    opts, why = next_rung(opts)
    assert opts.gradient_checkpointing is True and opts.batch_size == 3 and "checkpointing" in why
    opts, why = next_rung(opts)
    assert (opts.batch_size, opts.grad_accum) == (1, 6) and "effective batch stays 6" in why
    with pytest.raises(RunError, match="batch_size 1.*Fix:"):
        next_rung(opts)
    six, _ = next_rung(TrainOptions(base_model="m", batch_size=6, gradient_checkpointing=True))
    assert (six.batch_size, six.grad_accum) == (3, 2)


def test_out_of_memory_texts() -> None:
    import torch

    assert is_out_of_memory(torch.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))
    assert not is_out_of_memory(ValueError("out of memory"))


# ------------------------------------------------------------------------------------- preflight and options

QWEN_7B = {"vocab_size": 152064, "hidden_size": 3584, "num_hidden_layers": 28, "intermediate_size": 18944,
           "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False}
QWEN_05B = {"vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864,
            "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True}


def test_parameter_counts_match_the_published_models() -> None:
    for config, published in ((QWEN_7B, 7.62e9), (QWEN_05B, 0.494e9)):
        shape = Shape.from_config(config)
        assert shape is not None
        assert abs(shape.linear_params + shape.other_params - published) / published < 0.01


def test_auto_checkpointing_turns_on_only_when_the_run_would_not_fit() -> None:
    gib = 2**30
    kw = {"batch_size": 8, "seq_len": 1024, "lora_r": 16, "dtype_bytes": 2}
    on, why = checkpointing_decision("auto", Shape.from_config(QWEN_7B), 23 * gib, quantization="4bit", **kw)
    assert on and "more than 80% of the 23.0 GiB free" in why and "weights" in why
    off, why = checkpointing_decision("auto", Shape.from_config(QWEN_05B), 79 * gib, quantization="none",
                                      batch_size=2, seq_len=512, lora_r=16, dtype_bytes=2)
    assert not off and "fits within" in why
    assert checkpointing_decision("auto", None, None, quantization="none", **kw)[0] is False
    assert checkpointing_decision(True, None, None, quantization="none", **kw) == (True, "set in the options")
    # a 7B in 4 bits with checkpointing and Liger's fused loss fits a 24 GB card at batch 8 × 1024 (weights: 3.8 GB
    # of nf4 projections + 4.4 GB of fp32 embeddings and output layer after prepare_model_for_kbit_training)
    fits = estimate_memory(Shape.from_config(QWEN_7B), quantization="4bit", checkpointing=True, liger=True, **kw)
    assert fits.total < 0.8 * 23 * gib and 6.5 * gib < fits.weights < 8 * gib


@pytest.mark.parametrize("key,bad", [("quantization", "4-bit"), ("gradient_checkpointing", "yes"),
                                     ("batching", "packing"), ("attn_implementation", "flash"),
                                     ("lr_scheduler", "cosine_annealing"), ("warmup_ratio", 1.5),
                                     ("weight_decay", -0.1), ("max_grad_norm", -1), ("optim", "adam"),
                                     ("use_liger_kernel", "yes")])
def test_a_bad_scale_option_names_the_allowed_values_and_the_fix(key: str, bad: object) -> None:
    with pytest.raises(OptionsError) as e:
        check_value("s.toml", key, bad)
    text = str(e.value)
    assert f"option '{key}'" in text and ("allowed" in text or "expected" in text) and "Fix:" in text


def test_scheduler_and_optimizer_names_are_the_trainers() -> None:
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    assert set(LR_SCHEDULERS) <= {s.value for s in SchedulerType}
    assert set(OPTIMIZERS) <= {o.value for o in OptimizerNames}


def test_attention_choices_on_the_cpu() -> None:
    from daemon.trainer.model import Device, choose_attention

    cpu = Device("cpu", "test", False)
    assert choose_attention("auto", cpu) == ("sdpa", "auto: the CPU has no flash-attention")
    assert choose_attention("eager", cpu) == ("eager", "set in the options")
    for kernel in ("flash_attention_2", "flex_attention"):
        with pytest.raises(RunError, match="Fix: .*sdpa"):
            choose_attention(kernel, cpu)


@pytest.mark.parametrize("fix", ["space freed", "min_free_gb lowered"])
def test_a_full_disk_pauses_before_the_checkpoint_and_goes_on_once_freed(
        tmp_path: Path, qwen: Path, monkeypatch: pytest.MonkeyPatch, fix: str) -> None:
    """min_free_gb is live: the trainer reads it from the home's overnight.toml at each check, so an owner who lowers
    it lets the paused run go on by itself (config.json holds no copy of it to disagree with)."""
    import contextlib
    import io
    import shutil

    from daemon.trainer import diskspace
    from daemon.trainer.run import main

    run = make_run(tmp_path, qwen, dataset_name="d.jsonl", content=jsonl(reversal_records(20)),
                   schema="prompt_completion", records=20, options={"max_steps": 4, "save_every": 2,
                                                                     "min_free_gb": 0})  # a stale copy: ignored
    toml = tmp_path / "overnight.toml"  # the home of runs/test-d
    toml.write_text("min_free_gb = 5\n")
    real, calls = shutil.disk_usage, []

    def disk_usage(path):  # type: ignore[no-untyped-def]
        calls.append(path)
        usage = real(path)
        if fix == "min_free_gb lowered":
            if len(calls) == 4:
                toml.write_text("min_free_gb = 0.5\n")  # the owner lowers the threshold: the disk stays as it is
            return usage._replace(free=10**12 if len(calls) == 1 else 10**9)
        full = 2 <= len(calls) <= 4  # the second checkpoint finds the disk full for a few checks
        return usage._replace(free=10**9 if full else 10**12)

    monkeypatch.setattr(diskspace.shutil, "disk_usage", disk_usage)
    monkeypatch.setattr(diskspace.DiskSpaceCallback.__init__, "__defaults__", (0.01,))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(run, read_stdin=False) == 0
    log = out.getvalue()
    assert "paused at step 4 before saving: disk_low: only 1.00 GB free" in log, log
    assert "needs 5.00 GB (min_free_gb = 5 in overnight.toml" in log and "Fix: free space" in log
    assert "disk space is back" in log
    assert read_json(run / "result.json")["outcome"] == "completed" and (run / "checkpoints" / "step-4").is_dir()


def test_a_damaged_checkpoint_is_moved_aside_and_the_one_before_is_resumed(tmp_path: Path, qwen: Path) -> None:
    from daemon.trainer.checkpoints import damage

    run = make_run(tmp_path, qwen, dataset_name="d.jsonl", content=jsonl(reversal_records(20)),
                   schema="prompt_completion", records=20, options={"max_steps": 4, "save_every": 2})
    assert finish(start(run), 300) == 0
    config = json.loads((run / "config.json").read_text())
    config["options"]["max_steps"] = 6  # as if the run had been interrupted at step 4 of 6
    (run / "config.json").write_text(json.dumps(config))
    with open(run / "checkpoints" / "step-4" / "adapter_model.safetensors", "r+b") as f:
        f.truncate(100)
    assert damage(run / "checkpoints" / "step-4")
    step2 = run / "checkpoints" / "step-2"
    scheduler, state = (step2 / "scheduler.pt").read_bytes(), (step2 / "trainer_state.json").read_text()
    (step2 / "scheduler.pt").write_bytes(b"")
    problem = damage(step2)
    assert problem and problem.split(":")[0].endswith("Error")  # never an empty reason
    # the Trainer would resume without them, silently not exactly
    (step2 / "scheduler.pt").unlink()
    assert damage(step2) == "scheduler.pt is missing: the resume would not be exact"
    (step2 / "trainer_state.json").write_text("{}")  # JSON, but no trainer state: the Trainer fails on it
    assert damage(step2) == "trainer_state.json is not a trainer state (no global_step)"
    (step2 / "scheduler.pt").write_bytes(scheduler)
    (step2 / "trainer_state.json").write_text(state)
    assert finish(start(run), 300) == 0
    log = (run / "console.log").read_text()
    assert "checkpoint step-4 is damaged" in log and "moved aside to damaged-step-4, not deleted" in log
    assert "resuming from checkpoints/step-2" in log
    assert (run / "checkpoints" / "damaged-step-4" / "adapter_model.safetensors").exists()
    assert read_json(run / "result.json")["outcome"] == "completed" and read_json(run / "result.json")["step"] == 6
    # a step-N whose trainer state is gone is named and moved aside too (retention would have deleted it unsaid)
    import shutil

    from daemon.trainer.checkpoints import newest_loadable
    shutil.copytree(run / "checkpoints" / "step-6", run / "checkpoints" / "step-9")
    (run / "checkpoints" / "step-9" / "trainer_state.json").unlink()
    said: list[str] = []
    assert newest_loadable(run / "checkpoints", said.append) == run / "checkpoints" / "step-6"
    assert said == ["checkpoint step-9 is damaged (FileNotFoundError: [Errno 2] No such file or directory: "
                    f"'{run / 'checkpoints' / 'step-9' / 'trainer_state.json'}'): moved aside to damaged-step-9, "
                    "not deleted; trying the one before it"]


def test_a_run_folder_made_unwritable_fails_the_run_with_the_fix(tmp_path: Path, qwen: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """chattr +i on a run's checkpoints mid-run: the reason was a bare PermissionError."""
    from daemon.trainer import run as trainer

    run = make_run(tmp_path, qwen, dataset_name="d.jsonl", content=jsonl(reversal_records(20)),
                   schema="prompt_completion", records=20, options={"max_steps": 2})
    where = str(run / "checkpoints" / "checkpoint-2")

    def refused(*_args: object) -> None:
        raise PermissionError(1, "Operation not permitted", where)
    monkeypatch.setattr(trainer, "_train", refused)
    assert trainer.main(run, read_stdin=False) != 0
    reason = read_json(run / "result.json")["reason"]
    assert reason == (f"PermissionError: [Errno 1] Operation not permitted: '{where}'. Fix: make {where} writable "
                      f"for this user again, then overnight resume {run.name} (it goes on from its last checkpoint)")
