# The README's two commands: `make demo` and `make test`. Each first sets up .venv, once and again whenever
# pyproject.toml or constraints.txt changes (the stamp file), so a second run starts at once.
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed only into a venv without torch: the CPU build (CI's pin). A CUDA build put into .venv first is kept.
TORCH ?= torch==2.13.0
TESTS ?= tests
STAMP := $(VENV)/.installed
# The versions CI tested, so a fresh install gets what passed (pyproject's ranges stay open for other installs).
# Refreshed on purpose with `make constraints`, then `make test` green, then committed. torch (and the CUDA wheels
# a GPU build brings) stay out of it: any torch 2.x build put into .venv first is kept.
CONSTRAINTS := constraints.txt

.PHONY: demo test setup constraints

demo: $(STAMP)
	$(VENV)/bin/overnight demo $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check -q .
	$(PY) -m pytest -n 2 -q -rs --durations=40 -p no:cacheprovider $(TESTS)

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)" || \
		$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]" -c $(CONSTRAINTS)
	touch $@

constraints:  # what a fresh install resolves to today, in a throwaway venv
	rm -rf .venv-fresh && python3 -m venv .venv-fresh
	.venv-fresh/bin/pip install -q "$(TORCH)" && .venv-fresh/bin/pip install -q -e ".[test]"
	.venv-fresh/bin/pip freeze --exclude-editable | grep -viE '^(torch|triton|nvidia-(cu|nccl|nvjitlink|nvtx|cufile|nvshmem))' > $(CONSTRAINTS)
	rm -rf .venv-fresh
