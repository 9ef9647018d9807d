"""TensorBoard event files for every run (issue 26): TensorBoard's own reader finds the numbers metrics.jsonl holds,
once per step even across a kill and resume, and the evolution snapshots as text."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest_trainer import jsonl, make_run, metrics, reversal_records, start, train, wait_for

pytestmark = pytest.mark.e2e


def board(run: Path) -> object:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: object, tag: str) -> dict[int, float]:
    events = acc.Scalars(tag)  # type: ignore[attr-defined]
    steps = [e.step for e in events]
    assert len(steps) == len(set(steps)), f"{tag}: a step twice: {steps}"
    return {e.step: e.value for e in events}


def test_every_number_of_metrics_jsonl_is_in_the_event_files(tmp_path: Path, tiny_model: Path) -> None:
    probes = jsonl([{"prompt": r["prompt"], "reference": r["completion"]} for r in reversal_records(2, seed=9)])
    run = make_run(tmp_path, tiny_model, dataset_name="rev.jsonl", content=jsonl(reversal_records(60)),
                   schema="prompt_completion", records=60, probes=probes,
                   options={"max_steps": 6, "save_every": 3, "probe_every": 3, "probe_max_new_tokens": 4})
    assert train(run) == 0
    acc = board(run)
    train_records = [m for m in metrics(run) if "loss" in m]
    evals = [m for m in metrics(run) if "eval_loss" in m]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
        assert scalars(acc, f"train/{key}") == pytest.approx({m["step"]: m[key] for m in train_records}, rel=1e-6)
    assert scalars(acc, "eval/loss") == pytest.approx({m["step"]: m["eval_loss"] for m in evals}, rel=1e-6)
    texts = acc.Tensors("evolution/probe 0/text_summary")  # type: ignore[attr-defined]
    assert [t.step for t in texts] == [0, 3, 6]


def test_a_killed_and_resumed_run_has_each_step_once(tmp_path: Path, tiny_model: Path) -> None:
    run = make_run(tmp_path, tiny_model, dataset_name="rev.jsonl", content=jsonl(reversal_records(80, seed=5)),
                   schema="prompt_completion", records=80,
                   options={"max_steps": 16, "save_every": 4, "batch_size": 4, "eval_fraction": 0})
    proc = start(run)
    wait_for(lambda: any(m.get("step", 0) >= 6 for m in metrics(run)), 120, "step 6", proc)
    proc.kill()  # kill -9 past step-4: the steps after it were written to the event files and will be again
    proc.wait(60)
    assert not (run / "result.json").exists()
    assert train(run) == 0  # resumes from step-4
    losses = {m["step"]: m["loss"] for m in metrics(run) if "loss" in m}
    assert sorted(losses) == list(range(1, 17))
    assert scalars(board(run), "train/loss") == pytest.approx(losses, rel=1e-6)
