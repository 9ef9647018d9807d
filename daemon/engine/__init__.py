"""The daemon process: intake, queue, scheduler, controller, the trainer's supervision, the state DB (its one
writer), the registry, notifications and hooks. It never imports torch or transformers (tests/test_layers.py)."""
