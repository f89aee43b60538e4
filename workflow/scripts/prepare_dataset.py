"""Rule prepare_dataset: build data/prepared/<dataset>.parquet from the fetched sources."""

import contextlib
import logging
from pathlib import Path

from inbedder.datasets import prepare

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("prepare_dataset")

with open(snakemake.log[0], "w", encoding="utf-8") as log_file, contextlib.redirect_stderr(log_file):
    logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        prepare(
            snakemake.wildcards.dataset,
            raw_root=Path(snakemake.input[0]).parents[1],
            out_path=snakemake.output[0],
            instructions=dict(snakemake.params.instructions),
        )
    except Exception:
        log.exception("preparing dataset %s failed", snakemake.wildcards.dataset)
        raise
