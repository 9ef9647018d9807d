"""The [executor] table without a cluster: what `overnight check` says of it, and a daemon whose machine has no
Slurm tools failing the run with the fix. The job script and the exit codes Slurm reports, as the daemon reads
them. (Jobs on a real Slurm: tests/test_slurm.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.engine.executors.slurm import SlurmExecutor, job_script
from daemon.engine.executors.slurmctl import _exit_code
from tests.conftest import DaemonProcess, overnight, wait_until


def _check(home: Path, table: str) -> subprocess.CompletedProcess:
    (home / "overnight.toml").write_text(table)
    return overnight("check", str(home / "overnight.toml"), home=home)


def test_check_names_every_bad_executor_key_with_its_fix(home):
    res = _check(home, '[executor]\nkind = "slurrm"\npartiton = "gpu"\ntime_limit = "soon"\ngpus_per_run = -1\n'
                       'extra_args = "--exclusive"\n')
    assert res.returncode == 1
    out = res.stdout + res.stderr
    for said in ("kind = 'slurrm' is not an executor; allowed: local, slurm", "no key 'partiton' (did you mean "
                 "'partition'?)", "time_limit = 'soon' is not a Slurm time", "gpus_per_run = -1 must be a whole "
                 "number 0 .. 4096", "extra_args = '--exclusive' must be a list of sbatch options"):
        assert said in out, out
    assert out.count("Fix:") >= 5


def test_check_refuses_slurm_keys_for_the_local_executor_and_shows_a_good_table(home):
    res = _check(home, '[executor]\npartition = "gpu"\n')
    assert res.returncode == 1 and 'partition applies only to kind = "slurm"' in res.stdout + res.stderr
    res = _check(home, '[executor]\nkind = "slurm"\npartition = "gpu"\ntime_limit = "1-12:00:00"\n'
                       'gpus_per_run = 2\nextra_args = ["--constraint=a100"]\n')
    assert res.returncode == 0, res.stdout + res.stderr
    assert "executor: slurm (partition gpu, time_limit 1-12:00:00, gpus_per_run 2), sbatch --constraint=a100" \
        in res.stdout


def test_check_refuses_the_local_executors_options_beside_a_slurm_executor(home):
    """Top-level max_parallel_runs, gpus, gpus_per_run and [torchrun] nproc_per_node were ignored under Slurm."""
    res = _check(home, 'max_parallel_runs = 1\ngpus_per_run = 2\n[torchrun]\nnproc_per_node = 2\n'
                       '[executor]\nkind = "slurm"\npartition = "gpu"\n')
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "gpus_per_run, max_parallel_runs at the top level choose this machine's GPUs" \
        in out and "[torchrun] nproc_per_node is not used with [executor] kind = \"slurm\"" in out, out
    assert out.count("Fix:") == 2
    assert _check(home, 'max_parallel_runs = 1\n[torchrun]\nnproc_per_node = 2\n').returncode == 0  # local: used


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm (tmpfs) on this machine")
def test_check_warns_when_the_home_is_on_a_filesystem_only_this_machine_sees(tmp_path):
    import tempfile
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        res = _check(shm, '[executor]\nkind = "slurm"\n')
        assert res.returncode == 0
        assert f"{shm} is on tmpfs (mounted at /dev/shm), which only this machine sees" in res.stdout
        (data,) = json.loads(overnight("check", str(shm / "overnight.toml"), "--json", home=shm).stdout)
        assert "Fix: move the home to a shared filesystem" in data["warnings"][0]
    finally:
        subprocess.run(["rm", "-rf", str(shm)])


def test_without_slurm_tools_the_run_fails_with_the_fix(home, tiny_model, tmp_path):
    (home / "overnight.toml").write_text(f'base_model = "{tiny_model}"\n[executor]\nkind = "slurm"\n')
    bare = tmp_path / "bin"  # a PATH with a python and nothing of Slurm's
    bare.mkdir()
    (bare / "python").symlink_to(sys.executable)
    d = DaemonProcess(home, env={**os.environ, "PATH": str(bare)})
    try:
        (home / "inbox" / "x.jsonl").write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(20)))
        runs = wait_until(lambda: [r for r in json.loads(overnight("runs", "--json", home=home).stdout)
                                   if r["state"] == "failed"], 60, what="the run failed")
    finally:
        d.stop()
    assert "sbatch, scontrol, scancel not found on PATH. Fix:" in runs[0]["reason"], runs[0]["reason"]


def test_the_job_script_runs_torchrun_on_every_node_with_the_rendezvous_on_the_first(tmp_path):
    ex = SlurmExecutor({"kind": "slurm", "nodes_per_run": 2, "gpus_per_run": 4, "partition": "gpu",
                        "time_limit": "2:00:00", "extra_args": ["--exclusive"]})
    command = ex.command(tmp_path, None, None)  # type: ignore[arg-type]
    assert command[:3] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert command[command.index("--nproc-per-node") + 1] == "4" and command[command.index("--nnodes") + 1] == "2"
    script = job_script("r1", tmp_path, command, 2)
    assert '--rdzv-endpoint "$OVERNIGHT_RDZV"' in script and "scontrol show hostnames" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    args = ex.sbatch_args("r1", tmp_path)
    assert {"--nodes=2", "--gres=gpu:4", "--partition=gpu", "--time=2:00:00", "--exclusive",
            "--signal=B:USR1@120", "--open-mode=append"} <= set(args)


@pytest.mark.parametrize("slurm, rc", [("0:0", 0), ("1:0", 1), ("75:0", 75), ("0:15", -15), ("143:0", -15),
                                       ("0:9", -9), (None, None)])
def test_slurms_exit_codes_read_as_a_trainers_return_code(slurm, rc):
    assert _exit_code(slurm) == rc


def test_a_slurm_that_does_not_answer_is_asked_again_only_half_a_minute_later(tmp_path, monkeypatch):
    """Each question to a silent slurmctld waits ~20 s: the daemon's loop must not wait that long for every job
    at every pass (intake and commands stalled, status blamed the DB)."""
    from daemon.engine.executors import slurm, slurmctl

    asked: list[str] = []
    clock = [1000.0]

    def silent(job_id: str) -> None:
        asked.append(job_id)
        raise slurmctl.SlurmUnreachable("scontrol did not answer in 30 s")
    monkeypatch.setattr(slurmctl, "job_info", silent)
    monkeypatch.setattr(slurm.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(slurm, "_silent_until", 0.0)
    jobs = [slurm.SlurmJob(j, tmp_path) for j in ("11", "12")]
    assert [j.poll() for j in jobs] == [None, None] and asked == ["11"]
    clock[0] += 5
    assert [j.poll() for j in jobs] == [None, None] and asked == ["11"]
    clock[0] += slurm.SILENT_POLL_S
    jobs[1].poll()
    assert asked == ["11", "12"]
