# `make demo` and `make test` work on a fresh machine: each sets up what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
KLEAR := $(VENV)/bin/klear
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: setup system-deps demo lint test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# flite speaks SyncWorld's speech splits (voices compiled in, nothing fetched at run time).
system-deps:
	@if ! command -v flite >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq flite; \
	  else echo "flite not found and no apt-get: SyncWorld's speech splits will fail with a clear message"; fi; \
	fi

demo: setup system-deps
	$(KLEAR) fit --config configs/demo.yaml
	$(KLEAR) fit --config configs/demo.yaml --config configs/demo_specialize.yaml

# ruff first (fail fast), then one pytest run over tests/unit and tests/integration; the summary ends with a
# line per directory (outcomes and summed test time), written by tests/conftest.py.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: setup system-deps lint
	WDS_SECURE=1 $(PY) -m pytest $(PYTEST_ARGS)

bench: setup system-deps
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
