# Two commands a user needs: `make demo` and `make test`. Both create .venv when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export FLWR_TELEMETRY_ENABLED := 0
# glibc malloc reuses freed memory instead of faulting in new pages (client/start.py)
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 1073741824
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install demo test test-fast test-slow lint bench tools clean pretrain

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

tools:
	@bash scripts/ensure_tools.sh

demo: install
	$(PY) -m server.demo

# Regenerates m3fm_model/assets/tiny-synthetic-m3fm.json (about 27 min on 2 cores).
pretrain: install
	$(PY) -m server.pretrain --data pretrain_data

test-fast: install tools
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

test: test-fast test-slow

bench: install
	$(PY) -m bench.run_all --out bench/results.json

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf runs demo_data .pytest_cache
