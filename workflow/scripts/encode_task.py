"""Rule encode: answers and hidden states of one (model, recipe, task) -> results/<run>/cache/.../meta.json."""

from pathlib import Path

import torch

from inbedder.encode import encode_task
from inbedder.rule_script import rule_script

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
w = snakemake.wildcards

with rule_script(snakemake.log[0], "encode_task", f"encoding {w.model} on {w.task}") as log:
    torch.set_num_threads(max(1, snakemake.threads))
    s = dict(snakemake.params.settings)
    re_encoder = list(snakemake.input.re_encoder)  # empty unless a re-encode mode is scored
    meta = encode_task(
        snakemake.input.table,
        Path(snakemake.input.model).parent,
        s["kind"],
        Path(snakemake.output[0]).parent,
        template=s["template"],
        max_new_tokens=s["max_new_tokens"],
        layers=s["layers"],
        batch_size=s["batch_size"],
        device=s["device"],
        dtype=s["dtype"],
        re_encoder_dir=Path(re_encoder[0]).parent if re_encoder else None,
        re_encode_multi=s["re_encode_multi"],
        method=s["method"],
        filter_instructions=s["filter_instructions"],
        decoding=s["decoding"],
        keep_last_words=s["keep_last_words"],
    )
    log.info("cache %s: %d prompts, %s", meta["cache_key"][:12], meta["prompts"]["n"], meta.get("stats"))
