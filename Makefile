# One entry point for every task. `make demo` and `make test` work on a fresh clone with only
# Python 3.11+: they create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-postgres lint typecheck protos check-protos bench world clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/linkage demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-postgres: $(STAMP)
	LINKAGE_TEST_DATABASE=postgresql $(BIN)/python -m pytest $(PYTEST_ARGS)

BUF := .tools/node_modules/.bin/buf
$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf

lint: $(STAMP) $(BUF)
	cd proto && ../$(BUF) lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

typecheck: $(STAMP)
	$(BIN)/mypy

# Regenerate the Python stubs from proto/ (committed; tests/test_contracts.py checks they match).
protos: $(STAMP)
	$(BIN)/python -m linkage.protogen

bench: $(STAMP)
	$(BIN)/linkage bench $(if $(QUICK),--quick) $(if $(PROFILE),--profile)

world: $(STAMP)
	$(BIN)/linkage world up

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data
