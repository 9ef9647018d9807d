"""On a GPU a DataLoader worker collates the next batches while the GPU works (daemon/trainer/objectives/sft.py's
`_loader_arguments`); on the CPU the main process does, as before. The collators every objective uses give the same
batches from a worker as in-process, and a SIGTERM sent to the trainer's process group (the daemon's way of
stopping it) is the trainer's to obey: the worker is not in that group (daemon/trainer/commands.py)."""
from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler
from transformers import DataCollatorWithFlattening
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

from daemon.trainer.config import TrainOptions
from daemon.trainer.model import Device
from daemon.trainer.objectives.sft import argument_values, training_arguments
from daemon.trainer.sequences import Encoded, PadCollator, SequenceDataset

REPO = Path(__file__).resolve().parents[1]


def test_a_gpu_run_collates_in_a_persistent_worker_with_pinned_memory_and_the_cpu_in_process() -> None:
    opts = TrainOptions(base_model="m")
    gpu = argument_values(opts, "/tmp/unused", Device("cuda", "NVIDIA H100", bf16=True), has_eval=True)
    assert gpu["dataloader_num_workers"] == 1
    assert gpu["dataloader_pin_memory"] is True and gpu["dataloader_persistent_workers"] is True
    assert "dataloader_prefetch_factor" not in gpu  # torch's default: 2 batches ahead per worker
    cpu = training_arguments(opts, "/tmp/unused", Device("cpu", "x", False), has_eval=True)
    assert cpu.dataloader_num_workers == 0 and not cpu.dataloader_persistent_workers


def _sequences(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ids = rng.integers(3, 100, int(rng.integers(4, 30)), dtype=np.int64)
        out.append({"input_ids": ids, "labels": np.where(np.arange(len(ids)) < 3, -100, ids)})
    return out


def _pairs(n: int) -> list[dict]:
    rng = np.random.default_rng(1)
    ids = lambda: rng.integers(3, 100, int(rng.integers(2, 12))).tolist()  # noqa: E731
    return [{"prompt_ids": ids(), "chosen_ids": ids(), "rejected_ids": ids(), "completion_ids": ids(),
             "KL_completion_ids": ids(), "label": bool(i % 2)} for i in range(n)]


SEQUENCES = SequenceDataset([Encoded(s["input_ids"], s["labels"]) for s in _sequences(40)])
CASES = {  # what each objective's Trainer collates with (sft: padded or padding-free; dpo; kto)
    "padded": (SEQUENCES, PadCollator(0, 8)),
    "padding_free": (SEQUENCES, DataCollatorWithFlattening(return_tensors="pt")),
    "dpo": (_pairs(40), DataCollatorForPreference(pad_token_id=0)),
    "kto": ([{k: v for k, v in p.items() if k not in ("chosen_ids", "rejected_ids")} for p in _pairs(40)],
            DataCollatorForUnpairedPreference(pad_token_id=0)),
}


def _epochs(dataset, collate, workers: int) -> list[dict]:  # type: ignore[no-untyped-def]
    # the order is the sampler's, in the main process (seeded on its own, as accelerate's and GroupedSampler are)
    order = RandomSampler(dataset, generator=torch.Generator().manual_seed(7))
    loader = DataLoader(dataset, batch_size=4, sampler=order, collate_fn=collate, num_workers=workers,
                        persistent_workers=workers > 0)
    return [batch for _ in range(2) for batch in loader]


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_collator_gives_the_same_batches_from_a_worker(case: str) -> None:
    dataset, collate = CASES[case]
    again = pickle.loads(pickle.dumps(collate))  # a worker started by spawn or forkserver receives it pickled
    in_process, from_worker = _epochs(dataset, again, 0), _epochs(dataset, collate, 1)
    assert len(in_process) == len(from_worker) == 20
    for a, b in zip(in_process, from_worker):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


SIGTERM_MID_EPOCH = '''
import os, signal, sys, time
from torch.utils.data import DataLoader, RandomSampler
from daemon.trainer.commands import Commands, forks_leave_the_group, start_channel

if sys.argv[1] == "trainer":  # what python -m daemon.trainer does
    forks_leave_the_group()
    commands = start_channel(print, read_stdin=False)
else:  # the same handler, without the trainer's channel
    commands = Commands()
    signal.signal(signal.SIGTERM, lambda n, f: commands.request_stop("SIGTERM received"))
loader = DataLoader(list(range(400)), batch_size=4, num_workers=1, persistent_workers=True)
batches = 0
for epoch in range(2):
    for batch in loader:
        batches += 1
        if batches == 5:
            os.killpg(os.getpgrp(), signal.SIGTERM)  # what the daemon sends to stop a trainer
        time.sleep(0.005)
print(f"batches {batches}, stop requested: {commands.stop.is_set()}", flush=True)
'''


def _run(mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(SIGTERM_MID_EPOCH), mode], cwd=REPO,
                          capture_output=True, text=True, timeout=120, start_new_session=True)


def test_a_sigterm_to_the_trainers_group_stops_the_trainer_not_its_loader_worker() -> None:
    done = _run("trainer")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "batches 200, stop requested: True" in done.stdout
    # without the trainer's channel torch's worker dies of it, and the next batch fails the run: as "worker exited
    # unexpectedly" or, when the worker dies mid-transfer, a connection reset on its queue
    bare = _run("bare")
    assert bare.returncode != 0 and "batches 200" not in bare.stdout
    assert "exited unexpectedly" in bare.stderr or "ConnectionResetError" in bare.stderr, bare.stderr[-2000:]
