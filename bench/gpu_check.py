"""The honest GPU check (issue 23): overnight's real daemon and trainer against a plain transformers Trainer and
TRL's SFTTrainer, on the same data, the same GPU and the same model, in one run.

    python bench/gpu_check.py                   # on a GPU machine (all rows: ~8 minutes on one H100 80 GB)
    python bench/gpu_check.py --only lora-0.5b,qlora-8b-24g --epochs 1          # shorter
    python bench/gpu_check.py --cpu --tiny      # the whole check on the CPU with the tiny model (~3 minutes)
    (on a lent device machine: bash bench/device_check.sh [these options]; bench/README.md)

Rows, in the order they run (random-init models with published configurations, built offline by
bench/gpu_models.py and saved to local disk):
1. lora-0.5b: Qwen2.5-0.5B, LoRA bf16 on alpaca_en_demo.json (all 999 records); the sidecar sets neither batch_size
   nor batch_tokens, so the trainer sizes its micro-batches itself (batch_tokens = "auto": the memory plan on a
   GPU). Baselines: the plain Trainer (batch 8, random padded batches) and TRL's SFTTrainer at its best setting.
2. lora-0.5b-noliger: row 1 again with `use_liger_kernel = false` (right after it: the same machine state).
3. qlora-8b-24g: the Llama-3-8B shape (vocab 128256, hidden 4096, intermediate 14336, 32 layers, 32 heads, 8 kv
   heads) in 4 bits (`quantization = "4bit"`), `max_length` 2048, on the first --records-qlora records, under a
   24 GiB cap: a ballast process (bench/gpu_ballast.py) takes all but 24 GiB of the GPU for the whole row, so the
   trainer's `torch.cuda.mem_get_info` and NVML see what a 24 GB card would show; it must end with zero
   out-of-memory retries (the trainer's "out of memory" lines in its console.log, counted). Baseline: TRL's
   SFTTrainer in 4 bits with gradient checkpointing, under the same ballast.
4. lora-8b: the same 8B shape, LoRA bf16, on the first --records-big records; overnight alone (--big-baseline adds
   the plain Trainer).
Every row: overnight's sidecar leaves everything else "auto"; eval_fraction 0 and probe_count 0, so every record
trains and the baselines get the very sequences it trained: the run's tokens.npz (bench/gpu_baselines.py). The
LoRA rows train --epochs epochs (default 2: a 0.5B epoch of alpaca is a few seconds of GPU work, too short to
weigh the start of the loop fairly), the QLoRA row and every baseline one.

Rates, all measured the same way: useful tokens/s = non-padding tokens trained ÷ the wall time of the training loop
(overnight: result.json's tokens_seen ÷ train_seconds, the Trainer's construction and its whole train() with data
loading, logging and its last checkpoint; a baseline: the same counts over its trainer.train()); computed tokens/s
counts padding too; peak memory is `torch.cuda.max_memory_allocated()`; MFU is on useful tokens (bench/gpu_peaks.py
states the FLOPs formula and the cards' dense peaks; an unknown card prints no MFU). Ratios: overnight ÷ baseline.
Each baseline runs in its own process (clean GPU memory), after the overnight run of its row.

Figures go to stdout and to OUT/gpu_check.md (a table ready for bench/README.md, with the card and the goals each
row meets) and OUT/gpu_check.json; the runs' logs to OUT/gpu_check_logs.tar.gz; the dashboard (`overnight tui`,
rendered headless while the 8B LoRA row trains: front screen and System tab) to OUT/tui_front.txt and
OUT/tui_system.txt (OUT: --out, else $OUT, else bench/gpu_check_out).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_peaks import attention_length, flops_per_token, peak  # noqa: E402
from daemon.core.preflight import Shape  # noqa: E402

# the same place the tests look: OVERNIGHT_REALDATA, else the shared folder beside the checkout
ALPACA = Path(os.environ.get("OVERNIGHT_REALDATA", REPO.parent / "shared" / "realdata")) / "alpaca_en_demo.json"
TERMINAL = {"completed", "failed", "stopped", "skipped", "pruned"}
LORA_R = 16
GIB = 2**30
# what the trainer's console says about its plan: printed for every row
PLAN_WORDS = ("batches:", "batching:", "gradient checkpointing:", "token budget", "batch_tokens", "memory plan",
              "liger kernels:", "attention:", "out of memory")  # matched in lower case


@dataclass
class Baseline:
    kind: str  # "trainer" | "trl"
    quantization: str = "none"
    checkpointing: bool = False

    @property
    def label(self) -> str:
        name = "plain Trainer (batch 8, padded)" if self.kind == "trainer" else "TRL SFTTrainer (best setting)"
        return (name + (", 4-bit" if self.quantization == "4bit" else "")
                + (", grad. ckpt" if self.checkpointing else ""))


@dataclass
class Row:
    slug: str
    label: str
    model: str
    options: dict[str, Any]
    records: int  # the first N alpaca records
    epochs: float
    baselines: list[Baseline] = field(default_factory=list)
    capped: bool = False  # under the ballast
    figures: dict[str, Any] = field(default_factory=dict)
    against: list[dict[str, Any]] = field(default_factory=list)


def rows(a: argparse.Namespace) -> list[Row]:
    small = a.records or (16 if a.tiny else 999)
    big = a.records_big or (12 if a.tiny else 256)
    qlora = a.records_qlora or (12 if a.tiny else 128)
    return [
        Row("lora-0.5b", "0.5B LoRA bf16, auto token budget", "qwen2.5-0.5b", {}, small, a.epochs,
            [Baseline("trainer"), Baseline("trl")]),
        Row("lora-0.5b-noliger", "0.5B LoRA bf16, auto token budget, Liger off", "qwen2.5-0.5b",
            {"use_liger_kernel": False}, small, a.epochs),
        Row("qlora-8b-24g", "8B QLoRA 4-bit, max_length 2048, 24 GiB cap", "llama-3-8b",
            {"quantization": "4bit", "max_length": 2048}, qlora, 1, [Baseline("trl", "4bit", True)], capped=True),
        Row("lora-8b", "8B LoRA bf16, auto token budget", "llama-3-8b", {}, big, a.epochs,
            [Baseline("trainer")] if a.big_baseline else []),
    ]


# ------------------------------------------------------------------------------------------------ processes

def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def overnight(home: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon", *args, "--home", str(home)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120)


def build_models(work: Path, names: set[str], env: dict[str, str]) -> dict[str, Path]:
    """bench/gpu_models.py in its own process (the GPU memory it took is freed when it ends)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_models.py"), str(work / "models"), *sorted(names)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    sys.stderr.write(proc.stderr[-3000:])
    if proc.returncode:
        raise SystemExit(f"gpu_check: building the models failed (exit {proc.returncode})")
    return {k: Path(v) for k, v in (line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)}


