"""`overnight serve`: the HTTP API and the dashboard in a browser. A process of its own, like the CLI: it reads the DB
(daemon/core/queries.py) and the run folders, and acts only by dropping files into inbox/ and writing control
commands (daemon/core/control.py), so the daemon is the same whether it runs or not."""
