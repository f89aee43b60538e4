"""Rule training_table: results/<run>/train/<recipe>.jsonl and <recipe>.heldout.jsonl from prepared tables."""

import logging

from inbedder.datasets import write_training_tables
from inbedder.files import rule_log

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("training_table")

with rule_log(snakemake.log[0]) as log_file:
    try:
        n_train, n_heldout = write_training_tables(
            snakemake.input.train,
            snakemake.input.heldout,
            snakemake.output.train,
            snakemake.output.heldout,
            train_rows=snakemake.params.train_rows,
            heldout_rows=snakemake.params.heldout_rows,
        )
    except Exception:
        log.exception("training table of recipe %s failed", snakemake.wildcards.recipe)
        raise
    log.info("%s: %d training rows, %d held-out rows", snakemake.wildcards.recipe, n_train, n_heldout)
