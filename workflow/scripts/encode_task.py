"""Rule encode: answers and hidden states of one (model, recipe, task) -> results/<run>/cache/.../meta.json."""

from pathlib import Path

import torch

from inbedder.encode import encode_task, job_from_params
from inbedder.rule_script import rule_script

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
w = snakemake.wildcards

with rule_script(snakemake.log[0], "encode_task", f"encoding {w.model} on {w.task}") as log:
    torch.set_num_threads(max(1, snakemake.threads))
    re_encoder = list(snakemake.input.re_encoder)  # empty unless a re-encode mode is scored
    gold = list(snakemake.input.gold)  # the positive control's gold labels, when it is scored here
    job = job_from_params(dict(snakemake.params.settings), Path(snakemake.input.model).parent,
                          Path(re_encoder[0]).parent if re_encoder else None, gold[0] if gold else None)
    meta = encode_task(job, snakemake.input.table, Path(snakemake.output[0]).parent)
    log.info("cache %s: %d prompts, %s", meta["cache_key"][:12], meta["prompts"]["n"], meta.get("stats"))
