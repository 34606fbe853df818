# Two commands do everything on a fresh machine (Python 3.11, no GPU needed):
#   make demo   the notebook pipeline on the real teacher (demo profile, ~30 min on 2 cores)
#   make test   unit tests, then every notebook headlessly (smoke profile) and nbval over the results
# Both create or reuse .venv/ and install what they need; both are idempotent.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.glmd-installed
RUN_DIR ?= runs/demo
SMOKE_DIR ?= runs/ci-smoke

.PHONY: install demo smoke test unit notebooks-test families-smoke compare-smoke clean-notebooks bench bench-peers lab browser-setup browser-test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch pinned first: the exact pin takes the local CPU wheel instead of a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/glmd run --profile demo --run-dir $(RUN_DIR)

smoke: $(STAMP)
	$(BIN)/glmd run --profile smoke --run-dir runs/smoke

unit: $(STAMP)
	$(BIN)/pytest -q tests

notebooks-test: $(STAMP)
	rm -rf $(SMOKE_DIR)
	$(BIN)/glmd run --profile smoke --run-dir $(SMOKE_DIR) --cell-timeout 600
	$(BIN)/pytest -q -p no:cacheprovider --nbval-lax --nbval-cell-timeout=600 $(SMOKE_DIR)/notebooks

# the whole smoke pipeline with a teacher of another family (a tiny random Gemma-3: five sliding-window layers to
# one full, its own head_dim), so per-layer student configs run end to end through notebooks 00-07
GEMMA_DIR ?= runs/ci-gemma3
families-smoke: $(STAMP)
	rm -rf $(GEMMA_DIR)
	$(BIN)/glmd run --profile smoke --run-dir $(GEMMA_DIR) -p teacher=tiny-random-gemma3 --cell-timeout 600

# issue #13: `glmd compare --profile smoke` end to end (glmd vs kd, one seed, CB, tiny teacher), then the same
# command again, which must skip everything (tests/test_compare.py; the unit suite skips it without the variable).
# About 4 minutes on 2 cores since the runs share the task teachers' predictions.
compare-smoke: $(STAMP)
	GLMD_COMPARE_SMOKE=1 $(BIN)/pytest -q -s -p no:cacheprovider tests/test_compare.py -k end_to_end

test: unit notebooks-test families-smoke compare-smoke

clean-notebooks: $(STAMP)
	$(BIN)/python tools/clean_notebooks.py

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Issue #12: this project's stage-1 step against naive KD, TRL GKDTrainer and TextBrewer, side by side on the
# same batches. The peers live in their own venv (.venv-bench, created once by tools/bench_peers_setup.sh);
# the run takes a few minutes on 2 cores and ends with the summary lines quoted in docs/benchmarks.md.
bench-peers:
	PYTHON=$(PYTHON) bash tools/bench_peers_setup.sh
	.venv-bench/bin/python benchmarks/bench_peers.py

# JupyterLab on 127.0.0.1, served from the repository root (runs/ and notebooks/ both reachable), opening on
# notebooks/; --allow-root only when run as root. The browser tests start it the same way (tools/lab.sh).
lab: $(STAMP)
	VENV=$(VENV) bash tools/lab.sh

# The notebooks in JupyterLab in headless chromium (tests/browser): no cell shows an error, notebook 01's slider
# drives its table, every report image loads. Installs Debian's chromium + chromium-driver (apt-get, idempotent)
# and selenium first. Reuses $(BROWSER_RUN_DIR) (what notebooks-test leaves) and completes it if needed;
# screenshots go to $(BROWSER_RUN_DIR)/browser/.
BROWSER_RUN_DIR ?= $(SMOKE_DIR)

browser-setup: $(STAMP)
	VENV=$(VENV) bash tools/browser_setup.sh

browser-test: browser-setup
	GLMD_BROWSER_TEST=1 GLMD_BROWSER_RUN_DIR=$(BROWSER_RUN_DIR) $(BIN)/pytest -q -p no:cacheprovider tests/browser
