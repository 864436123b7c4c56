# Quickstart: `make demo` and `make test` do all the set-up themselves on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format bench clean install prometheus

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip -c constraints.txt || true
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	rm -rf results/demo results/demo-base  # a finished run is never redone: start the demo afresh
	$(VENV)/bin/flowscale run jobs/demo.yaml

test: $(STAMP) prometheus
	$(PY) -m pytest -q

# Prometheus and promtool (Debian's package) for the dashboard and alert tests; installed when missing.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends prometheus; }

bench: $(STAMP)  # the runtime benchmarks (overhead, scaling); figures in benchmarks/results/runtime.*
	$(PY) -m benchmarks.runtime

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) results .pytest_cache
