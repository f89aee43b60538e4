"""Rule collect_scores: every per-job score table -> scores.csv; unrunnable tasks -> skipped.csv."""

from inbedder.evaluate import collect_scores
from inbedder.rule_script import rule_script

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive

with rule_script(snakemake.log[0], "collect_scores", "collecting scores") as log:
    frame = collect_scores(
        list(snakemake.input),
        dict(snakemake.params.skipped),
        snakemake.output.scores,
        snakemake.output.skipped,
    )
    log.info("%d score rows from %d tables; %d task(s) skipped", len(frame), len(snakemake.input),
             len(snakemake.params.skipped))
