"""Rule training_table: results/<run>/train/<recipe>.jsonl and <recipe>.heldout.jsonl from prepared tables."""

from inbedder.datasets import write_training_tables
from inbedder.rule_script import rule_script

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
recipe = snakemake.wildcards.recipe

with rule_script(snakemake.log[0], "training_table", f"training table of recipe {recipe}") as log:
    n_train, n_heldout = write_training_tables(
        snakemake.input.train,
        snakemake.input.heldout,
        snakemake.output.train,
        snakemake.output.heldout,
        train_rows=snakemake.params.train_rows,
        heldout_rows=snakemake.params.heldout_rows,
    )
    log.info("%s: %d training rows, %d held-out rows", recipe, n_train, n_heldout)
