"""`python -m tui [--home H]`: the dashboard without the click CLI (same as `overnight tui`)."""
from __future__ import annotations

import argparse
import sys

from daemon.core.home import Home
from tui.app import no_terminal, run


def main() -> None:
    """Parse --home and open the dashboard."""
    parser = argparse.ArgumentParser(prog="python -m tui", description="The overnight dashboard.")
    parser.add_argument("--home", default=None,
                        help="The home folder (default: $OVERNIGHT_HOME, else the current directory).")
    args = parser.parse_args()
    root = Home.resolve(args.home, create=False).root
    problem = no_terminal()
    if problem:
        sys.exit(problem)  # the message on stderr, exit status 1
    sys.exit(run(root))


if __name__ == "__main__":
    main()
