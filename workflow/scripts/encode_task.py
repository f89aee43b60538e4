"""Rule encode: answers and hidden states of one (model, recipe, task) -> results/<run>/cache/.../meta.json."""

import logging
from pathlib import Path

import torch

from inbedder.encode import encode_task, job_from_params
from inbedder.files import rule_log

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("encode_task")

with rule_log(snakemake.log[0]) as log_file:
    torch.set_num_threads(max(1, snakemake.threads))
    re_encoder = list(snakemake.input.re_encoder)  # empty unless a re-encode mode is scored
    job = job_from_params(dict(snakemake.params.settings), Path(snakemake.input.model).parent,
                          Path(re_encoder[0]).parent if re_encoder else None)
    try:
        meta = encode_task(job, snakemake.input.table, Path(snakemake.output[0]).parent)
    except Exception:
        log.exception("encoding %s on %s failed", snakemake.wildcards.model, snakemake.wildcards.task)
        raise
    log.info("cache %s: %d prompts, %s", meta["cache_key"][:12], meta["prompts"]["n"], meta.get("stats"))
