"""Rule render_report: results/<run>/report/index.html (self-contained) and its figures."""

import json

from inbedder.files import write_json
from inbedder.report import ReportInputs, render_report
from inbedder.rule_script import rule_script

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive

with rule_script(snakemake.log[0], "render_report", "rendering the report") as log:
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
