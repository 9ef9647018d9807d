"""Evolution snapshots: the analysis users read (`overnight evolution`), the callback that records them during
training, and the demo task the tiny model learns."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

import pytest

from daemon.client.demodata import DEMO_OPTIONS, write_demo_files
from daemon.core.evolution import (analyze, format_report, is_exact, levenshtein, load_records, resolve_probe_every,
                              similarity)

REPO = Path(__file__).resolve().parents[1]


# ============================================================================ analysis (no torch)

def rec(step: int, probe: int, generation: str, reference: str = "river stone apple", **kw: Any) -> dict[str, Any]:
    """One evolution record as the trainer writes it (exact and similarity computed as the trainer does)."""
    return {"step": step, "probe": probe, "prompt": f"reverse: probe {probe}", "reference": reference,
            "generation": generation, "loss": kw.get("loss", 1.0),
            "exact": kw.get("exact", is_exact(generation, reference)),
            "similarity": kw.get("similarity", similarity(generation, reference)), "time": "2025-01-01T00:00:00"}


def test_similarity_is_normalised_edit_distance() -> None:
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0
    assert similarity("abc", "abc") == 1.0
    assert similarity("", "abcd") == 0.0
    assert similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert similarity("  river   stone ", "river stone") == 1.0  # whitespace is normalised
    assert is_exact(" river\n stone ", "river stone") and not is_exact("River stone", "river stone")
    long_a, long_b = "a" * 1500, "a" * 1400 + "b" * 100
    assert 0.9 < similarity(long_a, long_b) < 1.0  # long texts: difflib's ratio, still 0..1


def test_a_thinking_models_reasoning_is_not_its_answer() -> None:
    """Qwen3 and DeepSeek-R1 write "<think>…</think>" before the answer (empty with thinking off, opened by the prompt
    itself in thinking mode): the answer after it is what is scored; a reference that thinks too is compared whole."""
    assert is_exact("<think>\n\n</think>\n\nTeal.", "Teal.") and is_exact("\n\n</think>\n\nTeal.", "Teal.")
    assert is_exact("<think>it is a colour, so: teal</think> Teal.", "Teal.")
    assert similarity("<think>\n\n</think>\n\nTeal.", "Teal.") == 1.0
    assert not is_exact("<think>still thinking about Teal.", "Teal.")  # cut short before any answer
    assert not is_exact("<think></think>Teal.", "<think>why</think>Teal.")


def test_learned_forgotten_relearned_events() -> None:
    ref = "river stone apple"
    gens = ["apple", "river stone apple", "river stone apple", "river apple", "river stone apple"]
    report = analyze([rec(s * 10, 0, g, ref) for s, g in enumerate(gens)])
    p = report.probes[0]
    assert p.events == [("learned", 10), ("forgotten", 30), ("learned", 40)]
    assert p.learned_at == 10 and p.forgotten_at == 30 and p.learned_now and p.status == "relearned"
    # answers compressed: only where the generation changed, plus the latest
    assert [a.step for a in p.answers] == [0, 10, 30, 40]
    assert report.snapshots == [0, 10, 20, 30, 40]
    assert report.summary.startswith("1/1 learned, 1 relearned")


def test_a_preference_probe_is_learned_while_the_model_prefers_the_chosen_answer() -> None:
    # the same generation at every snapshot: only the margin (log p(chosen) - log p(rejected)) moves
    margins = [-0.5, 1.2, 3.0, -0.1, 2.0]
    report = analyze([{**rec(s * 10, 0, "sma"), "margin": m, "prefers": m > 0} for s, m in enumerate(margins)])
    p = report.probes[0]
    assert p.events == [("learned", 10), ("forgotten", 30), ("learned", 40)] and p.status == "relearned"
    assert [a.step for a in p.answers] == [0, 10, 20, 30, 40]  # every snapshot: the margin's whole history
    assert "margin -0.50" in format_report(report) and "margin +3.00" in format_report(report)


def test_never_learned_and_learned_at_step_zero() -> None:
    records = []
    for step in (0, 50, 100):
        records.append(rec(step, 0, "nothing like it"))
        records.append(rec(step, 1, "river stone apple"))
    report = analyze(records)
    never, known = report.probes
    assert never.events == [] and never.learned_at is None and never.status == "not learned"
    assert [a.step for a in never.answers] == [0, 100]  # unchanged answers collapse to the first and the latest
    assert known.learned_at == 0 and known.events == [("learned", 0)] and known.forgotten_at is None
    assert report.learned == 1 and report.total == 2


def test_forgotten_probe_in_summary_and_threshold() -> None:
    records = [rec(0, 0, "x"), rec(0, 1, "x"), rec(120, 0, "river stone apple"), rec(120, 1, "river stone apples"),
               rec(240, 0, "river"), rec(240, 1, "river stone apples")]
    report = analyze(records)  # "apples" is within 0.9 similarity: learned without being exact
    assert report.probes[1].learned_at == 120 and report.probes[1].learned_now
    assert report.probes[0].status == "forgotten" and report.probes[0].forgotten_at == 240
    assert report.summary == "1/2 learned, 1 forgotten at step 240; 3 snapshots, latest step 240"
    strict = analyze(records, threshold=0.99)
    assert strict.probes[1].learned_at is None


def test_an_early_stopped_adapter_is_judged_on_its_own_step(tmp_path: Path) -> None:
    """Early stopping kept step 120's weights: the step-240 snapshot asked weights that were thrown away, and
    called forgotten a probe the delivered adapter knows (`overnight evolution`, compare's PROBES)."""
    from daemon.core.evolution import run_report

    records = [rec(0, 0, "x"), rec(120, 0, "river stone apple"), rec(240, 0, "river")]
    (tmp_path / "result.json").write_text(json.dumps({"outcome": "completed", "adapter_step": 120}))
    report = run_report(tmp_path, records)
    assert report.probes[0].status == "learned" and report.learned == 1 and report.snapshots == [0, 120]
    assert report.summary == ("1/1 learned, 2 snapshots, latest step 120; the adapter holds step 120 (early "
                              "stopping): 1 later snapshot of weights not kept left out")


def test_load_records_tolerates_a_truncated_last_line(tmp_path: Path) -> None:
    f = tmp_path / "evolution.jsonl"
    lines = [json.dumps(rec(0, 0, "a")), json.dumps(rec(0, 1, "b"))]
    f.write_text("\n".join(lines) + "\n" + lines[0][:25], encoding="utf-8")  # a write in progress
    assert [r["probe"] for r in load_records(f)] == [0, 1]
    assert load_records(tmp_path / "missing.jsonl") == []


def test_report_text_and_json() -> None:
    records = [rec(0, 0, "apple"), rec(60, 0, "river stone apple"), rec(0, 1, "x\ny", reference="a"),
               rec(60, 1, "x\ny", reference="a")]
    report = analyze(records)
    text = format_report(report, width=80)
    assert "probe 0  LEARNED  (learned at step 60)" in text
    assert "probe 1  NOT LEARNED" in text
    assert "reference: river stone apple" in text
    assert '"river stone apple"' in text and "exact" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert text.rstrip().endswith(report.summary)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["probes"][0]["events"] == [{"event": "learned", "step": 60}]
    assert data["probes"][0]["status"] == "learned" and data["learned"] == 1 and data["total"] == 2
    assert format_report(analyze([])).startswith("No evolution snapshots yet")


def test_auto_interval() -> None:
    assert resolve_probe_every(25, 1000) == (25, None)  # an explicit interval is kept exactly
    every, budget = resolve_probe_every(0, 1000)
    assert every == 50 and budget is not None and budget < 0.05


# ============================================================================ demo task files (no torch)

def test_demo_files(tmp_path: Path) -> None:
    paths = write_demo_files(tmp_path, n_train=300)
    assert [p.name for p in paths] == ["reverse.jsonl", "reverse.probes.jsonl", "reverse.toml"]
    train = [json.loads(line) for line in paths[0].read_text().splitlines()]
    probes = [json.loads(line) for line in paths[1].read_text().splitlines()]
    options = tomllib.loads(paths[2].read_text())
    assert len(train) == 300 and len(probes) == 8
    assert {p["prompt"] for p in probes}.isdisjoint(t["prompt"] for t in train)  # probes are never trained on
    assert all(p["reference"].strip() == " ".join(reversed(p["prompt"].split(":", 1)[1].split())) for p in probes)
    assert "base_model" not in options and options == DEMO_OPTIONS
    from daemon.core.options import validate_table
    validate_table(paths[2], options, sidecar=True)  # every key is a real option with a valid value
    assert write_demo_files(tmp_path / "again", n_train=300)[0].read_text() == paths[0].read_text()
    from daemon.core.probes import load_probe_file
    assert len(load_probe_file(paths[1])) == 8


# ============================================================================ the callback (torch, tiny model)

@pytest.fixture(scope="module")
def lm(tiny_model: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)


def demo_probes(tmp_path: Path) -> list[dict[str, Any]]:
    from daemon.core.probes import load_probe_file
    return load_probe_file(write_demo_files(tmp_path / "demo", n_train=50)[1])


def states(steps: range | list[int]) -> Any:
    from transformers import TrainerState
    for step in steps:
        yield TrainerState(global_step=step)


def drive(cb: Any, model: Any, begin: int, end: int) -> None:
    """Call the hooks in the order the Trainer does, for a (resumed) run from step `begin` to its end at `end`."""
    from transformers import TrainerControl, TrainingArguments
    from transformers import TrainerState
    args, control = TrainingArguments(output_dir="unused", report_to=[]), TrainerControl()
    state = TrainerState(global_step=begin, max_steps=end)
    cb.on_train_begin(args, state, control, model=model)
    for step in range(begin + 1, end + 1):
        state.global_step = step
        cb.on_step_end(args, state, control, model=model)
    cb.on_train_end(args, state, control, model=model)


def test_demo_words_are_single_tokens(lm: tuple[Any, Any]) -> None:
    """The demo learns fast because each word is one token; a change to the tiny tokenizer must keep that."""
    from daemon.client.demodata import WORDS, make_answer
    _, tok = lm
    assert all(len(tok.tokenize(" " + w)) == 1 for w in WORDS), [tok.tokenize(" " + w) for w in WORDS]
    assert len(tok(make_answer(["star", "tea", "good"]), add_special_tokens=False)["input_ids"]) == 3


def test_snapshot_records_and_log_line(lm: tuple[Any, Any], tmp_path: Path) -> None:
    from daemon.trainer.snapshots import EvolutionCallback
    model, tok = lm
    lines: list[str] = []
    out = tmp_path / "evolution.jsonl"
    cb = EvolutionCallback(demo_probes(tmp_path), tok, out, every=4, max_new_tokens=8, log=lines.append)
    drive(cb, model, 0, 10)
    records = load_records(out)
    assert sorted({r["step"] for r in records}) == [0, 4, 8, 10]  # step 0, every 4, the end
    assert len(records) == 4 * 8
    first = records[0]
    assert set(first) == {"step", "probe", "prompt", "reference", "generation", "loss", "exact", "similarity", "time"}
    assert first["prompt"].startswith("reverse: ") and isinstance(first["generation"], str)
    assert first["loss"] > 0 and isinstance(first["exact"], bool) and 0 <= first["similarity"] <= 1
    assert len(lines) == 4 and lines[0].startswith("evolution @ step 0: 0/8 exact")
    # the same model and probes give the same greedy answers at every snapshot (nothing trained in between)
    assert len({r["generation"] for r in records if r["probe"] == 3}) == 1


def test_resume_never_repeats_a_step_and_repairs_a_cut_line(lm: tuple[Any, Any], tmp_path: Path) -> None:
    from daemon.trainer.snapshots import EvolutionCallback
    model, tok = lm
    probes = demo_probes(tmp_path)[:2]
    out = tmp_path / "evolution.jsonl"
    cb = EvolutionCallback(probes, tok, out, every=3, max_new_tokens=4, log=lambda s: None)
    drive(cb, model, 0, 6)  # snapshots 0, 3, 6; the end (6) is not taken twice
    with open(out, "a") as f:
        f.write('{"step": 7, "probe": 0, "gen')  # killed mid-write
    again = EvolutionCallback(probes, tok, out, every=3, max_new_tokens=4, log=lambda s: None)
    assert again.done_steps == {0, 3, 6}
    drive(again, model, 6, 10)  # resumed from checkpoint 6: the next multiple of 3 is 9, then the end at 10
    records = load_records(out)
    assert [r["step"] for r in records] == [0, 0, 3, 3, 6, 6, 9, 9, 10, 10]
    assert len(out.read_text().splitlines()) == 10  # the cut line is gone, not left in the middle


def test_overhead_budget_thins_periodic_snapshots(lm: tuple[Any, Any], tmp_path: Path) -> None:
    from daemon.trainer.snapshots import EvolutionCallback
    model, tok = lm
    out = tmp_path / "evolution.jsonl"
    cb = EvolutionCallback(demo_probes(tmp_path)[:2], tok, out, every=1, max_new_tokens=4, log=lambda s: None,
                           max_overhead=1e-9, min_snapshots=2)
    drive(cb, model, 0, 5)
    # step 0 and the end always; the periodic ones only while every snapshot so far fits the budget
    assert snapshot_steps_of(out) == [0, 5]
    out.unlink()
    cb = EvolutionCallback(demo_probes(tmp_path)[:2], tok, out, every=1, max_new_tokens=4, log=lambda s: None,
                           max_overhead=1e-9)
    drive(cb, model, 0, 5)
    assert snapshot_steps_of(out) == [0, 2, 3, 4, 5]  # the floor: 3 between, even on a run too short to space them
    out.unlink()
    cb = EvolutionCallback(demo_probes(tmp_path)[:2], tok, out, every=1, max_new_tokens=4, log=lambda s: None,
                           max_overhead=1e9)
    drive(cb, model, 0, 5)
    assert snapshot_steps_of(out) == [0, 1, 2, 3, 4, 5]


def snapshot_steps_of(path: Path) -> list[int]:
    return sorted({r["step"] for r in load_records(path)})


def test_chat_probe_uses_the_chat_template(lm: tuple[Any, Any], tmp_path: Path) -> None:
    from daemon.trainer.snapshots import EvolutionCallback, encode_probe
    model, tok = lm
    probe = {"id": 0, "prompt": "hi", "reference": "hello", "tools": None,
             "messages": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]}
    enc = encode_probe(tok, probe)
    assert tok.decode(enc.prompt_ids).endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(enc.reference_ids) == "hello<|im_end|>"  # up to the end of the turn, as trained
    out = tmp_path / "evolution.jsonl"
    cb = EvolutionCallback([probe, {**probe, "id": 1, "messages": None, "prompt": "say hello"}], tok, out, every=5,
                           max_new_tokens=6, log=lambda s: None)
    records = cb.snapshot(model, 0)
    assert [r["prompt"] for r in records] == ["hi", "say hello"]
    assert all("<|im_end|>" not in r["generation"] for r in records)


