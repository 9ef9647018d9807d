# The README's two commands: `make demo` and `make test`. Each first sets up .venv, once and again whenever
# pyproject.toml changes (the stamp file), so a second run starts at once.
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed only into a venv without torch: the CPU build (CI's pin). A CUDA build put into .venv first is kept.
TORCH ?= torch==2.13.0
TESTS ?= tests
STAMP := $(VENV)/.installed

.PHONY: demo test setup

demo: $(STAMP)
	$(VENV)/bin/overnight demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -n 2 -q -p no:cacheprovider $(TESTS)

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)" || \
		$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@