@contextlib.contextmanager
def ballast(cap_gib: float, on: bool, env: dict[str, str]) -> Iterator[dict[str, Any] | None]:
    """bench/gpu_ballast.py holding all but `cap_gib` of the GPU while the block runs."""
    if not on:
        yield None
        return
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "gpu_ballast.py"), "--cap-gib", str(cap_gib)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    line = proc.stdout.readline() if proc.stdout else ""
    info = json.loads(line) if line.strip() else {"held": 0, "why": f"the ballast process ended ({proc.poll()})"}
    say(f"ballast: holding {info.get('held', 0) / GIB:.1f} GiB, {info.get('free_after', 0) / GIB:.1f} GiB left free"
        + (f" ({info['why']})" if info.get("why") else ""))
    try:
        yield info
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(60)


def drop(home: Path, name: str, model: Path, options: dict[str, Any], records: int, epochs: float,
         priority: int) -> None:
    """Sidecar first (it waits for its dataset), then the data: the order a user's `mv` gives."""
    opts = {"base_model": str(model), "epochs": epochs, "eval_fraction": 0.0, "probe_count": 0, "save_every": 10**9,
            "log_every": 10, "priority": priority, **options}
    lines = [f"{k} = {str(v).lower() if isinstance(v, bool) else json.dumps(v)}" for k, v in opts.items()]
    (home / "inbox" / f"{name}.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = json.loads(ALPACA.read_text(encoding="utf-8"))[:records]
    tmp = home / "inbox" / f".{name}.json"
    tmp.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    os.rename(tmp, home / "inbox" / f"{name}.json")


def wait_run(home: Path, name: str, env: dict[str, str], deadline: float, on_training: Any) -> dict[str, Any]:
    """Poll `overnight runs --json` until the run `name` ends (or its drop is rejected, or the deadline passes)."""
    while time.monotonic() < deadline:
        refused = sorted((home / "inbox" / "rejected").glob(f"{name}*.error.txt"))
        if refused:
            return {"state": "rejected", "reason": refused[0].read_text(encoding="utf-8", errors="replace")[:600]}
        listed = json.loads(overnight(home, "runs", "--json", env=env).stdout or "[]")
        row = next((r for r in listed if r.get("name") == name), None)
        if row and on_training and row["state"] == "training" and (row.get("step") or 0) >= 1:
            on_training()
            on_training = None
        if row and row["state"] in TERMINAL:
            return row
        time.sleep(2)
    listed = json.loads(overnight(home, "runs", "--json", env=env).stdout or "[]")
    row = next((r for r in listed if r.get("name") == name), None)
    if row:
        overnight(home, "stop", row["id"], env=env)  # it must not train beside the rows that follow
    return {**(row or {}), "state": "timed out", "reason": "the check's --deadline passed"}


class Dashboard:
    """The dashboard on a home, rendered headless once (bench/tui_capture.py): the front screen and the System tab.

    Taken while the 8B LoRA row trains (its steps are bound by the GPU, so the renderer's CPU time does not slow
    them down, as it would a 0.5B row's), else while the last row trains; after that row if it ended first."""

    def __init__(self, home: Path, out: Path, env: dict[str, str]) -> None:
        self.home, self.out, self.env, self.done = home, out, env, False

    def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        res = subprocess.run([sys.executable, str(REPO / "bench" / "tui_capture.py"), str(self.home), str(self.out)],
                             capture_output=True, text=True, env=self.env, cwd=REPO, timeout=120)
        say("dashboard captured" if res.returncode == 0 else f"dashboard capture failed: {res.stderr[-1500:]}")


def run_baseline(b: Baseline, model: Path, run_dir: Path, logs: Path, slug: str, env: dict[str, str],
                 deadline: float) -> dict[str, Any]:
    out = logs / f"{slug}-{b.kind}.json"
    cmd = [sys.executable, str(REPO / "bench" / "gpu_baselines.py"), b.kind, "--model", str(model), "--tokens",
           str(run_dir / "tokens.npz"), "--out", str(out), "--quantization", b.quantization]
    cmd += ["--checkpointing"] if b.checkpointing else []
    try:
        with open(logs / f"{slug}-{b.kind}.log", "w", encoding="utf-8") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                           timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        return {"outcome": "timed out", "reason": "the check's --deadline passed"}
    if not out.exists():
        tail = (logs / f"{slug}-{b.kind}.log").read_text(encoding="utf-8", errors="replace")[-600:]
        return {"outcome": "failed", "reason": tail}
    return json.loads(out.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------ figures

def console_messages(run_dir: Path) -> list[str]:
    text = (run_dir / "console.log").read_text(encoding="utf-8", errors="replace") if run_dir.is_dir() else ""
    return [line.split("] ", 1)[-1] for line in text.splitlines()]


def sequence_lengths(run_dir: Path) -> list[int]:
    import numpy as np

    with np.load(run_dir / "tokens.npz", allow_pickle=False) as z:
        return z["train_lengths"].tolist()


def overnight_figures(run: dict[str, Any]) -> dict[str, Any]:
    """One overnight row from its run folder: result.json, console.log, tokens.npz."""
    run_dir = Path(run.get("run_dir") or "/nonexistent")
    messages = console_messages(run_dir)
    fig: dict[str, Any] = {"outcome": run["state"], "reason": run.get("reason"), "run_dir": str(run_dir),
                           "plan": [m for m in messages if any(w in m.lower() for w in PLAN_WORDS)
                                    and not m.startswith(("options:", "command:"))],
                           # every console line saying so (the ladder's retries, a launcher's restart, the
                           # last error): the lines themselves are in the plan list
                           "oom_retries": sum("out of memory" in m.lower() for m in messages
                                              if not m.startswith(("options:", "command:")))}
    if not (run_dir / "result.json").exists():
        return fig
    result = json.loads((run_dir / "result.json").read_text())
    wall = result.get("train_seconds") or 0.0
    seen, computed = result.get("tokens_seen") or 0, result.get("tokens_computed") or 0
    fig.update(outcome=result["outcome"], reason=result.get("reason"), device=result.get("device"),
               device_name=result.get("device_name"),
               steps=result.get("step"), wall_s=wall, useful_tokens=seen, computed_tokens=computed,
               useful_per_s=seen / wall if wall else None, computed_per_s=computed / wall if wall else None,
               peak_gpu_memory=result.get("peak_gpu_memory"), final_loss=result.get("final_loss"),
               versions=result.get("versions"), batch_plan=result.get("plan"))
    if result.get("plan"):  # the trainer's own count of its out-of-memory retries (the console lines: a fallback)
        fig["oom_retries"] = result["plan"]["out_of_memory_retries"]
    if (run_dir / "tokens.npz").exists():
        lengths = sequence_lengths(run_dir)
        fig.update(sequences=len(lengths), mean_attention_length=attention_length(lengths))
    return fig


def baseline_figures(res: dict[str, Any]) -> dict[str, Any]:
    wall = res.get("wall_s") or 0.0
    return {**res, "useful_per_s": res["useful_tokens"] / wall if wall and res.get("useful_tokens") else None,
            "computed_per_s": res["computed_tokens"] / wall if wall and res.get("computed_tokens") else None}


def add_mfu(fig: dict[str, Any], shape: Shape | None, attention_len: float | None,
            card: tuple[str, float] | None) -> None:
    if shape and attention_len is not None and card and fig.get("useful_per_s"):
        fig["mfu"] = flops_per_token(shape, LORA_R, attention_len) * fig["useful_per_s"] / card[1]


def model_shape(model: Path) -> Shape | None:
    return Shape.from_config(json.loads((model / "config.json").read_text()))


def goals(by_slug: dict[str, Row], judged: bool) -> list[dict[str, Any]]:
    """Issue 23's goals, each with what this run measured and whether it met it (None: not measured/judged)."""
    def fig(slug: str) -> dict[str, Any]:
        return by_slug[slug].figures if slug in by_slug else {}

    def vs(slug: str, kind: str) -> dict[str, Any]:
        row = by_slug.get(slug)
        return next((b for b in (row.against if row else []) if b["kind"] == kind), {})

    out = []
    small, big, q = fig("lora-0.5b"), fig("lora-8b"), fig("qlora-8b-24g")
    mfu = small.get("mfu")
    out.append(("0.5B LoRA bf16 >= 20% MFU on useful tokens", "-" if mfu is None else f"{mfu:.1%}",
                None if mfu is None else mfu >= 0.20))
    plain = vs("lora-0.5b", "trainer")
    ratio, mem = plain.get("speedup"), plain.get("memory_ratio")
    out.append((">= 3x the plain Trainer's useful tok/s at <= its peak memory",
                "-" if ratio is None else f"{ratio:.2f}x, memory {mem:.2f}x" if mem is not None else f"{ratio:.2f}x",
                None if ratio is None else ratio >= 3 and (mem is None or mem <= 1.0)))
    mfu = big.get("mfu")
    out.append(("8B LoRA bf16 >= 35% MFU", "-" if mfu is None else f"{mfu:.1%}", None if mfu is None else mfu >= 0.35))
    trl = vs("qlora-8b-24g", "trl")
    ratio, ooms = trl.get("speedup"), q.get("oom_retries")
    done = q.get("outcome") == "completed"
    out.append(("8B QLoRA under 24 GiB: zero OOM retries and >= 1.5x TRL's useful tok/s",
                "-" if not q else f"{q.get('outcome')}, {ooms} OOM retries, "
                + ("-" if ratio is None else f"{ratio:.2f}x TRL"),
                None if not q or ratio is None else done and ooms == 0 and ratio >= 1.5))
    return [{"goal": g, "measured": m, "met": met if judged else None} for g, m, met in out]


# ------------------------------------------------------------------------------------------------ report

def _f(x: Any, fmt: str, unit: str = "") -> str:
    return "-" if x is None else format(x, fmt) + unit


def _budget(plan: list[str]) -> str:
    """The micro-batches the trainer chose, from its console (the why is in the plan lines below the table)."""
    line = next((m for m in plan if m.startswith("batches:")), "") or next(
        (m for m in plan if m.startswith("batching:")), "")
    return line.split(": ", 1)[-1].split(" (")[0][:70] or "-"


def table(rs: list[Row]) -> str:
    lines = ["| row | trainer | outcome | useful tok/s | computed tok/s | MFU | peak GPU mem | OOM retries | batches "
             "| overnight ÷ this |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rs:
        f = r.figures
        mem = f.get("peak_gpu_memory")
        lines.append(f"| {r.label} | overnight | {f.get('outcome', '-')} | {_f(f.get('useful_per_s'), ',.0f')} | "
                     f"{_f(f.get('computed_per_s'), ',.0f')} | {_f(f.get('mfu'), '.1%')} | "
                     f"{_f(mem and mem / GIB, '.1f', ' GiB')} | {f.get('oom_retries', '-')} | "
                     f"{_budget(f.get('plan', []))} | |")
        for b in r.against:
            mem = b.get("peak_gpu_memory")
            batches = f"batch {b['batch']} x accum {b['grad_accum']}" if b.get("batch") else "-"
            lines.append(f"| | {b['label']} | {b.get('outcome', '-')} | {_f(b.get('useful_per_s'), ',.0f')} | "
                         f"{_f(b.get('computed_per_s'), ',.0f')} | {_f(b.get('mfu'), '.1%')} | "
                         f"{_f(mem and mem / GIB, '.1f', ' GiB')} | {b.get('oom_retries', '-')} | {batches} | "
                         f"{_f(b.get('speedup'), '.2f', 'x')} tok/s, {_f(b.get('memory_ratio'), '.2f', 'x')} memory |")
    return "\n".join(lines)


def report(rs: list[Row], device: str, card: tuple[str, float] | None, gs: list[dict[str, Any]], judged: bool,
           seconds: float) -> str:
    versions = next((r.figures["versions"] for r in rs if r.figures.get("versions")), {})
    peak_line = (f"dense peak used for MFU: {card[1] / 1e12:,.1f} TFLOP/s ({card[0]}, bench/gpu_peaks.py)" if card
                 else "no MFU: not a GPU in bench/gpu_peaks.py's table" if device != "cpu" else "no MFU on the CPU")
    out = [f"**{device}** — {time.strftime('%Y-%m-%d')}, {seconds:.0f} s in all; "
           + ", ".join(f"{k} {v}" for k, v in versions.items()) + f"; {peak_line}", "", table(rs), ""]
    for r in rs:
        f = r.figures
        extra = (f"; {f['sequences']} sequences × {r.epochs:g} epoch(s), {f.get('useful_tokens', 0):,} useful tokens, "
                 f"{f.get('computed_tokens', 0):,} computed, {f.get('wall_s', 0):.1f} s"
                 if f.get("sequences") else "")
        out.append(f"- {r.label}: {f.get('outcome')}{' (' + str(f['reason']) + ')' if f.get('reason') else ''}{extra}")
        out += [f"  - trainer: {m}" for m in f.get("plan", [])]
        for b in r.against:
            why = f" ({b['reason']})" if b.get("reason") else ""
            per_epoch = (f.get("useful_tokens") or 0) / r.epochs  # the baselines train one epoch
            same = ("" if not b.get("useful_tokens") else "; the same useful tokens as one epoch of overnight's"
                    if b["useful_tokens"] == per_epoch else "; OTHER useful tokens than one epoch of overnight's")
            out.append(f"  - {b['label']}: {b.get('outcome')}{why}; {b.get('note', '')}"
                       + (f"; {b['useful_tokens']:,} useful tokens in {b['wall_s']:.1f} s, {b['steps']} steps"
                          if b.get("useful_tokens") else "") + same)
    out += ["", "| issue 23 goal | measured | met |", "| --- | --- | --- |"]
    verdict = {True: "yes", False: "no", None: "-" if judged else "not judged"}
    out += [f"| {g['goal']} | {g['measured']} | {verdict[g['met']]} |" for g in gs]
    if not judged:
        out.append("\nGoals not judged: the figures are from the CPU or the tiny model (the check's plumbing only).")
    return "\n".join(out)


def save_logs(work: Path, home: Path, out: Path) -> None:
    """Every run's console.log and every baseline's log, in one file (what comes back from a device call)."""
    with tarfile.open(out / "gpu_check_logs.tar.gz", "w:gz") as tar:
        for log in sorted(home.glob("runs/*/console.log")):
            tar.add(log, arcname=f"runs/{log.parent.name}/console.log")
        for f in sorted((work / "logs").glob("*")):
            tar.add(f, arcname=f"baselines/{f.name}")
        for f in sorted((home / "inbox" / "rejected").glob("*.error.txt")):
            tar.add(f, arcname=f"rejected/{f.name}")


# ------------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="train on the CPU (CUDA_VISIBLE_DEVICES=''); no ballast")
    p.add_argument("--tiny", action="store_true", help="the embedded tiny model for every row, fewer records")
    p.add_argument("--only", default=None, help="comma-separated rows (lora-0.5b, lora-8b, qlora-8b-24g, "
                                                 "lora-0.5b-noliger); default all")
    p.add_argument("--records", type=int, default=None, help="alpaca records of the 0.5B rows (default all 999; "
                                                              "16 with --tiny)")
    p.add_argument("--records-big", type=int, default=None, help="records of the 8B LoRA row (default 256; 12 with "
                                                                  "--tiny)")
    p.add_argument("--records-qlora", type=int, default=None, help="records of the 8B QLoRA row (default 128; 12 "
                                                                    "with --tiny)")
    p.add_argument("--epochs", type=float, default=None, help="overnight's epochs on the LoRA rows (default 2; 1 "
                                                              "with --tiny); the QLoRA row and the baselines train 1")
    p.add_argument("--cap-gib", type=float, default=24.0, help="the emulated card of the QLoRA row (default 24)")
    p.add_argument("--big-baseline", action="store_true", help="also the plain Trainer on the 8B LoRA row")
    p.add_argument("--no-baselines", action="store_true", help="overnight's rows alone")
    p.add_argument("--no-dashboard", action="store_true", help="skip the headless dashboard capture")
    p.add_argument("--deadline", type=float, default=500, help="seconds for the rows (default 500: a device "
                   "command may run 600, and the wheels' install, the daemon's stop and the report come on top); "
                   "rows not started by then are skipped, a run still going is stopped")
    p.add_argument("--work", type=Path, default=None, help="where the models and the home go (default: a new "
                   "temporary folder; an earlier --work reuses its models)")
    p.add_argument("--out", type=Path, default=None, help="where the figures go")
    args = p.parse_args(argv)
    import torch
    if not args.cpu and not torch.cuda.is_available():  # its real rows build an 8B model: ~32 GB of the CPU's memory
        p.error("no CUDA GPU is visible here. Fix: run it where one is (bash bench/device_check.sh), or on the CPU "
                "with --cpu --tiny")
    started = time.monotonic()
    deadline = started + args.deadline
    out = args.out or Path(os.environ.get("OUT") or REPO / "bench" / "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    work = args.work or Path(tempfile.mkdtemp(prefix="overnight-gpu-check-"))
    home = work / f"home-{time.strftime('%H%M%S')}"
    for d in ("inbox", "control", "runs"):
        (home / d).mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    args.epochs = args.epochs or (1 if args.tiny else 2)
    todo = rows(args)
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - {r.slug for r in todo}
        if unknown:
            p.error(f"--only: no row {', '.join(sorted(unknown))}")
        todo = [r for r in todo if r.slug in wanted]
    for r in todo:
        if args.tiny:  # every row trains the tiny model: say so in each label
            r.model, r.label = "tiny", r.label.replace("0.5B", "tiny (as 0.5B)").replace("8B", "tiny (as 8B)")
        if args.cpu:
            r.label = r.label.replace("bf16", "fp32").replace("24 GiB cap", "no cap on the CPU")
        if args.no_baselines:
            r.baselines = []
    say(f"building the models ({', '.join(sorted({r.model for r in todo}))}) under {work / 'models'}")
    models = build_models(work, {r.model for r in todo}, env)
    daemon = subprocess.Popen([sys.executable, "-m", "daemon", "daemon", "--home", str(home), "--quiet",
                               "--settle", "1"],  # drops arrive by rename
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    dashboard = None if args.no_dashboard else Dashboard(home, out, env)
    shown_in = "lora-8b" if any(r.slug == "lora-8b" for r in todo) else todo[-1].slug
    try:
        for i, r in enumerate(todo):
            if time.monotonic() > deadline:
                r.figures = {"outcome": "not run", "reason": "the check's --deadline passed before it started"}
                continue
            name = f"gc{i}-{r.slug}"
            say(f"row {r.slug}: dropping {name}")
            with ballast(args.cap_gib, r.capped and not args.cpu, env):
                drop(home, name, models[r.model], r.options, r.records, r.epochs, 100 - i)
                run = wait_run(home, name, env, deadline, dashboard if r.slug == shown_in else None)
                if dashboard and r.slug == shown_in:
                    dashboard()  # the run ended before the dashboard was taken: the screens after it
                r.figures = overnight_figures(run)
                say(f"row {r.slug}: overnight {r.figures['outcome']}, {_f(r.figures.get('useful_per_s'), ',.0f')} "
                    f"useful tok/s")
                run_dir = Path(r.figures["run_dir"])
                for b in r.baselines:
                    if not (run_dir / "tokens.npz").exists():
                        res = {"outcome": "not run", "reason": "overnight's run left no tokens.npz to train on"}
                    else:
                        say(f"row {r.slug}: {b.label}")
                        res = run_baseline(b, models[r.model], run_dir, work / "logs", r.slug, env, deadline)
                    r.against.append({"kind": b.kind, "label": b.label, **baseline_figures(res)})
                    say(f"row {r.slug}: {b.label} {res.get('outcome')}")
    finally:
        daemon.terminate()
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
    gpu = next((r.figures["device_name"] for r in todo if r.figures.get("device") == "cuda"), None)
    device = gpu or "cpu"
    card = peak(gpu) if gpu else None
    for r in todo:
        shape, s_bar = model_shape(models[r.model]), r.figures.get("mean_attention_length")
        add_mfu(r.figures, shape, s_bar, card)
        mine, mem = r.figures.get("useful_per_s"), r.figures.get("peak_gpu_memory")
        for b in r.against:
            add_mfu(b, shape, s_bar, card)
            if mine and b.get("useful_per_s"):
                b["speedup"] = mine / b["useful_per_s"]
            if mem and b.get("peak_gpu_memory"):
                b["memory_ratio"] = mem / b["peak_gpu_memory"]
    judged = not args.tiny and device != "cpu"
    gs = goals({r.slug: r for r in todo}, judged)
    text = report(todo, device, card, gs, judged, time.monotonic() - started)
    print(text, flush=True)
    for screen in ("tui_front.txt", "tui_system.txt"):
        if (out / screen).exists():
            print(f"--- {screen}\n{(out / screen).read_text()}")
    (out / "gpu_check.md").write_text(text + "\n", encoding="utf-8")
    (out / "gpu_check.json").write_text(json.dumps(
        {"device": device, "peak_tflops": card and card[1] / 1e12, "goals": gs, "judged": judged,
         "rows": [{"slug": r.slug, "label": r.label, "overnight": r.figures, "baselines": r.against} for r in todo]},
        indent=1, default=str) + "\n", encoding="utf-8")
    save_logs(work, home, out)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)  # the 8B's 16 GB on the device's disk
    print(f"figures in {out}; {time.monotonic() - started:.0f} s in all")
    every = [r.figures.get("outcome") for r in todo] + [b.get("outcome") for r in todo for b in r.against]
    return 0 if all(o == "completed" for o in every) else 1


if __name__ == "__main__":
    sys.exit(main())
