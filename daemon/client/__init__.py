"""The commands a person runs: the `overnight` CLI, `check`, `export`, the demo and its tiny model, the service
files. They may import every other part; nothing imports them but `python -m daemon`."""
