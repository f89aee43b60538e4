"""Rule task_table: the rows one task scores -> results/<run>/tasks/<task>.parquet."""

from inbedder.rule_script import rule_script
from inbedder.task_kinds import build_task_table

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
task = snakemake.wildcards.task

with rule_script(snakemake.log[0], "task_table", f"building the task table of {task}") as log:
    s = dict(snakemake.params.settings)
    table = build_task_table(task, s["spec"], snakemake.output[0], data_dir=snakemake.params.data_dir,
                             limit=s["limit"])
    log.info("%s: %d rows (%s, limit %s)", task, len(table), table.attrs["kind"], s["limit"])
