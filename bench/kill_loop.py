"""kill -9 loop: SIGKILL the daemon, the trainer or both at random moments of a run, then check it trained exactly.

    python bench/kill_loop.py                          # 20 kills in each of the modes daemon, trainer, both
    python bench/kill_loop.py --mode trainer --kills 20 --seed 7
    python bench/kill_loop.py --mode mixed             # each kill picks daemon, trainer or both
    python bench/kill_loop.py --mode mixed --objective dpo   # the same for a preference (DPO) run

The real daemon (`python -m daemon daemon`) on a temporary home with the embedded tiny model. One drop trains
uninterrupted first (the reference); then, per mode, the same data and options are dropped under another name and,
while that run trains, the script kills with SIGKILL at seeded random moments: while the trainer loads
("preparing"), at a random step ("training"), while a checkpoint is being written ("saving"), or just after a daemon
restart ("starting"); a killed daemon is restarted at once. After the last kill the run is left to finish, and
the script checks: the run completed (DB, metadata.json, result.json, one model version), moving only along the
spec's state machine; its per-step losses in metrics.jsonl and in the DB equal the uninterrupted run's exactly,
with no step recorded twice; every checkpoint ever written is still there (or moved aside as
damaged-…), never deleted (retention is switched off); the dataset is in exactly one place; never more than one
trainer process at a time. It prints a line per kill and per trial, the wall time against the uninterrupted run,
and exits 1 on any violation.

A kill that lands before the run made a new checkpoint since its last start is no progress; overnight gives a run
3 such attempts in a row (daemon/engine/endstate.py MAX_ATTEMPTS), so the loop never aims two of them in a row: after a
kill that left the newest checkpoint unchanged, the next kill waits until the run has checkpointed past it.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from daemon.core.queries import Reader  # noqa: E402
from daemon.engine.runner import trainer_processes  # noqa: E402

SAVE_EVERY = 5
WORDS = ["apple", "stone", "river", "green", "music", "horse", "bread", "moon"]
TARGETS = ("daemon", "trainer", "both")
_ACTIVE, _ENDED = {"preparing", "training", "paused"}, {"completed", "failed", "stopped", "skipped"}
# the spec's run state machine: every transition the DB may record (as tests/test_stateful.py checks it)
ALLOWED = ({(None, "queued"), ("queued", "preparing"), ("preparing", "training"), ("preparing", "paused"),
            ("training", "paused"), ("paused", "training")}
           | {(a, b) for a in _ACTIVE for b in _ENDED | {"queued"}}
           | {("queued", b) for b in ("stopped", "skipped", "failed")}
           | {(a, "queued") for a in ("stopped", "skipped", "failed")})
# moments a kill may be aimed at, by target (the weights are the chance of each)
MOMENTS = {"daemon": {"training": 0.6, "saving": 0.15, "preparing": 0.1, "starting": 0.15},
           "trainer": {"training": 0.6, "saving": 0.2, "preparing": 0.2},
           "both": {"training": 0.6, "saving": 0.15, "preparing": 0.1, "starting": 0.15}}


def steps_for(kills: int) -> int:
    """Steps enough that every kill lands before the run ends: a kill waits at most 2 checkpoints' worth."""
    return 2 * SAVE_EVERY * kills + 40


def env() -> dict[str, str]:
    """The CPU, one thread per process (as the tests run): exact comparisons need deterministic kernels."""
    e = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def write_drop(folder: Path, name: str, steps: int, objective: str = "sft") -> list[Path]:
    """The reverse-three-words task and its sidecar: log every step, checkpoint every SAVE_EVERY, no probes.
    objective "dpo": the same prompts as preference pairs (the reversal chosen, the words in order rejected)."""
    rng = random.Random(0)
    rows = []
    for _ in range(200):
        w = [rng.choice(WORDS) for _ in range(3)]
        prompt, answer = "reverse: " + " ".join(w) + "\n", " ".join(w[::-1])
        rows.append(json.dumps({"prompt": prompt, "completion": answer} if objective == "sft" else
                               {"prompt": prompt, "chosen": answer, "rejected": " ".join(w) + " " + w[0]}))
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("\n".join(rows) + "\n")
    opts = {"max_steps": steps, "batch_size": 4, "max_length": 32, "lora_r": 8, "lora_alpha": 16,
            "learning_rate": 3e-3, "log_every": 1, "save_every": SAVE_EVERY, "probe_count": 0,
            "eval_fraction": 0.0, "seed": 7}
    side = folder / f"{name}.toml"
    side.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in opts.items()))
    return [side, data]


