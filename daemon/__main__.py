"""`python -m daemon` is the `overnight` command."""
from daemon.cli import main

main()
