# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_DIR := .cache/node
NODE_STAMP := $(NODE_DIR)/.installed

.PHONY: demo test lint bench bench-quick bench-cluster clean node browser screenshot board-check

# Installer output goes to $(INSTALL_LOG), printed only if an install fails: `make demo` starts with the demo.
PIP := $(BIN)/python -m pip
INSTALL_LOG := $(VENV)/install.log
LOGGED = >>$(INSTALL_LOG) 2>&1 || { cat $(INSTALL_LOG) >&2; echo "make: installing into $(VENV) failed; the output above is in $(INSTALL_LOG)" >&2; exit 1; }

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV)

# Reinstall only when the project metadata changes (editable install: code changes need none).
$(STAMP): pyproject.toml | $(BIN)/python
	@: >$(INSTALL_LOG)
	@$(PIP) install --quiet --upgrade pip $(LOGGED)
	@$(PIP) install --quiet -e '.[test]' $(LOGGED)
	@touch $(STAMP)

# Stock Yjs clients for the interop tests, pinned by the lockfile, in a git-ignored folder.
$(NODE_STAMP): interop/package.json interop/package-lock.json
	mkdir -p $(NODE_DIR)
	cp interop/package.json interop/package-lock.json $(NODE_DIR)/
	cd $(NODE_DIR) && npm ci --silent --no-audit --no-fund
	touch $(NODE_STAMP)

node: $(NODE_STAMP)

demo: $(STAMP)
	@$(BIN)/accord demo

# accord/engine, accord/relay and accord/terminal are symlinks to the top-level folders, so every
# tool sees the installed layout as it is; ruff walks the tree once (it does not follow the links).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy -p accord.engine
	$(BIN)/mypy -p accord

# The board browser tests need Chromium: .ci/chromium installs Debian's headless shell when it is
# missing and apt-get is usable (root), and otherwise prints one line saying why those tests skip.
browser:
	@sh .ci/chromium

test: $(STAMP) $(NODE_STAMP) browser lint
	ACCORD_NODE_MODULES=$(CURDIR)/$(NODE_DIR)/node_modules $(BIN)/python -m pytest -q

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): pyproject.toml $(STAMP)
	@: >$(INSTALL_LOG)
	@$(PIP) install --quiet -e '.[test,bench]' $(LOGGED)
	@touch $(BENCH_STAMP)

# Measure and print; writes benchmarks/RESULTS.md and benchmarks/results.png (relay vs peers).
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/engine_bench.py
	$(BIN)/python benchmarks/decisions_bench.py
	$(BIN)/python benchmarks/system_bench.py
	$(BIN)/python benchmarks/relay_vs_peers.py

# The same at smoke sizes (what CI may run; no timing assertions anywhere).
bench-quick: $(BENCH_STAMP)
	$(BIN)/python benchmarks/engine_bench.py --n 2000
	$(BIN)/python benchmarks/decisions_bench.py --n 2000
	$(BIN)/python benchmarks/system_bench.py --quick
	$(BIN)/python benchmarks/relay_vs_peers.py --quick

# An accord relay cluster on PostgreSQL against Hocuspocus with extension-redis on Redis, 1-3 instances
# (benchmarks/CLUSTER.md). Needs redis-server and PostgreSQL's server binaries; starts and stops its own.
bench-cluster: $(BENCH_STAMP)
	$(BIN)/python benchmarks/cluster_vs_hocuspocus.py --repeat 2

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache

# Regenerate docs/board.png from the populated-board browser test (needs chromium-headless-shell or chromium).
screenshot: $(STAMP) browser
	ACCORD_REQUIRE_BROWSER=1 ACCORD_BOARD_SCREENSHOT=$(CURDIR)/docs/board.png $(BIN)/python -m pytest -q tests/test_board_browser.py -k populated_board

# Rebuild the vendored Yjs bundle and check it matches the committed files (needs node + npm).
board-check:
	sh board/build.sh --check
