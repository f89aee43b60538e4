"""Rule prepare_dataset: build data/prepared/<dataset>.parquet from the fetched sources."""

from pathlib import Path

from inbedder.datasets import prepare
from inbedder.rule_script import rule_script

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
dataset = snakemake.wildcards.dataset

with rule_script(snakemake.log[0], "prepare_dataset", f"preparing dataset {dataset}"):
    prepare(dataset, raw_root=Path(snakemake.input[0]).parents[1], out_path=snakemake.output[0])
