"""Rule render_report: results/<run>/report/index.html (self-contained) and its figures."""

import json
import logging

from inbedder.files import rule_log, write_json
from inbedder.report import ReportInputs, render_report

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
log = logging.getLogger("render_report")

with rule_log(snakemake.log[0]) as log_file:
    try:
        summary = render_report(
            ReportInputs.from_named(dict(snakemake.input.items())),
            snakemake.output.html,
            config=snakemake.config,
            figures_dir=snakemake.output.figures,
            repo_root=".",
            configfiles=list(snakemake.params.configfiles),
        )
        write_json(snakemake.output.summary, summary)
        log.info("verdicts: %s", json.dumps(summary["verdicts"], sort_keys=True))
        log.info("figures drawn: %s; rendered in %.1f s", summary["figures"], summary["seconds"])
    except Exception:
        log.exception("rendering the report failed")
        raise
