"""Rule fetch_source: fetch one declared source into data/raw/<source>/ (mirror, URL or hub)."""

import logging
from pathlib import Path

from inbedder.files import rule_log
from inbedder.sources import fetch

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("fetch_source")

with rule_log(snakemake.log[0]) as log_file:
    try:
        manifest = fetch(
            snakemake.wildcards.source,
            Path(snakemake.output[0]).parent,
            mirror=snakemake.config.get("data_mirror"),
            offline=bool(snakemake.config.get("offline")),
        )
    except Exception:
        log.exception("fetching source %s failed", snakemake.wildcards.source)
        raise
    log.info("fetched %s from %s: %d files", manifest["source"], manifest["origin"], len(manifest["files"]))
