# `make serve` and `make test` work on a fresh machine with Python 3.11+ and nothing else:
# they create .venv when missing, install the project into it, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
JS := tests/js
FANOUT := bench/fanout

.PHONY: serve test fuzz lint typecheck bench vendor clean

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

# What issue 12 names, at its sizes, one after the other (bench/README.md): the fan-out comparison
# (productflo through ws and Socket.IO, naive, node; idle memory at 10,000 connections), replay of
# 50,000 and 500,000 missed events, rebuild over 1,000,000 events, and the append rate beside
# PostgreSQL's raw batched inserts; then issue 15's documents: opening 100,000 updates with and
# without a snapshot, 20 editors beside a relay that stores nothing; and the primary's CPU per
# delivered event with the log's reads on it or on a hot standby, and what a failover loses with
# a synchronous standby and with an asynchronous one. One that fails (a fan-out
# run that lost a message, say) does not stop the others: the target fails after they have all run.
bench: $(STAMP) $(FANOUT)/node_modules/.package-lock.json
	@failed=; \
	for benchmark in "fanout --idle-connections 10000 --idle-steps 4" \
			"replay_throughput --events 50000,500000" "rebuild_throughput --events 1000000" \
			append_throughput "socketio_throughput --runs 3" idle_memory_profile \
			docs_throughput standby_reads standby_loss; do \
		echo "== $(BIN)/python -m bench.$$benchmark"; \
		$(BIN)/python -m bench.$$benchmark || failed="$$failed bench.$${benchmark%% *}"; \
	done; \
	echo "results: bench/results/fanout.json bench/results/fanout.png"; \
	echo "         bench/results/replay_throughput.json bench/results/rebuild_throughput.json"; \
	echo "         bench/results/append_throughput.json bench/results/socketio_throughput.json"; \
	echo "         bench/results/idle_memory_profile.json bench/results/docs_throughput.json"; \
	echo "         bench/results/standby_reads.json bench/results/standby_loss.json"; \
	if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

# The web client's Yjs (productflo/static/vendor/yjs.mjs, committed; the Node tests import it too):
# rebuilt from the versions pinned in tools/vendor-yjs only when they change, never at run time.
VENDOR := tools/vendor-yjs
YJS_BANNER := // yjs 13.6.33, y-protocols 1.0.7 (awareness), lib0 0.2.120: bundled by $(VENDOR) (make vendor); MIT licensed, (c) Kevin Jahns
vendor:
	cd $(VENDOR) && npm ci --silent --no-audit --no-fund
	$(VENDOR)/node_modules/.bin/esbuild $(VENDOR)/entry.mjs --bundle --format=esm --minify \
		--legal-comments=inline --banner:js="$(YJS_BANNER)" --outfile=productflo/static/vendor/yjs.mjs

clean:
	rm -rf $(VENV) $(JS)/node_modules $(FANOUT)/node_modules $(VENDOR)/node_modules .pytest_cache .mypy_cache .ruff_cache