class Stuck(RuntimeError):
    """A run that does not come back (or a daemon that does not start): a finding of the loop, not a crash."""


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise Stuck(f"timed out after {timeout:g} s waiting for {what}")


class Home:
    """A temporary home with the tiny model, and its daemon (started, killed, restarted by the loop)."""

    def __init__(self, root: Path, model: Path | None = None, objective: str = "sft") -> None:
        from daemon.client.tinymodel import ensure_tiny_model
        self.root = root
        self.objective = objective  # what its drops train: "sft" (prompt/completion) or "dpo" (preference pairs)
        for d in ("inbox", "control", "runs"):
            (root / d).mkdir(parents=True, exist_ok=True)
        model = model or ensure_tiny_model(root / "models")
        # retention off: every checkpoint written must still be there at the end
        (root / "overnight.toml").write_text(f'base_model = "{model}"\nkeep_checkpoints = 1000000\n')
        self.daemon: subprocess.Popen | None = None
        self.daemon_starts = 0

    # --- the daemon -----------------------------------------------------------------------------------
    def _started(self) -> int:
        log = self.root / "overnight.log"
        return log.read_text(errors="replace").count("daemon started") if log.exists() else 0

    def start_daemon(self, wait: bool = True) -> None:
        before = self._started()
        out = open(self.root / "daemon.out", "ab")
        self.daemon = subprocess.Popen([sys.executable, "-m", "daemon", "daemon", "--home", str(self.root),
                                        "--settle", "0.3", "--quiet"], cwd=REPO, stdout=out,
                                       stderr=subprocess.STDOUT, env=env())
        out.close()
        self.daemon_starts += 1
        if wait:
            d = self.daemon
            wait_for(lambda: self._started() > before or d.poll() is not None, 60, "the daemon to start")
            if d.poll() is not None:
                raise Stuck(f"the daemon exited at start (code {d.returncode}); see {self.root}/daemon.out")

    def kill_daemon(self) -> None:
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGKILL)
        if self.daemon:
            self.daemon.wait(30)

    def stop_daemon(self) -> None:
        if self.daemon and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(120)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait(30)

    # --- what is running and where it is ----------------------------------------------------------------
    def trainers(self) -> list[int]:
        """PIDs of live trainer processes on this home's runs (zombies not counted)."""
        return list(trainer_processes(self.root / "runs"))

    def run(self, name: str) -> dict[str, Any] | None:
        db = self.root / "overnight.db"
        if not db.exists():
            return None
        try:
            r = Reader(db)
        except Exception:  # noqa: BLE001 - a DB being created or rebuilt right now
            return None
        try:
            return r.find_run(name)
        finally:
            r.close()

    def drop(self, files: list[Path]) -> None:
        for f in files:  # sidecar first, then the dataset, each by rename (the recommended way to drop)
            os.rename(f, self.root / "inbox" / f.name)


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def checkpoint_steps(folder: Path) -> list[int]:
    try:
        return sorted(int(p.name[5:]) for p in folder.iterdir() if p.name.startswith("step-") and p.name[5:].isdigit())
    except OSError:
        return []


def alive(pid: Any) -> bool:
    """A process that runs (not a zombie its parent has not reaped yet)."""
    try:
        return isinstance(pid, int) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def last_step(metrics: Path) -> int:
    """The step of the last complete record in metrics.jsonl (written at every step: log_every = 1)."""
    try:
        lines = metrics.read_bytes().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


