"""The trainer subprocess (`python -m daemon.trainer RUN_DIR`), driven the way the daemon drives it.

The slow tests train the embedded tiny model for a handful of steps; the rest check pieces in-process.
"""
from __future__ import annotations

import io
import json
import re
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest_trainer import (chat_records, finish, jsonl, make_run, metrics, read_json, reversal_records,
                                    send, start, text_lines, tiny_model, train, train_losses, wait_for)

STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] ")
METRIC_FIELDS = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "epoch", "time"}


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp(), "qwen2")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp(), "llama")


def console_lines(run: Path) -> list[str]:
    return (run / "console.log").read_text(encoding="utf-8").splitlines()


def assert_adapter_generates(run: Path, base: Path) -> None:
    """adapter/ loads onto its base model with PeftModel.from_pretrained and generates text."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run / "adapter")
    tok = AutoTokenizer.from_pretrained(base)
    ids = tok("reverse: cat dog\n", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert (run / "adapter" / "adapter_model.safetensors").exists()


# ------------------------------------------------------------------------------------- whole runs

def test_prompt_run_leaves_a_complete_run_folder(tmp_path: Path, qwen: Path) -> None:
    probes = jsonl([{"prompt": "reverse: cat dog sun moon\n", "reference": "moon sun dog cat"}])
    run = make_run(tmp_path, qwen, dataset_name="rev.jsonl", content=jsonl(reversal_records(60)),
                   schema="prompt_completion", records=60, probes=probes,
                   options={"max_steps": 8, "log_every": 2, "save_every": 3, "probe_every": 4,
                            "probe_max_new_tokens": 6})
    assert train(run) == 0

    result = read_json(run / "result.json")
    assert result["outcome"] == "completed" and result["step"] == 8 and result["exit_code"] == 0
    assert result["final_loss"] is not None and result["eval_loss"] is not None
    assert result["versions"]["torch"] and result["device"] == "cpu"

    lines = console_lines(run)
    assert all(STAMP.match(line) for line in lines), [l for l in lines if not STAMP.match(l)][:3]
    text = "\n".join(lines)
    for part in ("=== overnight trainer: run", f"model: {qwen}", "rev.jsonl (schema prompt_completion, 60 records)",
                 "device: cpu", "command: ", "versions: ", "step 8/8"):
        assert part in text, part
    assert "=== end: completed" in lines[-1] and "exit code 0" in lines[-1]

    records = metrics(run)
    train_records = [m for m in records if "loss" in m]
    assert [m["step"] for m in train_records] == [1, 2, 4, 6, 8]  # log_every 2, first and last steps too
    assert all(set(m) - {"eval_loss"} == METRIC_FIELDS for m in train_records)
    assert all(m["tokens_per_s"] > 0 and m["lr"] > 0 for m in train_records)
    evals = [m for m in records if "eval_loss" in m]
    # one record per logged step (SPEC): an eval step's record carries its eval_loss; step 3 logged no loss
    assert [m["step"] for m in records] == [1, 2, 3, 4, 6, 8]
    assert [(m["step"], "loss" in m) for m in evals] == [(3, False), (6, True), (8, True)]

    # checkpoints at 3, 6, 8: the newest two are kept, plus the best by eval loss
    steps = sorted(int(p.name[5:]) for p in (run / "checkpoints").iterdir())
    best = min(evals, key=lambda m: m["eval_loss"])["step"]
    assert steps == sorted({6, 8, best})
    assert result["best_checkpoint"] == f"step-{best}"
    assert all((run / "checkpoints" / f"step-{s}" / "optimizer.pt").exists() for s in steps)

    stats = read_json(run / "stats.json")
    assert stats["records"] == 60 and stats["schema"] == "prompt_completion"  # the daemon's part is kept
    assert stats["split"] == {"train": 54, "eval": 6, "probes": 1}  # the probe file's probe trains too
    assert set(stats["tokens"]) == {"min", "mean", "p50", "p95", "max"} and stats["truncated"] == 0
    assert read_json(run / "progress.json")["state"] == "completed"

    evolution = [json.loads(l) for l in (run / "evolution.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in evolution}) == [0, 4, 8]

    card = (run / "adapter" / "README.md").read_text()
    assert str(qwen) in card and "rev.jsonl" in card and "steps: 8" in card
    assert_adapter_generates(run, qwen)


def test_chat_run_trains_on_assistant_turns(tmp_path: Path, qwen: Path) -> None:
    run = make_run(tmp_path, qwen, dataset_name="chat.jsonl", content=jsonl(chat_records(30)),
                   schema="messages", records=30, options={"max_steps": 4, "eval_fraction": 0})
    assert train(run) == 0
    assert read_json(run / "result.json")["outcome"] == "completed"
    assert read_json(run / "stats.json")["split"] == {"train": 30, "eval": 0, "probes": 0}
    assert_adapter_generates(run, qwen)


def test_text_run_on_a_llama_model(tmp_path: Path, llama: Path) -> None:
    run = make_run(tmp_path, llama, dataset_name="notes.txt", content="\n".join(text_lines(40)) + "\n",
                   schema="plain_text", fmt="txt", records=40, options={"max_steps": 4, "max_length": 32})
    assert train(run) == 0
    result = read_json(run / "result.json")
    assert result["outcome"] == "completed", result["reason"]
    stats = read_json(run / "stats.json")
    assert stats["split"]["eval"] == 4 and stats["sequences"]["train"] > stats["split"]["train"] // 2
    assert stats["truncated"] == 0  # text is cut into blocks, never truncated
    assert "LlamaForCausalLM" in json.loads((llama / "config.json").read_text())["architectures"]
    assert_adapter_generates(run, llama)


def test_early_stopping_keeps_the_best_adapter(tmp_path: Path, qwen: Path) -> None:
    # a learning rate far too high makes the eval loss stop improving within a few evals
    run = make_run(tmp_path, qwen, dataset_name="rev.jsonl", content=jsonl(reversal_records(80, seed=5)),
                   schema="prompt_completion", records=80,
                   options={"max_steps": 30, "save_every": 2, "learning_rate": 0.9, "early_stopping_patience": 1})
    assert train(run) == 0
    result = read_json(run / "result.json")
    evals = [m for m in metrics(run) if "eval_loss" in m]
    best = min(evals, key=lambda m: m["eval_loss"])
    assert result["outcome"] == "completed" and result["step"] < 30, "did not stop early"
    assert "Early stopping" in result["reason"] and result["best_checkpoint"] == f"step-{best['step']}"
    assert best["step"] < result["step"] and abs(result["eval_loss"] - best["eval_loss"]) < 1e-6

    from safetensors.torch import load_file

    final = load_file(run / "adapter" / "adapter_model.safetensors")
    kept = load_file(run / "checkpoints" / result["best_checkpoint"] / "adapter_model.safetensors")
    assert final.keys() == kept.keys() and all((final[k] == kept[k]).all() for k in final)


# The trainer, with every evolution snapshot after step 0 running out of GPU memory (as a big model's final
# snapshot could): injected by patching the callback before the trainer's own entry point runs.
STARVED_SNAPSHOTS = """
import sys, torch
from daemon.trainer.snapshots import EvolutionCallback
generate = EvolutionCallback._generate
def starved(self, model, batch):
    if self.done_steps:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    return generate(self, model, batch)
