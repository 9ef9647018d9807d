"""Preference training (DPO, KTO) on the tiny model: pairs encoded as SFT encodes its examples, and drops trained
through the real daemon until the model prefers the chosen answers (issue 24)."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from tests.conftest import overnight
from tests.conftest_trainer import (jsonl, make_run, metrics, reversal_records, start, train, train_losses,
                                    wait_for)

# the rejected answers use words no prompt holds: a preference the tiny model can learn in a few steps
OTHER = "stone cloud paper glass chair table lamp door wall road hill rock".split()
FAST = ("max_steps = 24\nbatch_size = 8\nmax_length = 64\nlog_every = 1\nsave_every = 6\nlearning_rate = 5e-3\n"
        "probe_count = 20\nprobe_every = 6\nprobe_max_new_tokens = 4\neval_fraction = 0.1\nlora_dropout = 0.0\n")


def pairs(n: int, seed: int = 3) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"prompt": r["prompt"], "chosen": r["completion"], "rejected": " ".join(rng.sample(OTHER, 4))}
            for r in reversal_records(n, seed)]


def judged(n: int, seed: int = 3) -> list[dict[str, object]]:
    return [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 else p["rejected"], "label": bool(i % 2)}
            for i, p in enumerate(pairs(n, seed))]


def _drop(home: Path, stem: str, records: list[dict], sidecar: str) -> Path:
    (home / "inbox" / f"{stem}.toml").write_text(sidecar)
    (home / "inbox" / f"{stem}.jsonl").write_text(jsonl(records))
    overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=900, check=True)
    runs = json.loads(overnight("runs", "--json", home=home, check=True).stdout)
    run = next(r for r in runs if r["id"].startswith(stem))
    assert run["state"] == "completed", (Path(run["run_dir"]) / "console.log").read_text()[-3000:]
    return Path(run["run_dir"])


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _preferred(run: Path) -> dict[int, float]:
    """Per snapshot step: the share of probe pairs whose chosen answer the model prefers."""
    by_step: dict[int, list[bool]] = {}
    for r in _records(run / "evolution.jsonl"):
        by_step.setdefault(r["step"], []).append(r["prefers"])
    return {step: sum(v) / len(v) for step, v in sorted(by_step.items())}


# ------------------------------------------------------------------------------------------ encoding
@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_a_raw_pair_has_the_models_own_start_and_one_eos_per_answer(tokenizer) -> None:
    from daemon.core.datasets import ExampleKind
    from daemon.trainer.objectives.preference import PreferenceEncoder

    enc = PreferenceEncoder(tokenizer, 64, "tiny")
    item = enc.encode(0, {"kind": ExampleKind.PAIR, "prompt": "reverse: a b\n", "chosen": "b a", "rejected": "a b"})
    assert item["prompt_ids"] == tokenizer("reverse: a b\n")["input_ids"]
    eos = tokenizer.eos_token_id
    for side, text in (("chosen_ids", "b a"), ("rejected_ids", "a b")):
        assert item[side] == tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
        assert (item["prompt_ids"] + item[side]).count(eos) == 1


def test_a_chat_pair_is_the_template_s_text_cut_at_the_assistants_cue(tokenizer) -> None:
    from daemon.core.datasets import ExampleKind
    from daemon.core.templating import ChatFormat
    from daemon.core.datasets import as_chat
    from daemon.trainer.objectives.preference import PreferenceEncoder

    chat = ChatFormat(tokenizer.chat_template, "the model's own", "test")
    enc = PreferenceEncoder(tokenizer, 128, "tiny", chat, prompt_chat=True)
    example = enc.shaped({"kind": ExampleKind.PAIR, "prompt": "reverse: a b", "chosen": "b a", "rejected": "a b"})
    assert example == as_chat(example) and example["chosen"] == [{"role": "assistant", "content": "b a"}]
    item = enc.encode(0, example)
    prompt = tokenizer.decode(item["prompt_ids"])
    assert prompt == chat.prompt(example["messages"])  # the prompt ends with the assistant's cue
    for side, text in (("chosen_ids", "b a"), ("rejected_ids", "a b")):
        whole = tokenizer.decode(item["prompt_ids"] + item[side])
        full, _ = chat.render([*example["messages"], {"role": "assistant", "content": text}])
        assert full.startswith(whole) and whole.endswith(text + "<|im_end|>")  # the answer and one end of turn
        assert whole.count("<|im_end|>") == 2 and whole.count("<|im_start|>") == 2  # the user's turn and this one


@pytest.mark.e2e
@pytest.mark.parametrize("schema, records", [("preference", pairs(80)), ("kto", judged(80))])
def test_a_stopped_preference_run_resumes_exactly(tmp_path: Path, tiny_model: Path, schema: str,
                                                 records: list[dict]) -> None:
    """Stopped (EOF on stdin: checkpoint and exit) and resumed: the same losses, step by step, as one straight run —
    TRL's trainers resume like the stock one, the reference adapter included."""
    opts = {"max_steps": 12, "save_every": 3, "batch_size": 4, "learning_rate": 5e-3, "eval_fraction": 0}
    runs = [make_run(tmp_path / name, tiny_model, dataset_name="p.jsonl", content=jsonl(records), schema=schema,
                     records=len(records), options=opts) for name in ("straight", "stopped")]
    proc = start(runs[1])
    wait_for(lambda: any(m.get("step", 0) >= 4 for m in metrics(runs[1])), 300, "step 4", proc)
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(120) == 0
    assert json.loads((runs[1] / "result.json").read_text())["outcome"] == "stopped"
    assert train(runs[1], 300) == 0 and train(runs[0], 300) == 0
    resumed, straight = train_losses(runs[1]), train_losses(runs[0])
    assert sorted(resumed) == list(range(1, 13)) and resumed.keys() == straight.keys()
    assert max(abs(resumed[s] - straight[s]) for s in straight) < 1e-6


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["qlora", "torchrun"])
def test_dpo_trains_under_qlora_and_under_torchrun(tmp_path: Path, tiny_model: Path, how: str) -> None:
    import os
    import subprocess

    from daemon.core.launch import trainer_command

    opts = {"max_steps": 6, "save_every": 3, "batch_size": 4, "eval_fraction": 0,
            **({"quantization": "4bit"} if how == "qlora" else {})}
    run = make_run(tmp_path, tiny_model, dataset_name="p.jsonl", content=jsonl(pairs(80)), schema="preference",
                   records=80, options=opts)
    nproc = 2 if how == "torchrun" else 1
    with open(run / "console.log", "ab") as console:
        proc = subprocess.Popen(trainer_command(run, nproc, {"nproc_per_node": nproc} if nproc > 1 else None),
                                stdin=subprocess.PIPE, stdout=console, stderr=subprocess.STDOUT, cwd=run,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.wait(600) == 0, (run / "console.log").read_text()[-3000:]
    text = (run / "console.log").read_text()
    assert ("4-bit nf4" in text) if how == "qlora" else ("torchrun: 2 process(es)" in text)
    losses = train_losses(run)
    assert sorted(losses) == list(range(1, 7)) and losses[6] < losses[1]
    assert (run / "adapter" / "adapter_model.safetensors").exists()


@pytest.mark.e2e
def test_out_of_memory_in_a_dpo_step_climbs_the_ladder_and_the_run_completes(
        tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same ladder as SFT (checkpointing on, then half the micro-batch, the effective batch kept): the
    preference Trainer is built again from the run's pieces, its reference adapter with it."""
    import contextlib
    import io

    import torch

    from daemon.trainer.objectives import dpo
    from daemon.trainer.run import main

    run = make_run(tmp_path, tiny_model, dataset_name="p.jsonl", content=jsonl(pairs(80)), schema="preference",
                   records=80, options={"max_steps": 8, "save_every": 4, "batch_size": 4, "eval_fraction": 0})
    pending = {2: torch.OutOfMemoryError("CUDA out of memory."), 6: RuntimeError("CUDA error: out of memory")}
    original = dpo.PreferenceTrainer.training_step

    def training_step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        error = pending.pop(self.state.global_step + 1, None)
        if error is not None:
            raise error
        return original(self, *args, **kwargs)

    monkeypatch.setattr(dpo.PreferenceTrainer, "training_step", training_step)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(run, read_stdin=False) == 0
    log = out.getvalue()
    assert "out of memory: retrying from the start, turning gradient checkpointing on" in log
    assert "batch_size 4 → 2 and grad_accum 1 → 2 (the effective batch stays 4)" in log
    assert sorted(train_losses(run)) == list(range(1, 9))
    assert json.loads((run / "result.json").read_text())["outcome"] == "completed"


# ------------------------------------------------------------------------------------------ through the daemon
@pytest.mark.e2e
def test_a_dpo_drop_learns_to_prefer_the_chosen_answers(home: Path, tiny_model: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    run = _drop(home, "prefs", pairs(200), FAST)
    console = (run / "console.log").read_text()
    assert "objective: dpo (auto: the records are preference pairs" in console
    preferred = _preferred(run)
    assert list(preferred)[0] == 0 and list(preferred)[-1] == 24
    assert preferred[0] < 0.9 <= preferred[24], preferred  # held-out probe pairs: the model learned the preference
    train = [r for r in _records(run / "metrics.jsonl") if "loss" in r]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= train[-1].keys()
    assert train[-1]["rewards/margins"] > 0
    assert not (run / "adapter" / "ref").exists() and (run / "adapter" / "adapter_model.safetensors").exists()
    report = json.loads(overnight("evolution", run.name, "--json", home=home, check=True).stdout)
    assert report["learned"] >= 18, report["summary"]
    # registered and exported like any adapter
    assert [m["version"] for m in json.loads(overnight("models", "--json", home=home, check=True).stdout)] == [1]
    overnight("export", run.name, str(home / "out"), home=home, check=True)
    assert (home / "out" / "adapter_model.safetensors").exists() and not (home / "out" / "ref").exists()


@pytest.mark.e2e
def test_a_loss_type_sweep_is_ranked_by_reward_accuracy_not_by_its_losses(home: Path,
                                                                                       tiny_model: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    sidecar = (FAST.replace("max_steps = 24", "max_steps = 6").replace("probe_count = 20", "probe_count = 0")
               + 'loss_type = ["sigmoid", "exo_pair"]\n')  # EXO: TRL needs its ε
    (home / "inbox" / "sweep.toml").write_text(sidecar + 'select = "best"\n')
    (home / "inbox" / "sweep.jsonl").write_text(jsonl(pairs(120)))
    # ranked by eval loss, the best of two loss types would be the one whose loss reads smallest: refused
    said = overnight("check", str(home / "inbox" / "sweep.jsonl"), home=home).stdout
    assert 'select = "best" ranks by eval_loss, and the loss types of this sweep measure' in said, said
    assert 'Fix: rank them by select_metric = "reward_accuracy"' in said, said
    # reward accuracy needs DPO's eval of pairs: refused for KTO's labelled completions and without an eval split
    by_accuracy = 'select = "best"\nselect_metric = "reward_accuracy"\n'
    (home / "kto.toml").write_text(FAST + by_accuracy)
    (home / "kto.jsonl").write_text(jsonl(judged(20)))
    said = overnight("check", str(home / "kto.jsonl"), home=home).stdout
    assert 'select_metric = "reward_accuracy" (set in kto.toml) ranks by' in said and "objective kto" in said, said
    (home / "kto.toml").write_text(sidecar.replace("eval_fraction = 0.1", "eval_fraction = 0") + by_accuracy)
    (home / "kto.jsonl").write_text(jsonl(pairs(20)))
    said = overnight("check", str(home / "kto.jsonl"), home=home).stdout
    assert "eval_fraction = 0 holds no pairs out" in said and "Fix: set eval_fraction = 0.1" in said, said

    (home / "inbox" / "sweep.toml").write_text(sidecar + by_accuracy)
    overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=900, check=True)
    runs = json.loads(overnight("runs", "--json", home=home, check=True).stdout)
    assert sorted("loss_exo_pair" in r["id"] for r in runs) == [False, True], [r["id"] for r in runs]
    assert {r["state"] for r in runs} == {"completed"} and len({r["group_id"] for r in runs}) == 1
    accuracy = {r["id"]: json.loads((Path(r["run_dir"]) / "eval_report.json").read_text())["preference"]
                ["reward_accuracy"] for r in runs}
    for r in runs:  # the accuracy of the last eval, the one the eval loss comes from
        last = [m for m in _records(Path(r["run_dir"]) / "metrics.jsonl") if "eval_loss" in m][-1]
        assert accuracy[r["id"]] == round(last["eval_rewards/accuracies"], 6) and last["eval_loss"] == r["eval_loss"]
    compared = overnight("compare", runs[0]["group_id"], home=home, check=True).stdout
    assert "ranked by eval reward accuracy (best first)" in compared and "ACCURACY" in compared, compared
    assert "note: these runs differ in loss_type" not in compared, compared
    [row] = [line for line in compared.splitlines() if line.startswith("1 ★")]
    best = max(accuracy.values())
    assert f"{best:.3f}" in row, (compared, accuracy)
    active = [m for m in json.loads(overnight("models", "--json", home=home, check=True).stdout) if m["active"]]
    assert [m["metrics"]["report"]["reward_accuracy"] for m in active] == [best], active


def test_an_evals_reward_accuracy_is_the_share_of_its_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRL averages the batches' means: 5 pairs in batches of 4 and 1, 2 and 0 preferred, read 0.25, not 0.4."""
    from types import SimpleNamespace

    from trl import DPOTrainer

    from daemon.trainer.objectives.dpo import PreferenceTrainer

    logged: list[dict] = []
    monkeypatch.setattr(DPOTrainer, "log", lambda self, logs, start_time=None: logged.append(
        {k: sum(v) / len(v) for k, v in self._metrics["eval"].items()}))
    trainer = PreferenceTrainer.__new__(PreferenceTrainer)
    trainer.model = SimpleNamespace(training=False)
    trainer._metrics = {"eval": {"rewards/accuracies": [0.5, 0.0], "rewards/margins": [1.0, 3.0],
                                 "num_tokens": [123]}}
    trainer._eval_pairs = (4, 1)
    trainer.log({})
    assert logged == [{"rewards/accuracies": 0.4, "rewards/margins": 1.4, "num_tokens": 123}]
    assert trainer._eval_pairs == ()


@pytest.mark.e2e
@pytest.mark.parametrize("stem, records", [("dpo", pairs(40)), ("kto", judged(40))])
def test_a_template_that_adds_tokens_trains_preferences(home: Path, tiny_model: Path, stem: str,
                                                        records: list[dict]) -> None:
    """Gemma 3's turn tokens are new to the tiny model: their rows train (peft's trainable tokens on the tied head),
    and TRL's fused log-prob head reads that head as it reads a Linear."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    fast = FAST.replace("max_steps = 24", "max_steps = 4").replace("probe_count = 20", "probe_count = 0")
    run = _drop(home, stem, records, fast + 'chat_template = "gemma3"\n')
    console = (run / "console.log").read_text()
    assert "added the special tokens <start_of_turn>, <end_of_turn> the base model lacks" in console, console[-2000:]


@pytest.mark.e2e
def test_dpo_on_top_of_an_sft_adapter_starts_from_it_and_measures_against_it(home: Path, tiny_model: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    sft = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in pairs(60, seed=5)]
    _drop(home, "sft", sft, FAST.replace("max_steps = 24", "max_steps = 12").replace("probe_count = 20", "probe_count = 0"))
    run = _drop(home, "dpo", pairs(80), FAST.replace("max_steps = 24", "max_steps = 6") + 'init_adapter = "sft"\n')
    assert json.loads((run / "config.json").read_text())["init_adapter"]["parent"] == "sft:1"
    first = next(r for r in _records(run / "metrics.jsonl") if "loss" in r)
    # at step 1 the policy is the parent and so is the reference: no margin yet, the loss is exactly log 2
    # (a reference that were the base model would put the parent's own preferences into the first margin)
    assert first["step"] == 1 and first["rewards/margins"] == 0 and math.isclose(first["loss"], math.log(2),
                                                                                   abs_tol=1e-4)


@pytest.mark.e2e
def test_a_kto_drop_trains_on_thumbs_up_and_down(home: Path, tiny_model: Path) -> None:
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    # beta 0.5: KTO's reward moves slower than DPO's with the tiny model; this reaches the preference in 24 steps
    records = judged(200)
    run = _drop(home, "thumbs", records, FAST.replace("probe_count = 20", "probe_count = 6").replace(
        "probe_every = 6", "probe_every = 24") + "beta = 0.5\n")
    assert "objective: kto (auto: the records are labelled completions" in (run / "console.log").read_text()
    # the objective "auto" chose, where a script reads it: stats.json and the adapter's card
    assert json.loads((run / "stats.json").read_text())["objective"] == "kto"
    assert "| objective | kto |" in (run / "adapter" / "README.md").read_text()
    # the probes held out are answers to learn: a completion labelled false is no probe (it trains)
    wanted = {r["completion"] for r in records if r["label"]}
    references = {r["reference"].strip() for r in _records(run / "evolution.jsonl")}
    assert references and references <= wanted, references - wanted
    evals = [r for r in _records(run / "metrics.jsonl") if "eval_loss" in r]
    assert {"eval_kl", "eval_rewards/chosen", "eval_rewards/rejected"} <= evals[-1].keys()
    # the desirable answers' reward rises above the undesirable ones'
    assert evals[-1]["eval_rewards/chosen"] > evals[-1]["eval_rewards/rejected"] + 0.1, evals[-1]
    # and on pairs it never saw, the adapter prefers the good answer where the base model did not always
    unseen = pairs(20, seed=11)
    before, after = preference_accuracy(tiny_model, None, unseen), preference_accuracy(tiny_model, run / "adapter", unseen)
    assert before < 0.9 <= after, (before, after)


def preference_accuracy(model_dir: Path, adapter: Path | None, items: list[dict[str, str]]) -> float:
    """The share of pairs whose chosen answer the model (with `adapter`) finds likelier than the rejected one, both
    laid out as the run lays them out (the model's chat template, prompt as a user turn)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()

    def logp(prompt: str, answer: str) -> float:
        messages = [{"role": "user", "content": prompt}]
        head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
        ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"]
        n = len(tokenizer(head, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logits = model(ids).logits[0, n - 1:-1]
        return float(torch.log_softmax(logits.float(), -1).gather(1, ids[0, n:, None]).sum())

    wins = [logp(p["prompt"], p["chosen"]) > logp(p["prompt"], p["rejected"]) for p in items]
    return sum(wins) / len(wins)
