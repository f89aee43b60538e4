"""Rule evaluate_task: score one (model, recipe, task) from its encode cache."""

from pathlib import Path

from inbedder.evaluate import evaluate_cache
from inbedder.rule_script import rule_script

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
w = snakemake.wildcards

with rule_script(snakemake.log[0], "evaluate_task", f"evaluating {w.model}-{w.recipe} on {w.task}"):
    settings = dict(snakemake.params.settings)
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
