"""Rule evaluate_task: score one (model, recipe, task) from its encode cache."""

import logging
from pathlib import Path

from inbedder.evaluate import evaluate_cache
from inbedder.files import rule_log

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("evaluate_task")

with rule_log(snakemake.log[0]) as log_file:
    settings = dict(snakemake.params.settings)
    w = snakemake.wildcards
    try:
        evaluate_cache(
            Path(snakemake.input.cache).parent,
            snakemake.input.table,
            snakemake.output.scores,
            snakemake.output.details,
            model=w.model,
            recipe=settings["recipe"],
            train_seed=settings["train_seed"],
            task=w.task,
            spec=dict(settings["spec"]),
            modes=list(settings["modes"]),
            layers=list(settings["layers"]),
            seeds=list(settings["seeds"]),
            out_items=snakemake.output.item_data,
        )
    except Exception:
        log.exception("evaluating %s-%s on %s failed", w.model, w.recipe, w.task)
        raise
