# Two commands on a fresh machine:  `make demo`  and  `make test`.  Both create/refresh .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch first and pinned: 2.13.0 is a local CPU wheel on our machines; an unpinned torch pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: venv demo test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/cryojoint demo $(DEMO_OUT) --overwrite

test: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

bench: venv
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) build dist .pytest_cache src/*.egg-info
