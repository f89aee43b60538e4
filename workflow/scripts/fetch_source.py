"""Rule fetch_source: fetch one declared source into data/raw/<source>/ (mirror, URL or hub)."""

import logging
from pathlib import Path

from inbedder.files import rule_log
from inbedder.sources import fetch, resolve_origin

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("fetch_source")

with rule_log(snakemake.log[0]) as log_file:
    source = snakemake.wildcards.source
    offline = snakemake.config.get("offline", False)
    try:
        origin = resolve_origin(snakemake.config.get("data_mirror", "auto"), offline)
        log.info("source %s: origin %s", source, origin.describe())
        manifest = fetch(source, Path(snakemake.output[0]).parent, mirror=origin.mirror, offline=offline)
    except Exception:
        log.exception("fetching source %s failed", source)
        raise
    log.info("fetched %s from %s: %d files", manifest["source"], manifest["origin"], len(manifest["files"]))
