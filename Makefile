# The two commands of the README: `make demo` and `make test`. Each target sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SNAKEMAKE := $(BIN)/snakemake
# The offline mirror of the data (see ../shared/data/README.md); override with INBEDDER_DATA_MIRROR.
export INBEDDER_DATA_MIRROR ?= $(abspath ../shared/data)

.PHONY: setup demo test test-fast lint bench report clean

setup: $(STAMP)

# Idempotent: the venv is rebuilt only when the pins change. torch is the CPU wheel pinned in
# requirements.lock; nothing is installed outside .venv.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

demo: setup
	$(SNAKEMAKE) --profile workflow/profiles/offline --config data_mirror=$(INBEDDER_DATA_MIRROR)
	@echo "Report: results/offline/report/index.html"

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check src tests workflow/scripts bench
	$(SNAKEMAKE) --lint
	$(SNAKEMAKE) --lint --profile workflow/profiles/offline

bench: setup
	$(BIN)/python bench/bench_encode.py

clean:
	rm -rf results/smoke .snakemake
