# dimo — every documented command is one command on a fresh machine: targets that need the
# environment depend on `setup`, which is a no-op once its stamp is newer than pyproject.toml.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# CUDA users: `make setup TORCH="torch==2.13.0 --index-url ..."` or another pin. Torch is installed
# in the same pip command as everything else so pip never swaps in a different torch build.
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dimo-setup-stamp
PYTEST_ARGS ?=

.PHONY: setup test lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" -e ".[dev]"
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info

# Benchmarks: `make bench` (quick CPU profile) or `make bench PROFILE=gpu`; results in benchmarks/results/.
PROFILE ?= cpu
.PHONY: bench
bench: setup
	$(PY) benchmarks/run.py --profile $(PROFILE)

# Geometry preview: views.png + trajectory MP4 of the demo skeleton (or MOTION=file.npz) under runs/.
.PHONY: preview
PREVIEW_ARGS ?=
preview: setup
	$(PY) -m dimo.cli geometry preview --out runs/geometry_preview $(if $(MOTION),--motion $(MOTION)) $(PREVIEW_ARGS)
