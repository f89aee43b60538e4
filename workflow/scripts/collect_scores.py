"""Rule collect_scores: every per-job score table -> scores.csv; unrunnable tasks -> skipped.csv."""

import contextlib
import logging

from inbedder.evaluate import collect_scores

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("collect_scores")

with open(snakemake.log[0], "w", encoding="utf-8") as log_file, contextlib.redirect_stderr(log_file):
    logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
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
