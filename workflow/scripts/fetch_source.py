"""Rule fetch_source: fetch one declared source into data/raw/<source>/ (mirror, URL or hub)."""

import contextlib
import logging
from pathlib import Path

from inbedder.sources import fetch

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("fetch_source")

with open(snakemake.log[0], "w", encoding="utf-8") as log_file, contextlib.redirect_stderr(log_file):
    logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
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
