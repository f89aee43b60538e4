"""Rule fetch_source: fetch one declared source into data/raw/<source>/ (mirror, URL or hub)."""

from pathlib import Path

from inbedder.rule_script import rule_script
from inbedder.sources import fetch, resolve_origin

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
source = snakemake.wildcards.source

with rule_script(snakemake.log[0], "fetch_source", f"fetching source {source}") as log:
    offline = snakemake.config["offline"]
    origin = resolve_origin(snakemake.config["data_mirror"], offline)
    log.info("source %s: origin %s", source, origin.describe())
    manifest = fetch(source, Path(snakemake.output[0]).parent, mirror=origin.mirror, offline=offline)
    log.info("fetched %s from %s: %d files", manifest["source"], manifest["origin"], len(manifest["files"]))
