# Two commands: `make demo` (the main job on the embedded default) and `make test`.
# Setup from nothing: a venv, torch==2.13.0 first (the CPU wheel on these machines; a looser
# pin pulls a multi-GB CUDA build), then the package and its dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/univ demo

test: setup
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --doctest-modules src tests

bench: setup
	$(BIN)/python benchmarks/bench_moments.py
