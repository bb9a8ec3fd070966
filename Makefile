# Two commands for a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: run test lint typecheck unit bench bench-quick bench-ovf bench-ovf-quick bench-copy bench-copy-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: $(STAMP)
	$(BIN)/sluice serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check stream volume engine_client tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict stream volume engine_client bench tests

unit: $(STAMP)
	$(BIN)/pytest $(ARGS)

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick $(ARGS)

bench-ovf: $(STAMP)
	$(BIN)/python -m bench.ovf $(ARGS)

bench-ovf-quick: $(STAMP)
	$(BIN)/python -m bench.ovf --quick $(ARGS)

bench-copy: $(STAMP)
	$(BIN)/python -m bench.copy $(ARGS)

bench-copy-quick: $(STAMP)
	$(BIN)/python -m bench.copy --quick $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