class Watch(threading.Thread):
    """Samples every 0.25 s: live trainers (the most at once), the run's progress and its checkpoint names."""

    def __init__(self, home: Home) -> None:
        super().__init__(daemon=True)
        self.home = home
        self.run_dir: Path | None = None
        self.max_trainers = 0
        self.trainer_pids: set[int] = set()
        self.samples: list[tuple[float, int, Any]] = []  # (monotonic, step, pid) from progress.json
        self.checkpoints: set[str] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.sample()
            self.halt.wait(0.25)

    def sample(self) -> None:
        pids = self.home.trainers()
        self.max_trainers = max(self.max_trainers, len(pids))
        self.trainer_pids.update(pids)
        if self.run_dir is not None:
            p = read_json(self.run_dir / "progress.json")
            if p.get("state") == "training" and alive(p.get("pid")):
                self.samples.append((time.monotonic(), last_step(self.run_dir / "metrics.jsonl"), p.get("pid")))
            self.checkpoints.update(f"step-{s}" for s in checkpoint_steps(self.run_dir / "checkpoints"))

    def stop(self) -> None:
        self.halt.set()
        self.join(5)
        self.sample()


@dataclass
class Kill:
    n: int
    target: str
    aimed: str  # the moment aimed at
    landed: str  # what the run was doing when the kill landed (progress.json of the live trainer)
    step: int
    newest: int  # newest complete checkpoint's step at the kill
    at: float
    forced: bool = False  # aimed past a new checkpoint because the kill before made no progress
    back_s: float | None = None  # until a trainer stepped past `step` again


@dataclass
class Trial:
    mode: str
    name: str
    kills: list[Kill] = field(default_factory=list)
    wall_s: float = 0.0
    state: str = ""
    steps: int = 0
    replayed: int = 0
    trainer_starts: int = 0
    max_trainers: int = 0
    checkpoints_seen: int = 0
    damaged: int = 0
    violations: list[str] = field(default_factory=list)


