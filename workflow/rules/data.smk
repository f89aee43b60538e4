# Data stage: declared sources -> data/raw/<source>/ -> data/prepared/<dataset>.parquet ->
# results/<run>/train/<recipe>.jsonl (+ .heldout.jsonl: per run, since runs slice differently).
# Library: inbedder.sources (declarations: inbedder.source_registry), inbedder.datasets (which also
# computes each rule's inputs and params, so this file holds rules only).
from inbedder.datasets import DATASETS, source_manifests, training_inputs
from inbedder.source_registry import load_sources

SOURCES = load_sources()


wildcard_constraints:
    source="|".join(map(re.escape, SOURCES.names())),
    dataset="|".join(map(re.escape, DATASETS)),


# The origin (config `data_mirror`, `offline`, $INBEDDER_DATA_MIRROR: inbedder.sources.resolve_origin)
# is decided by the script, not passed as params: every origin yields the same checksummed bytes, so
# switching origins must not refetch or rebuild. The job's log names the origin and why.
# `declaration` (pins, URLs, checksums of sources.yaml) is a param: a changed pin refetches.
rule fetch_source:
    output:
        "data/raw/{source}/manifest.json",
    log:
        "data/logs/data/fetch_source/{source}.log",
    params:
        declaration=lambda wildcards: SOURCES[wildcards.source].declaration(),
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/fetch_source.py"


# Only what comes with the data: a task's instructions are resolved by rule task_table (tasks.smk), so a
# changed instruction never rebuilds a prepared table.
rule prepare_dataset:
    input:
        lambda wildcards: source_manifests(wildcards.dataset),
    output:
        "data/prepared/{dataset}.parquet",
    log:
        "data/logs/data/prepare_dataset/{dataset}.log",
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/prepare_dataset.py"


# Held-out QA examples of the training check: C3 validation offline, the hub QA data otherwise.
rule training_table:
    input:
        unpack(lambda wildcards: training_inputs(wildcards.recipe, RECIPES, bool(config["offline"]))),
    output:
        train=f"{R}/train/{{recipe}}.jsonl",
        heldout=f"{R}/train/{{recipe}}.heldout.jsonl",
    log:
        f"{R}/logs/data/training_table/{{recipe}}.log",
    wildcard_constraints:
        recipe="[A-Za-z0-9_]+",  # a recipe, never one training seed's run of it
    params:
        train_rows=config["limits"]["train_rows"],
        heldout_rows=config["limits"]["heldout_rows"],
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/training_table.py"
