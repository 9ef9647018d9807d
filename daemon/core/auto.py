"""The "auto" decisions a run's options leave to overnight, as pure functions of what the machine has: the trainer
applies them and `overnight check` describes them, so both say the same (tests/test_auto.py is their table)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from daemon.core.datasets import ExampleKind

# Attention kernels that take a padding-free row of several sequences (position ids restart per sequence).
VARLEN_KERNELS = ("flash_attention_2",)


@dataclass(frozen=True)
class Machine:
    """What the auto decisions depend on."""

    cuda: bool  # the run trains on a GPU
    capability: int | None  # that GPU's compute capability, major number (8: Ampere)
    has_flash: bool  # the flash-attn package is installed

    @classmethod
    def here(cls) -> Machine:
        """This machine, without torch: NVML for its first GPU, the import system for flash-attn."""
        return cls(*_first_gpu(), has_flash=importlib.util.find_spec("flash_attn") is not None)


def attention(requested: str, m: Machine) -> tuple[str, str]:
    """The attention implementation a run uses and why; ValueError (with the fix) when it cannot have the one set."""
    flash_ok = m.has_flash and m.cuda and (m.capability or 0) >= 8
    if requested == "flash_attention_2" and not flash_ok:
        raise ValueError("attn_implementation = \"flash_attention_2\" needs the flash-attn package and an Ampere or "
                         "newer GPU" + ("" if m.cuda else " (this run is on the CPU)") + ". Fix: install flash-attn "
                         "(see the README: a source build against your CUDA), or set attn_implementation = "
                         "\"sdpa\" or \"auto\".")
    if requested == "flex_attention" and not m.cuda:
        raise ValueError("attn_implementation = \"flex_attention\" trains on a GPU only (PyTorch has no CPU backward "
                         "for it), and this run is on the CPU. Fix: set attn_implementation = \"sdpa\" or \"auto\".")
    if requested != "auto":
        return requested, "set in the options"
    if flash_ok:
        return "flash_attention_2", "auto: flash-attn is installed and the GPU supports it"
    why = "the CPU has no flash-attention" if not m.cuda else (
        "flash-attn is not installed" if not m.has_flash else "the GPU is older than Ampere")
    return "sdpa", f"auto: {why}"


def batching(requested: str, kind: str, attention: str) -> tuple[str, str]:
    """The batching a run uses and why: `kind` is the examples' kind (text, prompt, chat), `attention` the kernel."""
    if kind == ExampleKind.TEXT:
        return "padded", "text blocks are already full, nothing to pad"
    if kind in (ExampleKind.PAIR, ExampleKind.JUDGED):
        return "padded", "preference examples are padded per batch by TRL's collator, the answers side by side"
    if requested != "auto":
        return requested, "set in the options"
    if attention in VARLEN_KERNELS:
        return "padding_free", f"auto: {attention} has a variable-length kernel"
    return "length_grouped", (f"auto: {attention} has no variable-length kernel, so one long padding-free row "
                              f"would cost more than sorting batches by length")


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def liger(requested: bool | str, cuda: bool, installed: bool) -> tuple[bool, str]:
    """Whether Liger's kernels (its fused linear cross-entropy never builds the logits) run, and why."""
    if requested is False:
        return False, "set off in the options"
    if cuda and installed:
        return True, "set in the options" if requested is True else "auto: a CUDA GPU and liger-kernel are here"
    missing = "Liger's kernels need a GPU" if not cuda else "liger-kernel is not installed (pip install 'overnight[gpu]')"
    return False, ("use_liger_kernel = true is ignored: " if requested is True else "auto: ") + missing


def _first_gpu() -> tuple[bool, int | None]:
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # no package, no driver: the CPU
        return False, None
    try:
        if not pynvml.nvmlDeviceGetCount():
            return False, None
        major, _ = pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(0))
        return True, int(major)
    except pynvml.NVMLError:
        return False, None
    finally:
        pynvml.nvmlShutdown()


# What each objective trains on, in words (objective's messages), and the objective each kind of example implies.
_DATA = {ExampleKind.PAIR: "preference pairs (chosen/rejected)",
         ExampleKind.JUDGED: "labelled completions (KTO: a 'label' true or false)"}
_NEEDS = {"sft": "supervised examples (text, prompt/completion, alpaca, chat)", "dpo": "preference pairs "
          "({prompt, chosen, rejected} or another preference schema)", "kto": "labelled completions "
          "({prompt, completion, label: true|false})"}


def objective(requested: str, kind: str) -> tuple[str, str]:
    """The objective a run trains with and why, from `kind` (the examples' kind): pairs → dpo, judged → kto, the
    rest → sft; ValueError (with the fix) when the objective set does not fit the data."""
    natural = {ExampleKind.PAIR: "dpo", ExampleKind.JUDGED: "kto"}.get(kind, "sft")
    data = _DATA.get(kind, "supervised examples")
    if requested == "auto":
        return natural, f"auto: the records are {data}"
    if requested == natural:
        return requested, "set in the options"
    fix = (f'set objective = "{natural}" (or "auto", which picks it for these records)'
           f', or drop {_NEEDS[requested]} for objective = "{requested}"')
    if natural == "dpo" and requested == "sft":
        fix += ", or keep only the chosen answers as prompt/completion records"
    raise ValueError(f'objective = "{requested}" trains on {_NEEDS[requested]}, but the records are {data}. '
                     f"Fix: {fix}.")
