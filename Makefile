# The two commands: `make demo` (main job on an embedded tiny model) and `make test` (the whole suite).
# Both create .venv if it is missing and install the project with the pinned stack in constraints.txt.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean-venv gpu-wheels gpu-check-dry-run

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,dev,text]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qwenvl-min demo

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The GPU check (docs/benchmarks.md, "GPU check"): liger-kernel's wheel for the machine without an index
# (carried in .wheels/), and the CPU dry run of every step.
gpu-wheels:
	$(PYTHON) benchmarks/gpu_check.py --fetch-wheels

gpu-check-dry-run: $(STAMP)
	PYTHON=$(PY) bash benchmarks/gpu_check.sh --dry-run
