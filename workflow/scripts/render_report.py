"""Rule render_report: results/<run>/report/index.html (self-contained) and its figures."""

import json
import logging
from pathlib import Path

from inbedder.files import rule_log
from inbedder.report import render_report

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("render_report")

with rule_log(snakemake.log[0]) as log_file:
    try:
        summary = render_report(
            snakemake.input.scores,
            snakemake.output.html,
            config=snakemake.config,
            skipped_path=snakemake.input.skipped,
            figures_dir=snakemake.output.figures,
            data_dir=snakemake.params.data_dir,
            repo_root=".",
            template_dir=Path(snakemake.input.template).parent,
            paper_path=snakemake.input.paper,
            configfiles=list(snakemake.params.configfiles),
        )
        log.info("verdicts: %s", json.dumps(summary["verdicts"], sort_keys=True))
        log.info("figures drawn: %s; rendered in %.1f s", summary["figures"], summary["seconds"])
    except Exception:
        log.exception("rendering the report failed")
        raise
