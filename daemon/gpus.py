"""Which GPU a trainer process sees: exactly one, chosen by `gpus` in overnight.toml (no torch here).

A trainer that sees several GPUs outside torchrun would be wrapped in nn.DataParallel by the Trainer (slow, and
SPEC §12 forbids it), so until runs span GPUs through torchrun a run gets one GPU: the first of `gpus`, else the
first visible one. Indices count within what the daemon itself may see: started with CUDA_VISIBLE_DEVICES=3,5 (Slurm,
Kubernetes, UUIDs), `gpus = [1]` means device 5 and no `gpus` means device 3. CUDA_DEVICE_ORDER=PCI_BUS_ID makes
indices count the way nvidia-smi and NVML (the dashboard) number the GPUs; CUDA's default orders by speed.
"""
from __future__ import annotations

from typing import Mapping


class GpuChoiceError(ValueError):
    """`gpus` names a GPU the daemon cannot see: the message names both and the fix."""


def trainer_gpu_env(gpus: str | int | list[int] | None, inherited: Mapping[str, str]) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES naming one GPU (or none, when the CPU was chosen), and CUDA_DEVICE_ORDER.

    `gpus`: None or "all" (the first GPU visible), a count N (the first N: still the first, for now) or a list of
    indices (its first). `inherited`: the daemon's own environment. An inherited empty CUDA_VISIBLE_DEVICES (the CPU
    chosen on purpose) stays empty unless `gpus` names a GPU, which is then an error, as is any index out of range.
    """
    env = {"CUDA_DEVICE_ORDER": inherited.get("CUDA_DEVICE_ORDER") or "PCI_BUS_ID"}  # the user's own order wins
    explicit = isinstance(gpus, list) or (isinstance(gpus, int) and not isinstance(gpus, bool))
    index = gpus[0] if isinstance(gpus, list) and gpus else 0
    raw = inherited.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        env["CUDA_VISIBLE_DEVICES"] = str(index)
        return env
    visible = [entry.strip() for entry in raw.split(",") if entry.strip()]
    if not visible and not explicit:
        env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU: the CPU was chosen for the daemon and everything it starts
        return env
    if index >= len(visible):
        raise GpuChoiceError(
            f"gpus = {gpus!r} in overnight.toml asks for GPU index {index}, but the daemon was started with "
            f"CUDA_VISIBLE_DEVICES={raw!r}, which leaves it {len(visible)} GPU(s)"
            f"{f' (indices 0..{len(visible) - 1} count within that list)' if visible else ''}. Fix: set gpus to an "
            f"index within that list (or remove it), or restart the daemon with the GPUs it should use visible; "
            f"then `overnight resume RUN`.")
    env["CUDA_VISIBLE_DEVICES"] = visible[index]
    return env


def under_torchrun(environ: Mapping[str, str]) -> bool:
    """torchrun (and accelerate launch) set these for every process they start."""
    return "LOCAL_RANK" in environ or "WORLD_SIZE" in environ
