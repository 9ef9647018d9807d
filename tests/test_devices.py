"""First contact with a GPU, tested without one: which GPU a run sees, the precision it trains in, and the torch
builds that cannot see the driver. torch.cuda and NVML are faked with monkeypatch."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from daemon.core import gpus
from daemon.core.gpus import GpuChoiceError
from tests.conftest import overnight


# ------------------------------------------------------------------------------------------ GPU sets

@pytest.mark.parametrize("owner, inherited, count, sets", [
    ({}, None, 2, [("0", "1")]),  # nothing said anywhere: one run over every GPU (torchrun)
    ({"gpus": "all", "gpus_per_run": 1}, None, 2, [("0",), ("1",)]),  # two runs side by side
    ({"gpus_per_run": 4}, None, 8, [("0", "1", "2", "3"), ("4", "5", "6", "7")]),
    ({"gpus_per_run": 3}, None, 8, [("0", "1", "2"), ("3", "4", "5")]),  # GPUs 6 and 7 make no whole set
    ({"gpus_per_run": 1, "max_parallel_runs": 2}, None, 4, [("0",), ("1",)]),
    ({"gpus": 2}, None, 4, [("0", "1")]),
    ({"gpus": [1]}, None, 4, [("1",)]),
    ({"gpus": [2, 3], "gpus_per_run": 1}, None, 4, [("2",), ("3",)]),
    ({}, "3,5", None, [("3", "5")]),  # Slurm/Kubernetes gave the daemon GPUs 3 and 5: indices count within them
    ({"gpus": [1]}, "3,5", None, [("5",)]),
    ({"gpus": [0]}, "GPU-8c1f6e0a-aaaa,GPU-1d2e3f4a-bbbb", None, [("GPU-8c1f6e0a-aaaa",)]),  # UUIDs pass through
    ({}, None, None, [("0",)]),  # NVML cannot count: the first GPU, as CUDA numbers them
    ({}, None, 0, [()]),  # no GPU: the CPU
    ({}, "", None, [()]),  # the CPU chosen on purpose stays chosen
    ({"gpus": "all"}, "", None, [()]),
])
def test_gpu_sets(owner: dict, inherited: str | None, count: int | None, sets: list[tuple[str, ...]]) -> None:
    env = {} if inherited is None else {"CUDA_VISIBLE_DEVICES": inherited}
    assert [slot.devices for slot in gpus.plan(owner, env, lambda: count)] == sets


def test_cpu_runs_side_by_side_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    slots = gpus.plan({"max_parallel_runs": 2}, {"CUDA_VISIBLE_DEVICES": ""})
    assert slots == [gpus.Slot(threads=4)] * 2 and slots[0].label == "CPU"
    assert slots[0].env({})["OMP_NUM_THREADS"] == "4" and slots[0].env({})["CUDA_VISIBLE_DEVICES"] == ""
    assert "OMP_NUM_THREADS" not in gpus.plan({}, {"CUDA_VISIBLE_DEVICES": ""})[0].env({})  # one run: all cores


def test_a_gpu_set_sees_its_gpus_in_pci_order() -> None:
    slot = gpus.Slot(("0", "1"))
    assert slot.env({}) == {"CUDA_VISIBLE_DEVICES": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert slot.env({"CUDA_DEVICE_ORDER": "FASTEST_FIRST"})["CUDA_DEVICE_ORDER"] == "FASTEST_FIRST"  # the user's
    assert slot.label == "GPU 0,1" and slot.nvml_indices() == [0, 1]


@pytest.mark.parametrize("owner, inherited, count, says", [
    ({"gpus": [2]}, "3,5", None, "CUDA_VISIBLE_DEVICES='3,5'"),
    ({"gpus": [0]}, "", None, "CUDA_VISIBLE_DEVICES=''"),
    ({"gpus": 1}, "", None, "CUDA_VISIBLE_DEVICES=''"),
    ({"gpus": [4]}, None, 2, "the NVIDIA driver shows 2 GPU(s). Fix: set gpus to indices within that list (indices "
                             "0..1)"),
    ({"gpus": 2}, None, 0, "gpus = 2 in overnight.toml asks for 2 GPUs, but the NVIDIA driver shows 0 GPU(s). Fix: "
                           "remove gpus (this machine trains on its CPU)"),
    ({"gpus_per_run": 3}, None, 2, "gpus_per_run = 3"),
])
def test_gpus_the_daemon_cannot_see_are_an_error(owner: dict, inherited: str | None, count: int | None,
                                                  says: str) -> None:
    env = {} if inherited is None else {"CUDA_VISIBLE_DEVICES": inherited}
    with pytest.raises(GpuChoiceError) as e:
        gpus.plan(owner, env, lambda: count)
    assert says in str(e.value) and "Fix: " in str(e.value)


def test_trainer_started_by_hand_is_narrowed_to_one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.trainer.run import environment_defaults
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    environment_defaults()
    import os
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4" and os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    monkeypatch.setenv("LOCAL_RANK", "0")  # torchrun hands each rank its GPUs itself
    environment_defaults()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,6"


@pytest.mark.e2e
def test_daemon_fails_a_run_whose_gpu_it_cannot_see(home: Path, tiny_model: Path) -> None:
    """The suite runs with CUDA_VISIBLE_DEVICES="" (conftest): `gpus = [1]` names a GPU the daemon cannot see."""
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\ngpus = [1]\n[hooks]\n'
                                         f'on_fail = ["sh", "-c", "echo $OVERNIGHT_RUN_ID >> ../../failed.txt"]\n')
    (home / "inbox" / "a.jsonl").write_text('{"text": "hello there"}\n' * 10)
    res = overnight("daemon", "--once", "--settle", "0.2", home=home, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    [run] = json.loads(overnight("runs", "--json", home=home, check=True).stdout)
    assert run["state"] == "failed" and "asks for GPU index 1" in run["reason"] and "Fix: " in run["reason"]
    assert "run failed before its trainer started" in (Path(run["run_dir"]) / "console.log").read_text()
    assert (home / "failed.txt").read_text().split() == [run["id"]]  # told like any other failure


# ------------------------------------------------------------------------------------------ pick_device

class FakeCuda:
    """torch.cuda as a box with `count` GPUs named `name` that compute bf16 natively or not."""

    def __init__(self, count: int, name: str = "Tesla T4", native_bf16: bool = False) -> None:
        self.count, self.name, self.native_bf16 = count, name, native_bf16
        self.current = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import torch
        monkeypatch.setattr(torch.cuda, "is_available", lambda: self.count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: self.name)
        monkeypatch.setattr(torch.cuda, "set_device", lambda index: setattr(self, "current", index))
        # like the real one: True through emulation on any CUDA GPU, natively only from Ampere on
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: self.native_bf16 or including_emulation)


def fake_nvml(monkeypatch: pytest.MonkeyPatch, count: int | None) -> None:
    """pynvml showing `count` GPUs, or (None) failing as it does without a driver library."""
    class NVMLError(Exception):
        pass

    def init() -> None:
        if count is None:
            raise NVMLError("NVML Shared Library Not Found")

    fake = types.SimpleNamespace(NVMLError=NVMLError, nvmlInit=init, nvmlShutdown=lambda: None,
                                 nvmlDeviceGetCount=lambda: count)
    monkeypatch.setitem(sys.modules, "pynvml", fake)


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_emulated_bf16_trains_in_fp16(no_launcher: pytest.MonkeyPatch) -> None:
    import torch

    from daemon.trainer.model import pick_device
    FakeCuda(1, "Tesla T4", native_bf16=False).install(no_launcher)
    device = pick_device()
    assert (device.kind, device.bf16, device.fp16, device.dtype) == ("cuda", False, True, torch.float16)
    assert device.label == "cuda (Tesla T4, fp16)"
    FakeCuda(1, "NVIDIA H100 80GB HBM3", native_bf16=True).install(no_launcher)
    device = pick_device()
    assert (device.bf16, device.fp16, device.dtype, device.label) == (True, False, torch.bfloat16,
                                                                      "cuda (NVIDIA H100 80GB HBM3, bf16)")


def test_fp16_device_loads_the_base_in_fp16_keeps_lora_in_fp32_and_asks_for_fp16(tiny_model: Path) -> None:
    import torch

    from daemon.trainer.config import TrainOptions
    from daemon.trainer.model import Device, add_lora, load_model
    from daemon.trainer.objectives.sft import training_arguments
    t4 = Device("cuda", "Tesla T4", bf16=False, fp16=True)
    opts = TrainOptions(base_model=str(tiny_model))
    model = add_lora(load_model(str(tiny_model), t4, opts, "sdpa"), opts)
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.float16}  # the GradScaler unscales fp32 gradients
    args = training_arguments(TrainOptions(base_model="m"), "/tmp/unused", t4, has_eval=False)
    assert args.fp16 and not args.bf16
    cpu = training_arguments(TrainOptions(base_model="m"), "/tmp/unused", Device("cpu", "x", False), False)
    assert not cpu.fp16 and not cpu.bf16 and Device("cpu", "x", False).dtype == torch.float32


def test_several_gpus_outside_torchrun_are_refused(no_launcher: pytest.MonkeyPatch) -> None:
    from daemon.trainer.config import RunError
    from daemon.trainer.model import pick_device
    cuda = FakeCuda(2, "NVIDIA A100-SXM4-80GB", native_bf16=True)
    cuda.install(no_launcher)
    no_launcher.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(RunError) as e:
        pick_device()
    assert "sees 2 GPUs" in str(e.value) and "DataParallel" in str(e.value) and "Fix: " in str(e.value)
    no_launcher.setenv("LOCAL_RANK", "1")  # under torchrun each process trains on its own GPU: cuda:LOCAL_RANK
    assert pick_device().kind == "cuda" and cuda.current == 1
    no_launcher.setenv("LOCAL_RANK", "2")  # more processes than GPUs
    with pytest.raises(RunError, match="local rank 2, but this process sees 2 GPU.*Fix: "):
        pick_device()


@pytest.mark.parametrize("nvml_count, dev_file, shown", [
    (2, False, "the NVIDIA driver shows 2 GPU(s)"),
    (None, True, "a GPU device file exists (/dev/nvidia0)"),
])
def test_a_torch_that_cannot_see_the_driver_fails_the_run(no_launcher: pytest.MonkeyPatch, nvml_count: int | None,
                                                          dev_file: bool, shown: str) -> None:
    import os

    from daemon.trainer.config import RunError
    from daemon.trainer.model import pick_device
    FakeCuda(0).install(no_launcher)
    fake_nvml(no_launcher, nvml_count)
    exists = os.path.exists
    no_launcher.setattr(os.path, "exists", lambda p: dev_file if str(p) == "/dev/nvidia0" else exists(p))
    no_launcher.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(RunError) as e:
        pick_device()
    message = str(e.value)
    assert message.startswith(shown) and "cannot use a GPU" in message
    assert "Fix: install the torch build for your CUDA (pip install torch --index-url" in message
    assert "nvidia-smi" in message
    no_launcher.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU chosen on purpose: no error
    assert pick_device().kind == "cpu"


def test_no_gpu_anywhere_trains_on_the_cpu(no_launcher: pytest.MonkeyPatch) -> None:
    import os

    from daemon.trainer.model import pick_device
    FakeCuda(0).install(no_launcher)
    fake_nvml(no_launcher, None)
    exists = os.path.exists
    no_launcher.setattr(os.path, "exists", lambda p: False if str(p) == "/dev/nvidia0" else exists(p))
    no_launcher.setenv("CUDA_VISIBLE_DEVICES", "0")  # what the daemon hands down on a box without GPUs
    device = pick_device()
    assert (device.kind, device.bf16, device.fp16, device.label.endswith(", fp32)")) == ("cpu", False, False, True)
    fake_nvml(no_launcher, 0)
    assert pick_device().kind == "cpu"