class Loop:
    """One trial: drop the run, kill it `len(targets)` times at random moments, let it finish."""

    def __init__(self, home: Home, name: str, targets: list[str], rng: random.Random, steps: int,
                 say: Callable[[str], None] = print, plan: list[tuple[str, str]] | None = None) -> None:
        self.home, self.name, self.targets, self.rng, self.steps, self.say = home, name, targets, rng, steps, say
        self.given = plan
        self.ending = False
        self.run_dir: Path | None = None
        self.kills: list[Kill] = []

    # --- what the run is doing ------------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        return read_json(self.run_dir / "progress.json") if self.run_dir else {}

    def newest(self) -> int:
        steps = checkpoint_steps(self.run_dir / "checkpoints") if self.run_dir else []
        done = [s for s in steps if (self.run_dir / "checkpoints" / f"step-{s}" / "trainer_state.json").exists()]
        return done[-1] if done else 0

    def live_step(self) -> int | None:
        """The last step logged by the trainer that is training now (None while none is: loading, gone)."""
        p = self.progress()
        if p.get("state") not in ("training", "saving", "paused") or not alive(p.get("pid")):
            return None
        return last_step(self.run_dir / "metrics.jsonl")  # progress.json is rewritten at most twice a second

    def ended(self) -> bool:
        run = self.home.run(self.name)
        return bool(run and run["state"] in ("completed", "failed", "stopped", "skipped"))

    def wait_step(self, target: int, timeout: float = 600) -> bool:
        """Until a live trainer has logged step `target`; False when the run ended first."""
        end = checked = time.monotonic()
        end += timeout
        while time.monotonic() < end:
            s = self.live_step()
            if s is not None and s >= target:
                return True
            if time.monotonic() - checked > 0.5:  # the DB, less often
                checked = time.monotonic()
                if self.ended():
                    return False
            time.sleep(0.01)
        raise Stuck(f"timed out after {timeout:g} s waiting for step {target} of {self.name}")

    # --- aiming ---------------------------------------------------------------------------------------
    def aim(self, moment: str, forced: bool) -> bool:
        """Wait for the moment; False when the run ended before it came."""
        base = max(self.newest(), last_step(self.run_dir / "metrics.jsonl"))
        if forced:  # past the next checkpoint boundary, so that this attempt makes progress
            return self.wait_step((self.newest() // SAVE_EVERY + 1) * SAVE_EVERY + self.rng.randint(1, SAVE_EVERY))
        if moment == "training":
            if not self.wait_step(base + self.rng.randint(1, 2 * SAVE_EVERY)):
                return False
            time.sleep(self.rng.uniform(0, 0.1))  # anywhere within the step
            return True
        if moment == "saving":
            boundary = (base // SAVE_EVERY + self.rng.randint(1, 2)) * SAVE_EVERY
            if not self.wait_step(boundary - 1):
                return False
            ckpts = self.run_dir / "checkpoints"
            # the Trainer writes checkpoint-N, then overnight renames it step-N: kill while it is being written
            end = time.monotonic() + 60
            while time.monotonic() < end and not (ckpts / f"checkpoint-{boundary}").exists():
                if (ckpts / f"step-{boundary}").exists() or last_step(self.run_dir / "metrics.jsonl") > boundary:
                    break  # missed it: the kill lands just after the save
                time.sleep(0.002)
            return not self.ended()
        if moment == "preparing":
            old = self.progress().get("pid")
            wait_for(lambda: [p for p in self.home.trainers() if p != old] or self.ended(), 120, "a new trainer")
            time.sleep(self.rng.uniform(0.0, 3.0))
            return not self.ended()
        if moment == "ending":  # the trainer has written a completed result.json and is on its way out
            result, checked = self.run_dir / "result.json", time.monotonic()
            while read_json(result).get("outcome") != "completed":  # not an earlier attempt's "stopped"
                if time.monotonic() - checked > 0.5:
                    checked = time.monotonic()
                    if self.ended():
                        return False
                time.sleep(0.002)
            return True
        if moment == "starting":  # the daemon was restarted just now (without waiting for it)
            time.sleep(self.rng.uniform(0.05, 1.5))
            return True
        raise ValueError(moment)

    def landed(self) -> str:
        """What the run was doing: progress.json's state of the live trainer, else loading (before its first
        progress.json) or no trainer."""
        p = self.progress()
        pids = self.home.trainers()
        if p.get("pid") in pids:
            return str(p.get("state") or "?")
        return "loading" if pids else "no trainer"

    # --- the loop -------------------------------------------------------------------------------------
    def plan(self) -> list[tuple[str, str]]:
        """(target, moment) per kill: "starting" only right after a kill that restarted the daemon."""
        if self.given is not None:
            return list(self.given)
        out: list[tuple[str, str]] = []
        for target in self.targets:
            weights = dict(MOMENTS[target])
            if not out or out[-1][0] == "trainer":
                weights.pop("starting", None)
            out.append((target, self.rng.choices(list(weights), list(weights.values()))[0]))
        if out and self.ending:  # the last kill as the trainer ends: result.json written, the process not gone
            out[-1] = (out[-1][0], "ending")
        return out

    def kill(self, n: int, target: str, moment: str, forced: bool) -> Kill:
        trainers = self.home.trainers() if target in ("trainer", "both") else []
        k = Kill(n, target, moment, self.landed(), last_step(self.run_dir / "metrics.jsonl"), self.newest(),
                 time.monotonic(), forced)
        for pid in trainers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if target in ("daemon", "both"):
            self.home.kill_daemon()
        return k

    def run(self, watch: Watch) -> None:
        plan = self.plan()
        src = self.home.root / ".staging" / self.name
        self.home.drop(write_drop(src, self.name, self.steps, self.home.objective))
        run = wait_for(lambda: self.home.run(self.name), 120, f"{self.name} accepted")
        self.run_dir = watch.run_dir = Path(run["run_dir"])
        newest = [0]  # the newest checkpoint at the drop, then at each kill
        for n, (target, moment) in enumerate(plan, 1):
            # never two kills in a row that leave the newest checkpoint where it was (a crash loop, see above);
            # a daemon kill alone is never the end of a run: its trainer checkpoints and exits by itself
            forced = len(newest) > 1 and target != "daemon" and newest[-1] == newest[-2] and moment != "ending"
            if forced:
                moment = "training"
            if not self.aim(moment, forced):
                self.say(f"  the run ended before kill {n} could land" + ("" if moment == "ending" else
                                                                            ": use more steps"))
                break
            k = self.kill(n, target, moment, forced)
            self.kills.append(k)
            self.say(f"  kill {n:2d}/{len(plan)}: {target:7s} aimed at {moment + (' (forced)' if forced else ''):18s}"
                     f" landed {k.landed:10s} step {k.step:3d}, newest checkpoint step-{k.newest}")
            if target in ("daemon", "both"):
                nxt = plan[n][1] if n < len(plan) else None
                self.home.start_daemon(wait=nxt != "starting")
            newest.append(k.newest)
        # the morning: the run trains to the end by itself
        wait_for(self.ended, 60 * 30, f"{self.name} to end", interval=0.2)


def losses_of(records: list[dict[str, Any]]) -> tuple[dict[int, float], list[int]]:
    """Per-step training loss, and the steps recorded more than once."""
    out: dict[int, float] = {}
    twice = []
    for r in records:
        if r.get("loss") is None:
            continue
        if r["step"] in out:
            twice.append(r["step"])
        out[r["step"]] = r["loss"]
    return out, twice


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def read(home: Home, query: Callable[[Reader], Any]) -> Any:
    """One query on the home's DB, read-only, as the CLI reads it."""
    with closing(Reader(home.root / "overnight.db")) as r:
        return query(r)


@dataclass
class Reference:
    """The uninterrupted run: per-step losses, wall time from drop to completed, its folder."""
    losses: dict[int, float]
    wall_s: float
    run_dir: Path


def reference(home: Home, steps: int, timeout: float = 60 * 20) -> Reference:
    """Drop the run once and let it train uninterrupted."""
    name = f"ref{steps}"
    t0 = time.monotonic()
    home.drop(write_drop(home.root / ".staging" / name, name, steps, home.objective))
    wait_for(lambda: (r := home.run(name)) and r["state"] in ("completed", "failed"), timeout, "the reference",
             interval=0.2)
    wall = time.monotonic() - t0
    run = home.run(name)
    if run["state"] != "completed":
        raise SystemExit(f"the uninterrupted reference run ended {run['state']}: {run['reason']}")
    losses, _ = losses_of(jsonl(Path(run["run_dir"]) / "metrics.jsonl"))
    return Reference(losses, wall, Path(run["run_dir"]))


def same_adapter(a: Path, b: Path) -> bool:
    """The two final adapters hold the same tensors, bit for bit."""
    from safetensors.torch import load_file
    x, y = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    return x.keys() == y.keys() and all(bool((x[k] == y[k]).all()) for k in x)


def check(home: Home, loop: Loop, watch: Watch, reference: Reference) -> Trial:
    """Every invariant of the issue, on the ended run."""
    t = Trial(mode="", name=loop.name, kills=loop.kills)
    bad = t.violations
    ref = reference.losses
    run = home.run(loop.name)
    if run is None:
        bad.append(f"{loop.name} was never accepted")
        return t
    t.state = run["state"]
    if run["state"] != "completed":
        bad.append(f"the run ended {run['state']}: {run['reason']}")
    run_dir = Path(run["run_dir"])
    result = read_json(run_dir / "result.json")
    if result.get("outcome") != "completed":
        bad.append(f"result.json says {result.get('outcome')}: {result.get('reason')}")
    db_metrics = read(home, lambda r: r.metrics(run["id"]))
    for where, records in (("metrics.jsonl", jsonl(run_dir / "metrics.jsonl")), ("DB metrics", db_metrics)):
        losses, twice = losses_of(records)
        if twice:
            bad.append(f"{where}: steps recorded twice: {sorted(set(twice))[:10]}")
        if sorted(losses) != sorted(ref):
            missing = sorted(set(ref) - set(losses))
            extra = sorted(set(losses) - set(ref))
            bad.append(f"{where}: steps missing {missing[:10]} extra {extra[:10]}")
        diff = [s for s in ref if s in losses and losses[s] != ref[s]]
        if diff:
            worst = max(abs(losses[s] - ref[s]) for s in diff)
            bad.append(f"{where}: {len(diff)} losses differ from the uninterrupted run (first step {diff[0]}, "
                       f"max |diff| {worst:.3g})")
    t.steps = len(losses_of(jsonl(run_dir / "metrics.jsonl"))[0])
    if run["state"] == "completed" and not same_adapter(run_dir / "adapter", reference.run_dir / "adapter"):
        bad.append("the final adapter differs from the uninterrupted run's")
    ckpts = run_dir / "checkpoints"
    names = {p.name for p in ckpts.iterdir()} if ckpts.is_dir() else set()
    t.checkpoints_seen = len(watch.checkpoints)
    t.damaged = len([n for n in names if n.startswith("damaged-")])
    lost = [c for c in sorted(watch.checkpoints) if c not in names and not any(n.startswith(f"damaged-{c}")
                                                                                 for n in names)]
    if lost:
        bad.append(f"checkpoints deleted: {lost}")
    for f in (f"{loop.name}.jsonl", f"{loop.name}.toml"):
        places = [p for p in [home.root / "inbox" / f, home.root / "inbox" / "rejected" / f,
                              *(home.root / "runs").glob(f"[!.]*/dataset/{f}")] if p.exists()]
        if len(places) != 1:
            bad.append(f"{f} is in {len(places)} places: {places}")
    t.max_trainers = watch.max_trainers
    if watch.max_trainers > 1:
        bad.append(f"{watch.max_trainers} trainers ran at once")
    history = read(home, lambda r: r.transitions(run["id"]))
    t.trainer_starts = sum(1 for x in history if x["to_state"] == "preparing")
    odd = [(x["from_state"], x["to_state"]) for x in history if (x["from_state"], x["to_state"]) not in ALLOWED]
    if odd:
        bad.append(f"transitions outside the state machine: {odd}")
    meta = read_json(run_dir / "metadata.json")
    if meta.get("status") != run["state"]:
        bad.append(f"metadata.json says {meta.get('status')}, the DB {run['state']}")
    versions = [m for m in read(home, lambda r: r.models()) if m["run_id"] == run["id"]]
    if run["state"] == "completed" and len(versions) != 1:
        bad.append(f"{len(versions)} model versions registered for the run")
    if any(x["to_state"] == "failed" for x in history):
        bad.append("the run was failed on the way: " + "; ".join(x["reason"] or "" for x in history
                                                                 if x["to_state"] == "failed"))
    # steps trained twice: each resume drops the log records written after its checkpoint and says how many
    t.replayed = sum(int(m) for m in re.findall(r"dropped (\d+) log record",
                                                 (run_dir / "console.log").read_text(errors="replace")))
    for k in loop.kills:
        back = next((tm for tm, step, _pid in watch.samples if tm > k.at and step > k.step), None)
        k.back_s = None if back is None else back - k.at
    return t


def trial(home: Home, mode: str, kills: int, rng: random.Random, steps: int, ref: Reference,
          plan: list[tuple[str, str]] | None = None, say: Callable[[str], None] = print) -> Trial:
    """One trial of `mode`: its run dropped, killed `kills` times at seeded random moments, the last one as the
    trainer ends (or as `plan` says: (target, moment) pairs), then checked."""
    ref_wall = ref.wall_s
    targets = [t for t, _m in plan] if plan else [mode if mode in TARGETS else rng.choice(TARGETS)
                                                  for _ in range(kills)]
    name = f"k{mode}{len(list((home.root / 'runs').glob('*')))}"
    say(f"{mode}: {len(targets)} kills ({', '.join(targets) if len(targets) <= 6 else mode}) in a {steps}-step run")
    watch = Watch(home)
    watch.start()
    loop = Loop(home, name, targets, rng, steps, say, plan)
    loop.ending = plan is None
    t0 = time.monotonic()
    stuck = None
    try:
        loop.run(watch)
    except Stuck as e:
        stuck = f"stuck: {e}"
    finally:
        watch.stop()
    wall = time.monotonic() - t0
    t = check(home, loop, watch, ref)
    if stuck:
        t.violations.insert(0, stuck)
    t.mode, t.wall_s = mode, wall
    lost = wall - ref_wall
    backs = [k.back_s for k in t.kills if k.back_s is not None]
    say(f"{mode}: {len(t.kills)} kills, run {t.state}, {t.steps} steps, losses "
        f"{'== uninterrupted run' if not any('losses' in v or 'missing' in v for v in t.violations) else 'DIFFER'}"
        f", {t.replayed} steps replayed, {t.trainer_starts} trainer starts, max {t.max_trainers} trainer at once, "
        f"{t.checkpoints_seen} checkpoints kept ({t.damaged} moved aside); wall {wall:.1f} s vs {ref_wall:.1f} s "
        f"uninterrupted ({wall / ref_wall:.2f}x), {lost:.1f} s lost = {lost / max(1, len(t.kills)):.1f} s per kill"
        f"{f', back past the killed step after {statistics.median(backs):.1f} s (median)' if backs else ''}; "
        f"violations: {'; '.join(t.violations) if t.violations else 'none'}")
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None, help="default: random (printed, for a replay)")
    ap.add_argument("--mode", choices=["daemon", "trainer", "both", "mixed", "all"], default="all",
                    help="all = daemon, trainer and both, one trial each (default)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary home (its path is printed)")
    ap.add_argument("--objective", choices=["sft", "dpo"], default="sft",
                    help="dpo: the runs train preference pairs through TRL's DPOTrainer")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    rng = random.Random(seed)
    modes = list(TARGETS) if args.mode == "all" else [args.mode]
    steps = steps_for(args.kills)
    print(f"kill -9 loop: seed {seed} (replay: --seed {seed}), {args.kills} kills per mode, modes {modes}")
    tmp = tempfile.mkdtemp(prefix="overnight-killloop-")
    home = Home(Path(tmp) / "home", objective=args.objective)
    t0 = time.monotonic()
    trials: list[Trial] = []
    try:
        home.start_daemon()
        ref = reference(home, steps)
        ref_wall = ref.wall_s
        print(f"uninterrupted run: {len(ref.losses)} steps in {ref_wall:.1f} s (drop to completed)")
        for mode in modes:
            trials.append(trial(home, mode, args.kills, rng, steps, ref))
    finally:
        home.stop_daemon()
        for pid in home.trainers():  # a trainer left by a failed trial
            os.kill(pid, signal.SIGKILL)
        if args.keep:
            print(f"home kept: {home.root}")
        else:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print("| mode | kills | landed while loading / training / saving / ending / other | steps replayed | "
          "trainer starts | wall | vs uninterrupted | lost per kill | violations |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for t in trials:
        landed = [k.landed for k in t.kills]
        other = len(landed) - sum(landed.count(s) for s in ("preparing", "loading", "training", "saving",
                                                            "completed"))
        print(f"| {t.mode} | {len(t.kills)} | {landed.count('preparing') + landed.count('loading')} / "
              f"{landed.count('training')} / {landed.count('saving')} / {landed.count('completed')} / {other} | "
              f"{t.replayed} | {t.trainer_starts} | "
              f"{t.wall_s:.1f} s | {t.wall_s / ref_wall:.2f}x | {(t.wall_s - ref_wall) / max(1, len(t.kills)):.1f} s |"
              f" {len(t.violations)} |")
    print(f"total {time.monotonic() - t0:.0f} s; seed {seed}")
    failed = [t for t in trials if t.violations]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