def test_snapshot_restores_train_mode_and_every_rng(lm: tuple[Any, Any]) -> None:
    import random

    import numpy as np
    import torch

    from daemon.trainer.snapshots import preserved_training_state
    model, _ = lm
    model.train()
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    with preserved_training_state(model):
        assert not model.training and not torch.is_grad_enabled()
        torch.rand(100), random.random(), np.random.rand(7)  # whatever happens inside draws numbers
    assert model.training
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def full_logits_reference_loss(model: Any, tok: Any, batch: list[Any]) -> list[float]:
    """The reference loss as first written: full-vocabulary fp32 logits for every position of every row."""
    import torch

    from daemon.trainer.snapshots import _left_pad, _positions
    rows = [e.prompt_ids + e.reference_ids for e in batch]
    ids, mask = _left_pad(rows, tok.pad_token_id, torch.device("cpu"))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)).logits.float()
    width, ce = ids.shape[1], torch.nn.functional.cross_entropy
    return [ce(logits[i, width - len(e.reference_ids) - 1: width - 1], ids[i, width - len(e.reference_ids):]).item()
            for i, e in enumerate(batch)]


def test_reference_loss_keeps_only_the_reference_logits(tiny_model: Path, tmp_path: Path) -> None:
    """logits_to_keep (through a PeftModel, as in training) gives the full-logits loss, probe by probe."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from daemon.trainer.snapshots import EvolutionCallback, _accepts_logits_to_keep
    tok = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():  # LoRA B starts at zero: make the adapter count
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.eval()
    assert _accepts_logits_to_keep(model)
    probes = demo_probes(tmp_path)
    probes[1] = {**probes[1], "reference": probes[1]["reference"] + " and some longer reference text here"}
    cb = EvolutionCallback(probes, tok, tmp_path / "evolution.jsonl", every=5, log=lambda s: None)
    seen: list[int] = []
    forward = model.forward

    def recording_forward(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        seen.append(out.logits.shape[1])
        return out

    model.forward = recording_forward
    with torch.no_grad():
        new = cb._reference_loss(model, cb.encoded)
    model.forward = forward
    old = full_logits_reference_loss(model, tok, cb.encoded)
    longest = max(len(e.reference_ids) for e in cb.encoded)
    assert seen == [longest + 1]  # not the whole row
    assert longest + 1 < max(len(e.prompt_ids) + len(e.reference_ids) for e in cb.encoded)
    assert len(set(round(x, 3) for x in old)) > 1 and max(abs(a - b) for a, b in zip(new, old)) < 1e-5


def test_probes_are_cut_to_max_length(lm: tuple[Any, Any], tmp_path: Path) -> None:
    from daemon.trainer.snapshots import EncodedProbe, EvolutionCallback, fit_to_length
    enc = EncodedProbe({}, [1, 2, 3, 4, 5, 6], [7, 8, 9])
    assert fit_to_length(enc, 20) == (enc, False)
    assert fit_to_length(enc, 5)[0] == EncodedProbe({}, [5, 6], [7, 8, 9])  # the end of the prompt is kept
    assert fit_to_length(enc, 3)[0] == EncodedProbe({}, [6], [7, 8])  # then the start of the reference
    # a long reference takes at most half: the answer is generated from the prompt kept (one token was kept)
    long = EncodedProbe({}, list(range(100)), list(range(100, 300)))
    assert fit_to_length(long, 10)[0] == EncodedProbe({}, list(range(95, 100)), list(range(100, 105)))
    # the other answer of a pair: after the same prompt tokens, its own start
    assert fit_to_length(EncodedProbe({}, list(range(100)), [7]), 10, prompt_keep=5)[0] == \
        EncodedProbe({}, list(range(95, 100)), [7])
    model, tok = lm
    probe = {"id": 0, "prompt": "reverse: " + " ".join(["river stone"] * 40), "reference": "stone river " * 10}
    lines: list[str] = []
    cb = EvolutionCallback([probe], tok, tmp_path / "evolution.jsonl", every=5, max_new_tokens=4,
                           log=lines.append, max_length=24)
    assert len(cb.encoded[0].prompt_ids) + len(cb.encoded[0].reference_ids) == 24
    assert lines == ["evolution: 1 probe(s) longer than max_length 24 tokens are cut to fit, keeping the end of "
                     "the prompt and the start of the reference"]
    records = cb.snapshot(model, 0)
    assert records is not None and records[0]["prompt"] == probe["prompt"] and records[0]["loss"] > 0


def out_of_memory_when(cb: Any, failing: Callable[[int], bool], error: Exception) -> list[int]:
    """Make the callback's generate() raise `error` for batch sizes where `failing(size)`; returns the sizes tried."""
    tried: list[int] = []
    generate = cb._generate

    def patched(model: Any, batch: list[Any]) -> list[str]:
        tried.append(len(batch))
        if failing(len(batch)):
            raise error
        return generate(model, batch)

    cb._generate = patched
    return tried


