"""Rule prepare_dataset: build data/prepared/<dataset>.parquet from the fetched sources."""

import logging
from pathlib import Path

from inbedder.datasets import prepare
from inbedder.files import rule_log

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("prepare_dataset")

with rule_log(snakemake.log[0]) as log_file:
    try:
        prepare(
            snakemake.wildcards.dataset,
            raw_root=Path(snakemake.input[0]).parents[1],
            out_path=snakemake.output[0],
        )
    except Exception:
        log.exception("preparing dataset %s failed", snakemake.wildcards.dataset)
        raise
