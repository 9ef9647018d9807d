"""The prepared GPU check: real-scale LoRA and QLoRA runs through the real daemon and trainer, with the dashboard.

    python bench/gpu_check.py                      # on a GPU machine: 0.5B and 7B (random weights), 30 steps each
    python bench/gpu_check.py --big 3b             # a 3B instead of the 7B, when time is short
    python bench/gpu_check.py --cpu --tiny         # the same script on the CPU with the tiny model (CI-sized)

It builds random-init Qwen2 models offline with the configurations of Qwen2.5-0.5B and Qwen2.5-7B (no hub; the
embedded tokenizer stands in for theirs: only its ids are used), starts `overnight daemon` on a fresh home, drops
the alpaca demo data (`../shared/realdata/alpaca_en_demo.json`, prompt schema) once per variant with a sidecar
(batch 8, max_length 1024, N steps, no probes, no eval), and while the first run trains captures `overnight tui`
(front screen and System tab), rendered headless by bench/tui_capture.py. For every run it prints useful and computed tokens/s, peak GPU
memory (`torch.cuda.max_memory_allocated`, from result.json) and MFU:

    FLOPs per computed token = 4·N + 6·N_lora + 6·L·d_q·s̄
    N: the matmul weights (the layers' projections + the output layer), forward 2·N and backward 2·N (input
    gradients only: the base is frozen); N_lora: the adapter's weights (forward, input and weight gradients);
    attention: QKᵀ and AV over s̄/2 positions on average (causal), 2·2·d_q·s̄/2 forward, ×3 with backward, per
    layer; s̄ = tokens computed / sequences. Recomputation under gradient checkpointing is not counted (MFU, not
    HFU). MFU = FLOPs per token × computed tokens/s ÷ the GPU's dense bf16 peak.

Figures go to stdout and to OUT/gpu_check.md and OUT/gpu_check.json (OUT: --out, else $OUT, else
bench/gpu_check_out).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.core.preflight import Shape  # noqa: E402

# the same place the tests look: OVERNIGHT_REALDATA, else the shared folder beside the checkout
ALPACA = Path(os.environ.get("OVERNIGHT_REALDATA", REPO.parent / "shared" / "realdata")) / "alpaca_en_demo.json"
# Qwen2.5's published configurations (config.json on the hub), minus the weights.
CONFIGS = {
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
    "3b": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
           "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
    "7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False},
}
# dense bf16 peak, TFLOP/s (no sparsity), by a substring of torch.cuda.get_device_name()
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
               "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}
TERMINAL = {"completed", "failed", "stopped", "skipped"}


@dataclass
class Variant:
    """One run of the check: a model and the options that differ."""

    slug: str
    label: str
    model: str
    options: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)


def variants(big: str, flash: bool, cpu: bool) -> list[Variant]:
    """The runs the issue asks for: 0.5B plain, + checkpointing, each batching, and the big model in 4 bits."""
    varlen = "sdpa" if cpu else "flex_attention"  # flex needs a GPU to be fast; on the CPU it only must run
    out = [Variant("grouped", "0.5B LoRA bf16, length-grouped (sdpa)", "0.5b",
                   {"batching": "length_grouped", "attn_implementation": "sdpa", "gradient_checkpointing": False}),
           Variant("grouped-gc", "0.5B LoRA bf16 + grad. checkpointing, length-grouped", "0.5b",
                   {"batching": "length_grouped", "attn_implementation": "sdpa", "gradient_checkpointing": True}),
           Variant("padded", "0.5B LoRA bf16, padded (sdpa)", "0.5b",
                   {"batching": "padded", "attn_implementation": "sdpa", "gradient_checkpointing": False}),
           Variant("flat-flex", f"0.5B LoRA bf16, padding-free ({varlen})", "0.5b",
                   {"batching": "padding_free", "attn_implementation": varlen, "gradient_checkpointing": False})]
    if flash:
        out.append(Variant("flat-flash", "0.5B LoRA bf16, padding-free (flash_attention_2)", "0.5b",
                           {"batching": "padding_free", "attn_implementation": "flash_attention_2",
                            "gradient_checkpointing": False}))
    out.append(Variant("qlora", f"{big.upper()} QLoRA 4-bit + grad. checkpointing, auto batching", big,
                       {"quantization": "4bit", "gradient_checkpointing": True}))
    return out


# ------------------------------------------------------------------------------------------------ models

def build_models(models_dir: Path, names: set[str], tiny: bool) -> dict[str, Path]:
    """Random-init models with the real configurations (or the tiny model for every name with --tiny)."""
    from daemon.client.tinymodel import ensure_tiny_model

    tiny_path = ensure_tiny_model(models_dir)
    if tiny:
        return {name: tiny_path for name in names}
    return {name: _random_model(models_dir / f"qwen2.5-{name}-random", CONFIGS[name], tiny_path) for name in names}


def _random_model(out: Path, sizes: dict[str, Any], tokenizer_from: Path) -> Path:
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    t0 = time.perf_counter()
    tok_cfg = json.loads((tokenizer_from / "config.json").read_text())
    config = Qwen2Config(**sizes, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                         eos_token_id=tok_cfg["eos_token_id"], pad_token_id=tok_cfg["pad_token_id"], bos_token_id=None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialising 7B weights on the CPU would take minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp, safe_serialization=True)
    for f in tokenizer_from.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy2(f, tmp / f.name)
    os.rename(tmp, out)
    del model
    print(f"built {out.name}: {sum(1 for _ in out.glob('*.safetensors'))} weight file(s) in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return out


# ------------------------------------------------------------------------------------------------ the runs

def overnight(home: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon", *args, "--home", str(home)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


def drop(home: Path, v: Variant, model: Path, steps: int, max_length: int, index: int) -> None:
    """Sidecar first (it waits for its dataset), then the data: the order a user's `mv` gives."""
    options = {"base_model": str(model), "max_steps": steps, "batch_size": 8, "max_length": max_length,
               "log_every": max(1, steps // 6), "save_every": 100000, "eval_fraction": 0.0, "probe_count": 0,
               "priority": 100 - index, **v.options}
    lines = [f"{k} = {json.dumps(val) if not isinstance(val, bool) else str(val).lower()}"
             for k, val in options.items()]
    name = f"gc{index}-{v.slug}"
    (home / "inbox" / f"{name}.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp = home / "inbox" / f".{name}.json"
    shutil.copyfile(ALPACA, tmp)
    os.rename(tmp, home / "inbox" / f"{name}.json")


def capture_dashboard(home: Path, out: Path, env: dict[str, str]) -> list[str]:
    """The dashboard on `home`, rendered headless (bench/tui_capture.py): the front screen and the System tab."""
    res = subprocess.run([sys.executable, str(REPO / "bench" / "tui_capture.py"), str(home), str(out)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    return res.stdout.splitlines() + ([f"dashboard capture failed: {res.stderr[-2000:]}"] if res.returncode else [])


def wait_all(home: Path, n: int, env: dict[str, str], timeout: float, on_training: Any) -> list[dict[str, Any]]:
    """Poll `overnight runs --json` until every run has ended; call `on_training` once, when one trains."""
    deadline, called = time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        rows = json.loads(overnight(home, "runs", "--json", env=env).stdout or "[]")
        if not called and any(r["state"] == "training" and (r.get("step") or 0) >= 1 for r in rows):
            called = True
            on_training()
        if len(rows) >= n and all(r["state"] in TERMINAL for r in rows):
            return rows
        time.sleep(2)
    raise SystemExit(f"gpu_check: runs did not finish within {timeout:.0f} s; see {home}/runs/*/console.log")


# ------------------------------------------------------------------------------------------------ figures

def flops_per_token(shape: Shape, lora_r: int, mean_len: float) -> float:
    """4·N + 6·N_lora + 6·L·d_q·s̄ (see the module docstring)."""
    n = shape.linear_params + shape.vocab * shape.hidden
    return 4 * n + 6 * shape.lora_params(lora_r) + 6 * shape.layers * shape.q_dim * mean_len


def peak_flops(device_name: str | None) -> float | None:
    for key, tflops in PEAK_TFLOPS.items():
        if device_name and key in device_name:
            return tflops * 1e12
    return None


def figures(v: Variant, run_dir: Path, steps: int) -> dict[str, Any]:
    result = json.loads((run_dir / "result.json").read_text())
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rates = [m["tokens_per_s"] for m in metrics if m.get("loss") is not None][1:]  # the first pays warm-up
    useful_per_s = statistics.median(rates) if rates else result["tokens_seen"] / max(result["train_seconds"], 1e-9)
    seen, computed = result.get("tokens_seen") or 0, result.get("tokens_computed") or 0
    computed_per_s = useful_per_s * computed / seen if seen else None
    shape = Shape.from_config(json.loads((Path(json.loads((run_dir / "config.json").read_text())["options"]
                                                    ["base_model"]) / "config.json").read_text()))
    mean_len = computed / max(steps * 8, 1)
    mfu = None
    peak = peak_flops(result.get("device_name"))
    if shape and peak and computed_per_s:
        mfu = flops_per_token(shape, 16, mean_len) * computed_per_s / peak
    return {"label": v.label, "outcome": result["outcome"], "reason": result.get("reason"),
            "device": result.get("device_name"), "steps": result["step"], "useful_tokens_per_s": useful_per_s,
            "computed_tokens_per_s": computed_per_s, "tokens_seen": seen, "tokens_computed": computed,
            "padding_share": 1 - seen / computed if computed else None,
            "peak_gpu_memory_gib": result["peak_gpu_memory"] / 2**30 if result.get("peak_gpu_memory") else None,
            "mfu": mfu, "final_loss": result.get("final_loss"), "train_seconds": result.get("train_seconds")}


def table(rows: list[dict[str, Any]]) -> str:
    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    lines = ["| run | outcome | useful tok/s | computed tok/s | padding | peak GPU mem | MFU | final loss |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['outcome']} | {f(r['useful_tokens_per_s'], ',.0f')} | "
                     f"{f(r['computed_tokens_per_s'], ',.0f')} | {f(r['padding_share'], '.0%')} | "
                     f"{f(r['peak_gpu_memory_gib'], '.1f')}{' GiB' if r['peak_gpu_memory_gib'] else ''} | "
                     f"{f(r['mfu'], '.1%')} | {f(r['final_loss'], '.4f')} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="train on the CPU (CUDA_VISIBLE_DEVICES='')")
    p.add_argument("--tiny", action="store_true", help="the embedded tiny model instead of 0.5B/7B")
    p.add_argument("--big", choices=("7b", "3b"), default="7b", help="the QLoRA model's size")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 30; 3 with --tiny)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per example (default 1024; 256 with --tiny)")
    p.add_argument("--out", type=Path, default=None, help="where the figures and screens go")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for all runs")
    p.add_argument("--torchrun", type=int, default=None, metavar="N",
                   help="launch every run through torchrun with N processes ([torchrun] nproc_per_node = N)")
    p.add_argument("--only", default=None, help="comma-separated variants to run (grouped, grouped-gc, padded, "
                                                 "flat-flex, flat-flash, qlora); default all")
    args = p.parse_args(argv)
    steps = args.steps or (3 if args.tiny else 30)
    max_length = args.max_length or (256 if args.tiny else 1024)
    out = args.out or Path(os.environ.get("OUT") or REPO / "bench" / "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import importlib.util

    flash = importlib.util.find_spec("flash_attn") is not None and not args.cpu
    home = Path(tempfile.mkdtemp(prefix="overnight-gpu-check-"))
    started = time.perf_counter()
    runs = variants(args.big, flash, args.cpu)
    if args.only:
        runs = [v for v in runs if v.slug in args.only.split(",")]
    if args.tiny:  # every variant trains the tiny model: say so in each row
        for v in runs:
            v.label = v.label.replace("0.5B", "tiny").replace(args.big.upper(), "tiny")
    models = build_models(home / ".overnight" / "models", {v.model for v in runs}, args.tiny)
    for d in ("inbox", "control", "runs"):
        (home / d).mkdir(parents=True, exist_ok=True)
    if args.torchrun:
        (home / "overnight.toml").write_text(f"[torchrun]\nnproc_per_node = {args.torchrun}\n", encoding="utf-8")
    daemon = subprocess.Popen([sys.executable, "-m", "daemon", "daemon", "--home", str(home), "--quiet",
                               "--settle", "1"],  # drops arrive by rename
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    notes: list[str] = []
    try:
        for i, v in enumerate(runs):
            drop(home, v, models[v.model], steps, max_length, i)
        rows = wait_all(home, len(runs), env, args.timeout,
                        lambda: notes.extend(capture_dashboard(home, out, env)))
    finally:
        daemon.terminate()
        daemon.wait(120)
    by_name = {r["name"]: r for r in rows}
    results = []
    for i, v in enumerate(runs):
        row = by_name.get(f"gc{i}-{v.slug}")
        if row is None:
            results.append({"label": v.label, "outcome": "missing"} | dict.fromkeys(
                ("useful_tokens_per_s", "computed_tokens_per_s", "padding_share", "peak_gpu_memory_gib", "mfu",
                 "final_loss"), None))
            continue
        results.append(figures(v, Path(row["run_dir"]), steps))
        console = (Path(row["run_dir"]) / "console.log").read_text(encoding="utf-8", errors="replace")
        notes += [f"{v.slug}: {line.split('] ', 1)[-1]}" for line in console.splitlines() if "] device: " in line]
    report = table(results)
    print(report)
    for n in notes:
        print(n)
    for r in results:
        if r["outcome"] != "completed":
            print(f"{r['label']}: {r['outcome']}: {r.get('reason')}")
    for screen in ("tui_front.txt", "tui_system.txt"):
        if (out / screen).exists():
            print(f"--- {screen}\n{(out / screen).read_text()}")
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "gpu_check.md").write_text(report + "\n")
    print(f"home {home}; {time.perf_counter() - started:.0f} s in all")
    return 0 if all(r["outcome"] == "completed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
