# The two commands of the README: `make demo` and `make test`.
# Each sets up what it needs first (venv, dependencies, Kafka jars), so either
# works as the first command typed on a fresh clone.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.xsp-installed

.PHONY: setup demo test lint bench clean

# setup.py and the .pyx are listed because the compiled walk is only rebuilt
# by a new install.
$(STAMP): pyproject.toml setup.py streams/vast/_walk.pyx
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/xsp kafka install
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/xsp dev

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

# All four benchmarks, full size. The edge benchmark's baseline (the seed's
# design: counters in Redis) needs redis-server from Debian's packages.
bench: setup
	command -v redis-server >/dev/null || apt-get install -y -qq redis-server \
		|| echo "redis-server could not be installed: bench_edge skips the seed column"
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m benchmarks.bench_resolve
	$(BIN)/python -m benchmarks.bench_pipeline
	$(BIN)/python -m benchmarks.bench_edge
	$(BIN)/python -m benchmarks.bench_expiry

clean:
	rm -rf $(VENV) .xsp .pytest_cache
