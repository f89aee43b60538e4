"""Rule materialize_model / materialize_released: data/models/<name>/ as safetensors + tokenizer."""

import logging
from pathlib import Path

from inbedder.files import rule_log
from inbedder.models import materialize, parse_source

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("materialize_model")

with rule_log(snakemake.log[0]) as log_file:
    spec = snakemake.params.spec
    out_dir = Path(snakemake.output[0]).parent
    try:
        record = materialize(spec["name"], spec, out_dir, source=parse_source(spec["name"], spec["source"]))
    except Exception:
        log.exception("materialising %s into %s failed", spec["name"], out_dir)
        raise
    log.info(
        "%s -> %s (sha256 %s, %d weight file(s))",
        spec["name"],
        out_dir,
        record["sha256"],
        len(record["files"]),
    )
