"""The GPU check's models: random-init LMs with published configurations, built offline (no hub) and saved to local
disk, so the daemon, the trainer and the baselines load them like any local base model (QLoRA needs a saved
checkpoint to quantise as it loads).

    python bench/gpu_models.py MODELS_DIR NAME [NAME ...]      # prints NAME=PATH per model

Run as its own process: building an 8B on the GPU leaves the CUDA caching allocator holding its memory until the
process ends, which would count against the other runs (and the 24 GB cap) if the check itself built it.
The embedded tiny model's tokenizer stands in for theirs: only its ids are used, the vocabulary's size (and so the
embeddings and the logits) is the real one.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# config.json on the hub, minus the weights: Qwen/Qwen2.5-0.5B and meta-llama/Meta-Llama-3-8B
CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "tie_word_embeddings": True, "max_position_embeddings": 32768, "rope_theta": 1e6,
                     "rms_norm_eps": 1e-6},
    "llama-3-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                   "tie_word_embeddings": False, "max_position_embeddings": 8192, "rope_theta": 500000.0,
                   "rms_norm_eps": 1e-5},
}


def build(models_dir: Path, name: str) -> Path:
    """The random-init model `name` (CONFIGS, or "tiny": the embedded test model) under `models_dir`, built once."""
    from daemon.client.tinymodel import ensure_tiny_model

    tiny = ensure_tiny_model(models_dir)
    if name == "tiny":
        return tiny
    out = models_dir / f"{name}-random"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    started = time.perf_counter()
    sizes = dict(CONFIGS[name])
    ids = json.loads((tiny / "config.json").read_text())
    config = AutoConfig.for_model(sizes.pop("model_type"), **sizes, eos_token_id=ids["eos_token_id"],
                                  pad_token_id=ids["pad_token_id"], bos_token_id=None)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16 if cuda else torch.float32
    with torch.device("cuda" if cuda else "cpu"):  # initialising 8B weights on the CPU would take minutes
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for f in tiny.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(f, tmp / f.name)
    os.rename(tmp, out)
    params = sum(p.numel() for p in model.parameters())
    print(f"built {name}: {params / 1e9:.2f}B parameters, {dtype}, in {time.perf_counter() - started:.0f} s",
          file=sys.stderr, flush=True)
    return out


def main(argv: list[str]) -> int:
    models_dir = Path(argv[0])
    for name in argv[1:]:
        print(f"{name}={build(models_dir, name)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
