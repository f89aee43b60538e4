"""Rule collect_scores: every per-job score table -> scores.csv; unrunnable tasks -> skipped.csv."""

import logging

from inbedder.evaluate import collect_scores
from inbedder.files import rule_log

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("collect_scores")

with rule_log(snakemake.log[0]) as log_file:
    try:
        frame = collect_scores(
            list(snakemake.input),
            dict(snakemake.params.skipped),
            snakemake.output.scores,
            snakemake.output.skipped,
        )
        log.info("%d score rows from %d tables; %d task(s) skipped", len(frame), len(snakemake.input),
                 len(snakemake.params.skipped))
    except Exception:
        log.exception("collecting scores failed")
        raise
