"""`torch_compile = true` reaches the Trainer's compiler: inductor, its default mode, torch's automatic dynamic
shapes (daemon/trainer/objectives/sft.py's `argument_values`, which DPO and KTO take too).

The model is not compiled here: a 6-step run of the tiny model with `torch_compile = true` through
`python -m daemon.trainer` on this project's (busy) 2-core machine completed, but its step 1 took 100 s and step 2 (the
second batch shape) 81 s, steps 3-6 under 0.1 s each (by hand, 2026-12-06): too long for a test. The Trainer
compiles when training starts (accelerate's `prepare_model`)."""
from __future__ import annotations

from pathlib import Path

from accelerate.utils import DynamoBackend

from daemon.trainer.config import TrainOptions
from daemon.trainer.model import Device, add_lora, load_model
from daemon.trainer.objectives.sft import OvernightTrainer, argument_values, training_arguments
from daemon.trainer.sequences import Encoded, SequenceDataset

CPU = Device("cpu", "cpu", False)


def _compiler(tiny_model: Path, tmp_path: Path, on: bool):  # type: ignore[no-untyped-def]
    opts = TrainOptions(base_model=str(tiny_model), torch_compile=on)
    model = add_lora(load_model(str(tiny_model), CPU, opts, "sdpa"), opts)
    data = SequenceDataset([Encoded([5, 6, 7, 8])] * 4)
    trainer = OvernightTrainer(model=model, args=training_arguments(opts, str(tmp_path), CPU, False),
                               train_dataset=data)
    return trainer.accelerator.state.dynamo_plugin


def test_torch_compile_reaches_the_trainers_compiler_with_dynamic_shapes(tiny_model: Path, tmp_path: Path) -> None:
    plugin = _compiler(tiny_model, tmp_path / "on", True)
    assert plugin.backend == DynamoBackend.INDUCTOR and plugin.mode == "default"
    assert plugin.dynamic is None  # automatic: a second shape compiles once with dynamic sizes, later ones reuse it
    # the default: not compiled (and, asked last, leaves accelerate's shared state as the other tests expect it)
    assert _compiler(tiny_model, tmp_path / "off", False).backend == DynamoBackend.NO


def test_preference_runs_get_the_same_setting() -> None:
    from trl import DPOConfig

    values = argument_values(TrainOptions(base_model="m", torch_compile=True), "/tmp/unused", CPU, False)
    values.pop("label_names")
    args = DPOConfig(**values)
    assert args.torch_compile and args.torch_compile_backend == "inductor" and args.torch_compile_mode is None