def test_snapshot_out_of_memory_halves_the_probe_batch(lm: tuple[Any, Any], tmp_path: Path) -> None:
    import torch

    from daemon.trainer.snapshots import EvolutionCallback
    model, tok = lm
    model.train()
    lines: list[str] = []
    out = tmp_path / "evolution.jsonl"
    cb = EvolutionCallback(demo_probes(tmp_path), tok, out, every=5, max_new_tokens=4, log=lines.append)
    tried = out_of_memory_when(cb, lambda n: n > 2, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    drive(cb, model, 0, 5)  # steps 0 and 5
    assert tried == [8, 4, 2, 2, 2, 2] + [2, 2, 2, 2]  # the batch that fit is kept for the next snapshot
    assert lines[:2] == ["evolution @ step 0: out of memory with 8 probes per batch; retrying with 4",
                         "evolution @ step 0: out of memory with 4 probes per batch; retrying with 2"]
    assert lines[2].startswith("evolution @ step 0: 0/8 exact") and lines[3].startswith("evolution @ step 5:")
    assert snapshot_steps_of(out) == [0, 5] and len(load_records(out)) == 16
    assert model.training  # train mode is back after the failed attempts too


def test_snapshot_out_of_memory_at_one_probe_is_skipped(lm: tuple[Any, Any], tmp_path: Path) -> None:
    from daemon.trainer.snapshots import EvolutionCallback
    model, tok = lm
    lines: list[str] = []
    out = tmp_path / "evolution.jsonl"
    cb = EvolutionCallback(demo_probes(tmp_path)[:2], tok, out, every=5, max_new_tokens=4, log=lines.append)
    # cuBLAS and the driver report OOM as a plain RuntimeError
    tried = out_of_memory_when(cb, lambda n: True, RuntimeError("CUDA error: out of memory"))
    drive(cb, model, 0, 3)
    assert tried == [2, 1, 1]  # step 0: 2 then 1; the end (step 3): 1 at once
    assert lines[0] == "evolution @ step 0: out of memory with 2 probes per batch; retrying with 1"
    assert lines[1].startswith("evolution @ step 0 skipped: out of memory even with one probe at a time "
                               "(CUDA error: out of memory). Training goes on. Fix: ")
    assert lines[2].startswith("evolution @ step 3 skipped") and len(lines) == 3
    assert not out.exists() and cb.skipped == {0, 3}
    cb._generate = lambda model, batch: (_ for _ in ()).throw(ValueError("a bug"))
    with pytest.raises(ValueError):  # anything but out-of-memory is not swallowed
        cb.snapshot(model, 4)


def train_losses(model_dir: Path, data_dir: Path, out: Path, callback: bool,
                 out_of_memory: bool = False) -> tuple[list[float], Any]:
    """A tiny LoRA job (dropout on) with the plain transformers Trainer; per-step losses and the callback.

    `out_of_memory`: every snapshot's generate() raises torch.OutOfMemoryError (all of them are skipped).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments, set_seed

    from daemon.core.probes import load_probe_file
    from daemon.trainer.snapshots import EvolutionCallback
    tok = AutoTokenizer.from_pretrained(model_dir)
    set_seed(0)  # before get_peft_model: LoRA's A matrices come from the global RNG (FINDINGS)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules="all-linear"))
    rows = []
    for line in (data_dir / "reverse.jsonl").read_text().splitlines():
        r = json.loads(line)
        p, c = tok(r["prompt"])["input_ids"], tok(r["completion"], add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": p + c + [tok.eos_token_id], "labels": [-100] * len(p) + c + [tok.eos_token_id]})

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        pad = lambda xs, v: [x + [v] * (width - len(x)) for x in xs]  # noqa: E731
        return {"input_ids": torch.tensor(pad([b["input_ids"] for b in batch], tok.pad_token_id)),
                "labels": torch.tensor(pad([b["labels"] for b in batch], -100)),
                "attention_mask": torch.tensor(pad([[1] * len(b["input_ids"]) for b in batch], 0))}

    cb = EvolutionCallback(load_probe_file(data_dir / "reverse.probes.jsonl")[:4], tok, out, every=3,
                           max_new_tokens=6, log=lambda s: None) if callback else None
    if cb is not None and out_of_memory:
        out_of_memory_when(cb, lambda n: True, torch.OutOfMemoryError("CUDA out of memory."))
    args = TrainingArguments(output_dir=str(out.parent / "trainer"), max_steps=8, learning_rate=3e-3,
                             per_device_train_batch_size=8, logging_steps=1, save_strategy="no", report_to=[],
                             use_cpu=True, seed=0, remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate,
                      callbacks=[cb] if cb else [])
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h], cb


def test_snapshots_do_not_change_training(tiny_model: Path, tmp_path: Path) -> None:
    write_demo_files(tmp_path / "data", n_train=200)
    plain, _ = train_losses(tiny_model, tmp_path / "data", tmp_path / "a" / "evolution.jsonl", callback=False)
    watched, cb = train_losses(tiny_model, tmp_path / "data", tmp_path / "b" / "evolution.jsonl", callback=True)
    assert snapshot_steps_of(tmp_path / "b" / "evolution.jsonl") == [0, 3, 6, 8]
    assert len(plain) == 8
    assert watched == plain  # exactly: eval mode, no_grad and RNG states are all put back
    starved, cb = train_losses(tiny_model, tmp_path / "data", tmp_path / "c" / "evolution.jsonl", callback=True,
                               out_of_memory=True)
    assert starved == plain and cb.skipped == {0, 3, 6, 8}  # snapshots out of memory: training is untouched


def test_auto_snapshots_never_thin_below_five_per_run(tiny_model: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The real trainer with `probe_every = 0`: however dear a snapshot is, a run shows at least 5, spread over it
    (a busy 2-core box once left the demo with step 0 and the end only); a cheap one keeps the interval."""
    import contextlib
    import io

    import daemon.core.evolution
    from daemon.trainer.run import main

    def run_with(overhead: float, where: Path) -> list[int]:
        monkeypatch.setattr(daemon.core.evolution, "AUTO_MAX_OVERHEAD", overhead)
        run = make_run_dir(where, tiny_model, max_steps=20, save_every=1000, probe_every=0)
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(run, read_stdin=False) == 0
        return snapshot_steps_of(run / "evolution.jsonl")

    assert run_with(1e-9, tmp_path / "dear") == [0, 5, 10, 15, 20]  # every = 1 step, thinned to the floor
    assert run_with(1e9, tmp_path / "cheap") == list(range(21))  # every = 1 step (20 steps / 20), all taken


# ============================================================================ end to end: the demo learns

def make_run_dir(root: Path, model: Path, **overrides: Any) -> Path:
    """A run folder as the daemon's intake lays it out (config.json, stats.json, dataset/) for the demo task."""
    from daemon.core.options import resolve
    run = root / "run"
    dataset, probes, sidecar = write_demo_files(run / "dataset")
    options = resolve({"base_model": str(model)}, {**tomllib.loads(sidecar.read_text()), **overrides})
    (run / "config.json").write_text(json.dumps({
        "run_id": "demo-e2e", **options.to_config(),
        "dataset": {"path": f"dataset/{dataset.name}", "format": "jsonl", "schema": "prompt_completion"},
        "probes": f"dataset/{probes.name}"}), encoding="utf-8")
    (run / "stats.json").write_text(json.dumps({"records": len(dataset.read_text().splitlines())}))
    return run


@pytest.mark.e2e
def test_demo_task_is_learned_by_the_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    """The real trainer on the demo task: a probe that is wrong at step 0 becomes exactly right."""
    run = make_run_dir(tmp_path, tiny_model, probe_every=10, save_every=1000)
    log = open(run / "console.log", "a", encoding="utf-8")  # as the daemon does: the trainer's output is the log
    proc = subprocess.Popen([sys.executable, "-m", "daemon.trainer", str(run)], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    learned: list[int] = []
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None and not learned:
            time.sleep(0.5)
            report = analyze(load_records(run / "evolution.jsonl"))
            learned = [p.probe for p in report.probes
                       if p.answers[0].step == 0 and not p.answers[0].exact and p.latest.exact]
        proc.stdin.write("stop\n")  # enough seen: checkpoint and end as stopped
        proc.stdin.flush()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert learned, (run / "console.log").read_text()[-3000:]


# ============================================================================ runs without probes, stops

TEXT_REASON = ("this run has no probes (plain text has no question to ask; drop notes.probes.jsonl beside the "
               "dataset to watch some)")
COUNT_REASON = "this run has no probes (probe_count = 0 and no probe file)"


@pytest.mark.e2e
def test_a_run_without_probes_says_why_in_the_cli_and_the_dashboard(tiny_model: Path, home: Path) -> None:
    from tests.conftest import overnight
    from tests.conftest_trainer import reversal_records
    from tests.test_tui import app_for, drive as drive_app, loaded, static_text

    short = "max_steps = 2\nbatch_size = 2\nmax_length = 32\neval_fraction = 0\nsave_every = 1000\n"
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n')
    (home / "inbox" / "notes.toml").write_text(short)
    (home / "inbox" / "notes.txt").write_text("".join(f"river stone apple {i} and the long road home\n"
                                                      for i in range(60)))
    (home / "inbox" / "qa.toml").write_text(short + "probe_count = 0\n")
    (home / "inbox" / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversal_records(30)))
    overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=600, check=True)
    runs = {r["name"]: r for r in json.loads(overnight("runs", "--json", home=home, check=True).stdout)}
    assert {n: r["state"] for n, r in runs.items()} == {"notes": "completed", "qa": "completed"}, runs

    reasons = {"notes": TEXT_REASON, "qa": COUNT_REASON}
    for name, reason in reasons.items():
        out = overnight("evolution", runs[name]["id"], home=home, check=True).stdout
        assert reason[0].upper() + reason[1:] in out and "snapshots yet" not in out, out
        data = json.loads(overnight("evolution", runs[name]["id"], "--json", home=home, check=True).stdout)
        assert data["no_probes"] == reason and data["probes"] == []

    app = app_for(home)

    async def body(pilot: Any) -> None:
        await loaded(pilot)
        await pilot.press("3")
        shown = static_text(app, "#evo-summary").strip()
        assert shown in reasons.values(), shown
    drive_app(app, body)


