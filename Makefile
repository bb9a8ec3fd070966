# Two commands for a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ARGS ?=

.PHONY: run test lint typecheck unit crash-long bench bench-quick bench-ovf bench-ovf-quick bench-copy bench-copy-quick clean

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

# pytest exits 5 when it collects no tests (a filter in ARGS, say): not a failure.
unit: $(STAMP)
	@rc=0; $(BIN)/pytest $(ARGS) || rc=$$?; \
	if [ $$rc = 5 ]; then echo "make: pytest collected no tests (exit 5)"; \
	elif [ $$rc != 0 ]; then exit $$rc; fi

test: lint typecheck unit

# Issue 4's longer crash series: 500 SIGKILLs of the daemon during OVF
# store updates, and 500 of a writer per domain kind (the suite runs 50/26).
crash-long: $(STAMP)
	SLUICE_CRASH_TRIALS=500 $(BIN)/pytest -q tests/stream/test_ovf_crash.py \
		tests/volume/test_ovfstore_crash.py $(ARGS)

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
