"""Rule task_table: the rows one task scores -> results/<run>/tasks/<task>.parquet."""

import logging

from inbedder.files import rule_log
from inbedder.task_kinds import build_task_table

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("task_table")

with rule_log(snakemake.log[0]) as log_file:
    s = dict(snakemake.params.settings)
    task = snakemake.wildcards.task
    try:
        table = build_task_table(task, s["spec"], snakemake.output[0], data_dir=snakemake.params.data_dir,
                                 limit=s["limit"])
    except Exception:
        log.exception("building the task table of %s failed", task)
        raise
    log.info("%s: %d rows (%s, limit %s)", task, len(table), table.attrs["kind"], s["limit"])
