"""`python -m daemon.trainer RUN_DIR`: train one run folder (started by the daemon; see docs/ARCHITECTURE.md).

stdin carries commands (pause, resume, stop); EOF on stdin means stop. `--ignore-stdin` is for running by
hand or from a benchmark, where nothing will ever write commands.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def cli(argv: list[str] | None = None) -> int:
    """Parse the command line, make console output timestamped, and run the trainer."""
    parser = argparse.ArgumentParser(prog="python -m daemon.trainer", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="the run folder (holds config.json, dataset/, stats.json)")
    parser.add_argument("--ignore-stdin", action="store_true", help="do not read commands from stdin")
    args = parser.parse_args(argv)

    from daemon.trainer import console
    from daemon.trainer.commands import forks_leave_the_group
    from daemon.trainer.run import environment_defaults

    environment_defaults()
    forks_leave_the_group()  # a DataLoader worker must not die of the SIGTERM the daemon sends the trainer's group
    console.install()  # before transformers is imported: its log handler must write through the wrapper
    try:
        from daemon.trainer.run import main

        return main(args.run_dir, read_stdin=not args.ignore_stdin)
    finally:
        console.finish()


if __name__ == "__main__":
    code = cli()
    from daemon.trainer import ddp

    if ddp.worker():  # torchrun's worker: its run is written and its group left; skip the interpreter's shutdown
        ddp.exit_now(code)
    sys.exit(code)
