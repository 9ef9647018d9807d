"""`python -m daemon.trainer.torchrun [torchrun options] -m daemon.trainer RUN_DIR`: torchrun, ending like one trainer.

This is torch's own launcher (`torch.distributed.run`: the same arguments, rendezvous and elastic agent), with one
difference in how it ends. torchrun exits with 1 whatever happened to a worker; the daemon resumes a trainer that
died of a signal (kill -9, the OOM killer) and fails one that exited with an error. So when a worker died of a
signal, or the launcher itself got SIGTERM/SIGINT/SIGHUP, the launcher ends by that same signal: the daemon sees
the negative return code of a single killed trainer. A worker that failed on its own (exit code 1, its traceback
and result.json written) still makes the launcher exit 1.

Workers run in sessions of their own (torchrun starts them so): the daemon's `signal_group` signals each of them.
"""
from __future__ import annotations

import os
import signal
import sys


def _die_by(signum: int, why: str) -> None:
    print(f"torchrun: {why}; the launcher ends by {signal.Signals(signum).name} too (the run is resumable)",
          file=sys.stderr, flush=True)
    if signum not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught: no handler to reset
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    signal.pause()


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as e:
        print(e.format_msg(), file=sys.stderr, flush=True)
        killed = {rank: f for rank, f in e.failures.items() if f.exitcode < 0}
        if killed:
            rank, failure = min(killed.items(), key=lambda item: item[1].timestamp)
            _die_by(-failure.exitcode, f"rank {rank} (PID {failure.pid}) was killed by "
                                       f"{signal.Signals(-failure.exitcode).name}")
        return 1
    except SignalException as e:
        _die_by(int(e.sigval), f"the launcher received {signal.Signals(e.sigval).name} and stopped the workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
