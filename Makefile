# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv/ when missing.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
DEMO_OUT ?= demo_out

.PHONY: venv demo test test-fast lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	# The CPU build of torch first: the range in pyproject.toml then installs nothing more.
	$(VENV)/bin/python -m pip install -q torch==2.13.0
	$(VENV)/bin/python -m pip install -q -e '.[dev,dashboard]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vidworld samples $(DEMO_OUT)/samples
	$(VENV)/bin/vidworld run jobs/demo.yaml input=$(DEMO_OUT)/samples output=$(DEMO_OUT)

test: $(STAMP)
	$(VENV)/bin/python -m pytest

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not integration and not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
