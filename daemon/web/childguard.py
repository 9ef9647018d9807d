"""`python -m daemon.web.childguard PARENT_PID PROGRAM ARG...`: run PROGRAM (by exec, so it keeps this pid) such that
it ends when the server that started it dies, kill -9 included: a dashboard process the server no longer relays
would draw for nobody for ever. Linux's parent-death signal, set here in the child itself and kept across exec; the
server's own process needs no fork-time hook (a preexec_fn is unsafe in a process with threads)."""
from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def guard(parent: int) -> None:
    """SIGTERM to this process when its parent dies; if the parent died already (before the signal was asked for),
    end now."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(0)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit("usage: python -m daemon.web.childguard PARENT_PID PROGRAM [ARG...]")
    guard(int(argv[0]))
    os.execv(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
