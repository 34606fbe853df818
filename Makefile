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

.PHONY: install demo smoke test unit notebooks-test clean-notebooks bench lab

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

test: unit notebooks-test

clean-notebooks: $(STAMP)
	$(BIN)/python tools/clean_notebooks.py

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/