@pytest.mark.e2e
def test_a_stop_right_after_a_snapshot_takes_none_and_the_completion_always_takes_one(tiny_model: Path,
                                                                                       tmp_path: Path) -> None:
    """The real trainer: a stop costs no snapshot when the newest one is younger than probe_every steps; the end
    of the run (resumed after that stop) is snapshotted even though it is younger still."""
    run = make_run_dir(tmp_path, tiny_model, probe_every=1000, save_every=1000, max_steps=30)

    def trainer(stop_at: int | None) -> None:
        with open(run / "console.log", "a", encoding="utf-8") as log:
            proc = subprocess.Popen([sys.executable, "-m", "daemon.trainer", str(run)], cwd=REPO,
                                    stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True)
            try:
                if stop_at is not None:
                    deadline = time.monotonic() + 300
                    while time.monotonic() < deadline and proc.poll() is None:
                        progress = json.loads((run / "progress.json").read_text() or "{}") \
                            if (run / "progress.json").exists() else {}
                        if progress.get("state") == "training" and progress.get("step", 0) >= stop_at:
                            break
                        time.sleep(0.1)
                    proc.stdin.write("stop\n")
                    proc.stdin.flush()
                proc.wait(300)
            finally:
                if proc.poll() is None:
                    proc.kill()

    trainer(stop_at=1)
    result = json.loads((run / "result.json").read_text())
    assert result["outcome"] == "stopped" and 0 < result["step"] < 30, result
    assert snapshot_steps_of(run / "evolution.jsonl") == [0], (run / "console.log").read_text()[-2000:]
    trainer(stop_at=None)
    assert json.loads((run / "result.json").read_text())["outcome"] == "completed"
    assert snapshot_steps_of(run / "evolution.jsonl") == [0, 30]
