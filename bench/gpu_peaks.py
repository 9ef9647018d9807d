"""Model FLOPs utilisation for the GPU check: the cards' dense peaks and the FLOPs a LoRA step spends per token.

FLOPs per useful token = 4·N + 6·N_lora + 6·L·d_q·s̄
- N: the matmul weights (the layers' projections + the output layer): forward 2·N, backward 2·N (input gradients
  only: the base is frozen);
- N_lora: the adapter's weights (forward, input and weight gradients: 6·N_lora);
- attention: QKᵀ and AV over s̄/2 earlier positions on average (causal), 2·2·d_q·s̄/2 forward per layer, ×3 with
  backward; s̄ = Σ len² / Σ len over the trained sequences (a token of a sequence of length n attends to n/2
  positions on average, and a long sequence holds more of the tokens).
Padding, recomputation under gradient checkpointing and 4-bit dequantisation are not counted (MFU on useful tokens,
not hardware FLOPs). MFU = FLOPs per useful token × useful tokens/s ÷ the card's dense peak.
"""
from __future__ import annotations

import re

from daemon.core.preflight import Shape

# Dense (no 2:4 sparsity) bf16 tensor-core peaks, TFLOP/s, FP32 accumulate (what training uses; GeForce cards run
# FP16-accumulate at twice the rate). T4 (Turing) has no bf16: its fp16 peak, which such a card trains in.
# Matched in order against torch.cuda.get_device_name(), first match wins (so "L40S" before "L4", "A10G" before
# "A10", "NVL"/"PCIe" before the SXM default).
# Sources (NVIDIA's datasheets list the sparse figure with a footnote; dense = half of it):
PEAKS: list[tuple[str, str, float]] = [
    # H200 datasheet (nvidia.com/en-us/data-center/h200): BF16 1,979 TFLOPS SXM / 1,671 NVL, with sparsity
    (r"H200 NVL", "H200 NVL", 835.5),
    (r"H200", "H200 SXM", 989.4),
    # H100 datasheet (nvidia.com/en-us/data-center/h100): BF16 1,979 SXM / 1,671 NVL / 1,513 PCIe, with sparsity;
    # the Hopper whitepaper's dense table: 989.4 (SXM5)
    (r"H100 NVL", "H100 NVL", 835.5),
    (r"H100 PCIe", "H100 PCIe", 756.5),
    (r"H100", "H100 SXM", 989.4),
    # A100 datasheet: BF16 312 TFLOPS dense (624 with sparsity), SXM and PCIe alike
    (r"A100", "A100", 312.0),
    # L40S datasheet: BF16 362.05 dense (733 with sparsity)
    (r"L40S", "L40S", 362.05),
    # L4 datasheet: BF16 242 TFLOPS with sparsity
    (r"\bL4\b", "L4", 121.0),
    # Ada whitepaper (AD102), GeForce RTX 4090: peak BF16 tensor with FP32 accumulate 165.2 dense (330.3 sparse)
    (r"RTX 4090", "RTX 4090", 165.2),
    # Ampere GA102 whitepaper, GeForce RTX 3090: peak BF16 tensor with FP32 accumulate 71 dense (142 sparse);
    # the 3090 Ti is another card (no figure here: it prints no MFU)
    (r"RTX 3090(?! Ti)", "RTX 3090", 71.0),
    # RTX A6000 datasheet: tensor performance 309.7 TFLOPS with sparsity (bf16/fp16, FP32 accumulate)
    (r"RTX A6000", "RTX A6000", 154.8),
    # T4 datasheet: mixed precision (FP16/FP32) 65 TFLOPS; no bf16, no sparsity
    (r"\bT4\b", "T4 (fp16)", 65.0),
    # A10G: AWS's variant of the A10 (G5 instances), no NVIDIA datasheet; AWS and vendors list 70 TFLOPS bf16 tensor
    (r"A10G", "A10G", 70.0),
    # A10 datasheet: BF16 125 TFLOPS dense (250 with sparsity)
    (r"\bA10\b", "A10", 125.0),
]


def peak(device_name: str | None) -> tuple[str, float] | None:
    """(the card as the table names it, its dense peak in FLOP/s); None for a card not in the table."""
    for pattern, card, tflops in PEAKS:
        if device_name and re.search(pattern, device_name):
            return card, tflops * 1e12
    return None


def flops_per_token(shape: Shape, lora_r: int, mean_len: float) -> float:
    """4·N + 6·N_lora + 6·L·d_q·s̄ (the module docstring)."""
    n = shape.linear_params + shape.vocab * shape.hidden
    return 4 * n + 6 * shape.lora_params(lora_r) + 6 * shape.layers * shape.q_dim * mean_len


def attention_length(lengths: list[int]) -> float:
    """s̄ = Σ len² / Σ len: the sequence length the average trained token sits in."""
    total = sum(lengths)
    return sum(n * n for n in lengths) / total if total else 0.0