EvolutionCallback._generate = starved
from daemon.trainer.__main__ import cli
sys.exit(cli(sys.argv[1:]))
"""


def test_final_snapshot_out_of_memory_still_saves_the_adapter(tmp_path: Path, qwen: Path) -> None:
    import os
    import subprocess
    import sys

    probes = jsonl([{"prompt": "reverse: cat dog sun moon\n", "reference": "moon sun dog cat"},
                    {"prompt": "reverse: sea tree red blue\n", "reference": "blue red tree sea"}])
    run = make_run(tmp_path, qwen, dataset_name="rev.jsonl", content=jsonl(reversal_records(40)),
                   schema="prompt_completion", records=40, probes=probes,
                   options={"max_steps": 4, "save_every": 100, "probe_every": 100, "probe_max_new_tokens": 4})
    with open(run / "console.log", "ab") as console:
        proc = subprocess.Popen([sys.executable, "-c", STARVED_SNAPSHOTS, str(run)], stdin=subprocess.PIPE,
                                stdout=console, stderr=subprocess.STDOUT, cwd=run,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert finish(proc) == 0
    result = read_json(run / "result.json")
    text = "\n".join(console_lines(run))
    assert result["outcome"] == "completed" and result["step"] == 4, text[-2000:]
    assert "evolution @ step 4: out of memory with 2 probes per batch; retrying with 1" in text
    assert "evolution @ step 4 skipped: out of memory even with one probe at a time" in text
    assert "CUDA out of memory: retrying" not in text  # the training batch was never halved for it
    assert {json.loads(line)["step"] for line in (run / "evolution.jsonl").read_text().splitlines()} == {0}
    assert_adapter_generates(run, qwen)


def test_missing_base_model_fails_with_the_path_and_the_fix(tmp_path: Path, qwen: Path) -> None:
    missing = tmp_path / "no-such-model"
    run = make_run(tmp_path, missing, dataset_name="rev.jsonl", content=jsonl(reversal_records(20)),
                   schema="prompt_completion", records=20)
    assert train(run) != 0
    result = read_json(run / "result.json")
    assert result["outcome"] == "failed" and str(missing) in result["reason"] and "Fix:" in result["reason"]
    assert "=== end: failed" in console_lines(run)[-1]
    assert not (run / "adapter").exists()


def test_pause_stop_and_exact_resume(tmp_path: Path, qwen: Path) -> None:
    """Paused: nothing moves. EOF on stdin: checkpoint + stopped. Resumed: the same losses as one straight run.

    The interrupted run also takes evolution snapshots and the straight one none: snapshots change nothing in
    training, and after the resume they go on with none taken twice or lost.
    """
    opts = {"max_steps": 24, "save_every": 5, "batch_size": 4, "learning_rate": 1e-3}
    content = jsonl(reversal_records(80, seed=5))
    straight = make_run(tmp_path / "a", qwen, dataset_name="rev.jsonl", content=content,
                        schema="prompt_completion", records=80, options=opts)
    probes = jsonl([{"prompt": r["prompt"], "reference": r["completion"]} for r in reversal_records(3, seed=9)])
    run = make_run(tmp_path / "b", qwen, dataset_name="rev.jsonl", content=content,
                   schema="prompt_completion", records=80, options={**opts, "probe_every": 4}, probes=probes)

    proc = start(run)
    wait_for(lambda: any(m.get("step", 0) >= 2 for m in metrics(run)), 120, "step 2", proc)
    send(proc, "pause")
    wait_for(lambda: (read_json(run / "progress.json") or {}).get("state") == "paused", 30, "paused", proc)
    frozen = read_json(run / "progress.json")["step"]
    n_records = len(metrics(run))
    time.sleep(1.5)
    assert read_json(run / "progress.json")["step"] == frozen and len(metrics(run)) == n_records
    assert proc.poll() is None
    assert proc.stdin is not None
    proc.stdin.close()  # EOF: the daemon went away → checkpoint and stop
    assert proc.wait(60) == 0
    stopped = read_json(run / "result.json")
    assert stopped["outcome"] == "stopped" and "stdin closed" in stopped["reason"]
    assert stopped["step"] == frozen < 24 and (run / "checkpoints" / f"step-{frozen}").is_dir()
    assert not (run / "adapter").exists()  # the adapter is written on completion only
    assert any(f"paused at step {frozen}" in line for line in console_lines(run))

    assert train(run) == 0  # resumes from the newest checkpoint
    assert any(f"resuming from checkpoints/step-{frozen}" in line for line in console_lines(run))
    assert not any("does not exist anymore" in line for line in console_lines(run))  # its best checkpoint is kept
    assert train(straight) == 0

    steps = [m["step"] for m in metrics(run) if "loss" in m]
    assert steps == list(range(1, 25))  # no step twice, none missing
    resumed, reference = train_losses(run), train_losses(straight)
    assert resumed.keys() == reference.keys()
    assert max(abs(resumed[s] - reference[s]) for s in reference) < 1e-6
    assert read_json(run / "result.json")["outcome"] == "completed"
    snapshots = [(r["step"], r["probe"]) for r in map(json.loads, (run / "evolution.jsonl").read_text().splitlines())]
    assert len(snapshots) == len(set(snapshots))  # none twice
    # the stop takes no snapshot of its own: the newest (on the interval of 4) is always younger than 4 steps
    expected = sorted({0, 24} | set(range(4, 25, 4)))
    assert sorted({step for step, _ in snapshots}) == expected and len(snapshots) == 3 * len(expected)


# ------------------------------------------------------------------------------------- pieces in-process

def test_prompt_and_chat_encoding_masks(qwen: Path) -> None:
    from transformers import AutoTokenizer

    from daemon.core.templating import choose
    from daemon.trainer.sequences import IGNORE, Encoder

    tok = AutoTokenizer.from_pretrained(qwen)
    fmt = choose("auto", qwen)
    assert fmt is not None and fmt.label == "the model's own" and fmt.markers
    enc = Encoder(tok, max_length=64, model_name="tiny", chat=fmt)
    item = enc.encode({"kind": "prompt", "prompt": "reverse: a b\n", "completion": "b a"})
    learned = [int(t) for t, lab in zip(item.input_ids, item.labels) if lab != IGNORE]
    assert tok.decode(learned) == "b a<|im_end|>"
    chat = {"kind": "chat", "tools": None, "messages": [{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "hello"}]}
    item = enc.encode(chat)
    assert tok.decode([int(t) for t, lab in zip(item.input_ids, item.labels) if lab != IGNORE]) == "hello<|im_end|>"
    # prompt_format chat: the prompt record is the same exchange
    as_chat = Encoder(tok, max_length=64, model_name="tiny", chat=fmt, prompt_chat=True)
    shaped = as_chat.shaped({"kind": "prompt", "prompt": "hi", "completion": "hello"})
    assert [int(x) for x in as_chat.encode(shaped).input_ids] == [int(x) for x in item.input_ids]

    # a template without {% generation %} markers: assistant turns found by rendering prefixes
    plain_fmt = replace(fmt, template=fmt.template.replace("{%- generation %}", "").replace("{%- endgeneration %}", ""))
    assert not plain_fmt.markers
    item2 = Encoder(tok, max_length=64, model_name="tiny", chat=plain_fmt).encode(chat)
    assert [int(x) for x in item2.input_ids] == [int(x) for x in item.input_ids]
    assert tok.decode([int(t) for t, lab in zip(item2.input_ids, item2.labels) if lab != IGNORE]).startswith(
        "hello<|im_end|>")


def test_chat_without_template_is_a_clear_error(qwen: Path) -> None:
    from transformers import AutoTokenizer

    from daemon.trainer.config import RunError
    from daemon.trainer.sequences import Encoder

    tok = AutoTokenizer.from_pretrained(qwen)
    with pytest.raises(RunError, match='no chat template.*chat_template = "chatml".*prompt/completion or text schema'):
        Encoder(tok, 64, "some/base-model").encode(
            {"kind": "chat", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})


def test_truncation_is_counted_and_empty_answers_dropped(qwen: Path) -> None:
    from transformers import AutoTokenizer

    from daemon.trainer.sequences import Encoder

    enc = Encoder(AutoTokenizer.from_pretrained(qwen), max_length=8, model_name="tiny")
    assert enc.encode({"kind": "prompt", "prompt": "a " * 40, "completion": "b"}) is None  # nothing left to learn
    kept = enc.encode({"kind": "prompt", "prompt": "a", "completion": "b " * 40})
    assert kept is not None and len(kept.input_ids) == 8
    assert enc.truncated == 2 and len(enc.lengths) == 2 and max(enc.lengths) > 8


def test_pad_collator() -> None:
    import numpy as np

    from daemon.trainer.sequences import PadCollator

    batch = PadCollator(pad_id=0)([{"input_ids": np.array([5, 6, 7]), "labels": np.array([-100, 6, 7])},
                                   {"input_ids": np.array([8]), "labels": None}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_checkpoint_rename_and_retention(tmp_path: Path) -> None:
    from daemon.core.rundir import newest_complete
    from daemon.trainer import checkpoints as ckpt

    for s in (2, 4, 6, 8):
        (tmp_path / f"checkpoint-{s}").mkdir()
        best = {"best_model_checkpoint": str(tmp_path / "checkpoint-2")} if s > 2 else {}
        (tmp_path / f"checkpoint-{s}" / "trainer_state.json").write_text(json.dumps(best))
        assert ckpt.finalize(tmp_path, s) == tmp_path / f"step-{s}"
    # the best checkpoint is recorded under the name it keeps: a resume finds it
    assert json.loads((tmp_path / "step-8" / "trainer_state.json").read_text()) == {
        "best_model_checkpoint": str(tmp_path / "step-2")}
    assert ckpt.apply_retention(tmp_path, keep=2, best_step=2) == [4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-6", "step-8"]
    assert newest_complete(tmp_path) == tmp_path / "step-8"
    (tmp_path / "checkpoint-10").mkdir()  # a save interrupted by a crash
    assert ckpt.discard_incomplete(tmp_path) == ["checkpoint-10"]
    assert newest_complete(tmp_path) == tmp_path / "step-8"


def test_truncate_jsonl_after(tmp_path: Path) -> None:
    from daemon.trainer.checkpoints import truncate_jsonl_after

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 7)) + '{"step": 7, "lo')
    assert truncate_jsonl_after(path, 4) == 3  # steps 5, 6 and the torn line
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_command_channel() -> None:
    from daemon.trainer.commands import Commands, _read_commands

    said: list[str] = []
    commands = Commands()
    _read_commands(io.StringIO("pause\n"), commands, said.append)
    assert commands.stop.is_set() and "stdin closed" in commands.stop_reason  # EOF after the pause
    assert not commands.paused.is_set()  # a stop wakes a paused run so it can save

    commands = Commands()
    _read_commands(io.StringIO("bogus\nstop\nresume\n"), commands, said.append)
    assert commands.stop_reason == "stop requested"
    assert any("unknown command 'bogus'" in s for s in said)


def test_nonfinite_loss_stops_without_saving(tmp_path: Path) -> None:
    from daemon.trainer.callbacks import CommandCallback, Progress, RunStatus
    from daemon.trainer.commands import Commands

    status = RunStatus()
    cb = CommandCallback(Commands(), Progress(tmp_path / "progress.json", "cpu", "cpu"), status, lambda: True,
                         lambda _m: None)
    control = SimpleNamespace(should_log=False, should_save=True, should_evaluate=False,
                              should_training_stop=False)
    state: Any = SimpleNamespace(global_step=5, max_steps=10, epoch=0.5)
    cb.on_step_end(None, state, control)
    assert control.should_training_stop and not control.should_save and status.nonfinite_step == 5


def test_a_pause_sent_while_the_model_loads_holds_before_the_first_step(tmp_path: Path, qwen: Path) -> None:
    run = make_run(tmp_path / "p", qwen, dataset_name="rev.jsonl", content=jsonl(reversal_records(40, seed=5)),
                   schema="prompt_completion", records=40, options={"max_steps": 4, "batch_size": 4})
    proc = start(run)
    send(proc, "pause")  # before the trainer has read its data or loaded the model
    wait_for(lambda: (read_json(run / "progress.json") or {}).get("state") == "paused", 120, "paused", proc)
    time.sleep(1.0)
    assert not metrics(run) and read_json(run / "progress.json")["step"] == 0  # not one step taken
    assert any("paused at step 0" in line for line in console_lines(run))
    send(proc, "resume")
    assert finish(proc) == 0 and read_json(run / "result.json")["outcome"] == "completed"
