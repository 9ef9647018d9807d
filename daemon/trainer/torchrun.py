"""`python -m daemon.trainer.torchrun [torchrun options] -m daemon.trainer RUN_DIR`: torchrun, ending like one trainer.

This is torch's own launcher (`torch.distributed.run`: the same arguments, rendezvous and elastic agent), with one
difference in how it ends. torchrun exits with 1 whatever happened to a worker; the daemon resumes a trainer that
died of a signal (kill -9, the OOM killer) and fails one that exited with an error. So when a worker died of a
signal, or the launcher itself got SIGTERM/SIGINT/SIGHUP, the launcher ends by that same signal: the daemon sees
the negative return code of a single killed trainer. A worker that failed on its own (exit code 1, its traceback
and result.json written) still makes the launcher exit 1; a worker that failed only because another vanished
exits with PEER_LOST_EXIT (daemon/core/launch.py) and does not count (`killing_signal`).

Out of memory on one rank (single node): that rank writes the next rung of the retry ladder to a file this
launcher names and exits OOM_RETRY_EXIT; the launcher starts every worker again with the rung, and they resume
from the last checkpoint, as one process retries in-process. The daemon sees one trainer throughout.

Workers run in sessions of their own (torchrun starts them so): the daemon's `signal_group` signals each of them.

A worker that dies after the run ended (rank 0's result.json of this launch says completed or stopped, exit code
0: the adapter or the checkpoint is whole) does not undo it: the console says which rank exited how, and the
launcher exits 0 (`ended_run`). A worker's crash on its way out (an abort in a library's thread at exit) once made
a completed run look killed.
"""
from __future__ import annotations

import os
import signal
import sys
import time


def _die_by(signum: int, why: str) -> None:
    print(f"torchrun: {why}; the launcher ends by {signal.Signals(signum).name} too (the run is resumable)",
          file=sys.stderr, flush=True)
    if signum not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught: no handler to reset
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    signal.pause()


def main(argv: list[str] | None = None) -> int:
    import tempfile

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from daemon.core.launch import RETRY_FILE_ENV, RETRY_OPTIONS_ENV

    args = parse_args(sys.argv[1:] if argv is None else argv)
    single_node = bool(args.standalone)
    with tempfile.TemporaryDirectory(prefix="overnight-torchrun-") as tmp:
        rung_file = os.path.join(tmp, "oom-rung.json")
        if single_node:
            os.environ[RETRY_FILE_ENV] = rung_file  # inherited by the workers
        while True:
            started = time.time()
            try:
                run(args)
                return 0
            except ChildFailedError as e:
                print(e.format_msg(), file=sys.stderr, flush=True)
                failures = {rank: (f.exitcode, f.timestamp, f.pid) for rank, f in e.failures.items()}
                ended = ended_run(args.training_script_args, started)
                if ended is not None:
                    print(f"torchrun: the run had ended ({ended}, result.json) when {exits(failures)}: it stays "
                          f"{ended}", file=sys.stderr, flush=True)
                    return 0
                killed = killing_signal(failures)
                if killed is not None:
                    rank, signum, pid = killed
                    _die_by(signum, f"rank {rank} (PID {pid}) was killed by {signal.Signals(signum).name}")
                rung = retry_rung(failures, rung_file)
                if rung is None:
                    return 1
                os.environ[RETRY_OPTIONS_ENV] = rung  # the next group trains on the next rung of the ladder
                os.unlink(rung_file)
                print("torchrun: out of memory: starting every worker again from the last checkpoint",
                      file=sys.stderr, flush=True)
            except SignalException as e:
                _die_by(int(e.sigval), f"the launcher received {signal.Signals(e.sigval).name} and stopped the "
                                       f"workers")


def ended_run(script_args: list[str], since: float) -> str | None:
    """The outcome of a run that ended well ("completed", "stopped") by the result.json of this group, written by
    rank 0 at or after `since`; else None. `script_args`: the trainer's arguments, RUN_DIR last."""
    from pathlib import Path

    from daemon.core.atomic import read_json
    from daemon.core.states import Outcome

    if not script_args:
        return None
    path = Path(script_args[-1]) / "result.json"
    try:
        if path.stat().st_mtime < since:
            return None  # an earlier launch's (the daemon removes those; a trainer started by hand may find one)
        result = read_json(path, None)
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("exit_code") != 0:
        return None
    outcome = result.get("outcome")
    return outcome if outcome in (Outcome.COMPLETED, Outcome.STOPPED) else None


def exits(failures: dict[int, tuple[int, float, int]]) -> str:
    """How the failed workers exited, in words: `rank 1 (PID 12) exited by SIGABRT`."""
    def how(code: int) -> str:
        if code < 0:
            try:
                return f"by {signal.Signals(-code).name}"
            except ValueError:
                return f"by signal {-code}"
        return f"with code {code}"

    return ", ".join(f"rank {rank} (PID {pid}) exited {how(code)}" for rank, (code, _t, pid) in sorted(failures.items()))


def retry_rung(failures: dict[int, tuple[int, float, int]], rung_file: str) -> str | None:
    """The rung a worker that ran out of memory wrote (JSON), when that is the only failure of its own."""
    from daemon.core.launch import OOM_RETRY_EXIT, PEER_LOST_EXIT

    codes = {code for code, _t, _p in failures.values() if code > 0}
    if OOM_RETRY_EXIT not in codes or codes - {OOM_RETRY_EXIT, PEER_LOST_EXIT} or not os.path.exists(rung_file):
        return None
    with open(rung_file, encoding="utf-8") as f:
        return f.read()


def killing_signal(failures: dict[int, tuple[int, float, int]]) -> tuple[int, int, int] | None:
    """(rank, signal, pid) when the group died of a signal, else None (a worker failed on its own).

    `failures`: rank → (exit code, time, pid) of the workers torchrun saw fail. A worker that exited with an error
    of its own (a positive code other than PEER_LOST_EXIT) is what ended the run: None. Otherwise the first signal
    death, SIGTERM last: torchrun itself sends SIGTERM to the workers still running once one has failed.
    """
    from daemon.core.launch import PEER_LOST_EXIT

    if any(code > 0 and code != PEER_LOST_EXIT for code, _t, _p in failures.values()):  # (OOM_RETRY_EXIT too)
        return None
    signalled = [(code == -signal.SIGTERM, t, rank, -code, pid) for rank, (code, t, pid) in failures.items()
                 if code < 0]
    if not signalled:
        return None
    _term, _t, rank, signum, pid = min(signalled)
    return rank, signum, pid


if __name__ == "__main__":
    sys.exit(main())
