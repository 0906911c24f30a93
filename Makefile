# `make serve` and `make test` work on a fresh machine with Python 3.11+ and nothing else:
# they create .venv when missing, install the project into it, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
JS := tests/js
FANOUT := bench/fanout

.PHONY: serve test fuzz lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(JS)/node_modules/.package-lock.json: $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && npm ci --silent --no-audit --no-fund

serve: $(STAMP)
	$(BIN)/productflo serve

test: $(STAMP) $(JS)/node_modules/.package-lock.json $(FANOUT)/node_modules/.package-lock.json
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The fuzz suites (tests/fuzz) alone, 20 times longer than in `make test`; the counts are printed
# at the end. PRODUCTFLO_FUZZ_CENSUS=1 counts every failure instead of stopping at the first.
FUZZ_EXAMPLES ?= 8000
fuzz: $(STAMP)
	PRODUCTFLO_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/fuzz $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

$(FANOUT)/node_modules/.package-lock.json: $(FANOUT)/package.json $(FANOUT)/package-lock.json
	cd $(FANOUT) && npm ci --silent --no-audit --no-fund

# The fan-out comparison first (bench/README.md), then the benchmarks that ran here before it;
# a fan-out run that lost a message fails the target, but only after the others have run.
bench: $(STAMP) $(FANOUT)/node_modules/.package-lock.json
	$(BIN)/python -m bench.fanout; fanout=$$?; \
	$(BIN)/python -m bench.append_throughput && exit $$fanout

clean:
	rm -rf $(VENV) $(JS)/node_modules $(FANOUT)/node_modules .pytest_cache .mypy_cache .ruff_cache
