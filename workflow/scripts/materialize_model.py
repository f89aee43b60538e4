"""Rule materialize_model / materialize_released: data/models/<name>/ as safetensors + tokenizer."""

from pathlib import Path

from inbedder.models import materialize, parse_source
from inbedder.rule_script import rule_script

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
spec = snakemake.params.spec
out_dir = Path(snakemake.output[0]).parent

name = spec["name"]

with rule_script(snakemake.log[0], "materialize_model", f"materialising {name} into {out_dir}") as log:
    record = materialize(name, spec, out_dir, source=parse_source(name, spec["source"]))
    log.info("%s -> %s (sha256 %s, %d weight file(s))", name, out_dir, record["sha256"], len(record["files"]))
