# `make demo` and `make test` work on a fresh machine: each sets up what it needs first.
VENV ?= .venv
PY := $(VENV)/bin/python
KLEAR := $(VENV)/bin/klear
PYTEST_ARGS ?= -n 2

.PHONY: setup system-deps demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

# espeak-ng speaks SyncWorld's speech splits; ffmpeg is only a convenience for users.
system-deps:
	@if ! command -v espeak-ng >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq espeak-ng; \
	  else echo "espeak-ng not found and no apt-get: SyncWorld's speech splits will fail with a clear message"; fi; \
	fi

demo: setup system-deps
	$(KLEAR) fit --config configs/demo.yaml
	$(KLEAR) fit --config configs/demo.yaml --config configs/demo_specialize.yaml

test: setup system-deps
	WDS_SECURE=1 $(PY) -m pytest $(PYTEST_ARGS)

bench: setup system-deps
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
