"""The torch-free core every process imports: the home and run-folder layout, options, states, datasets and
chat templates, control files, the DB readers. It imports neither click, Textual nor torch (tests/test_layers.py)."""
