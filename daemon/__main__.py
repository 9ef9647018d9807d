"""`python -m daemon` is the `overnight` command."""
from daemon.client.cli import main

main()
