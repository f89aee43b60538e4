# Report stage: scores.csv, skipped.csv, the training summaries and logs, the run's benchmark files, the
# cluster explanations, the manifests and fingerprints of the data and models the run read, the projection
# task's caches, the config and the project's copy of the paper's numbers -> results/<run>/report/index.html
# (one self-contained page) and its figures. Every file the page reads is an input here (common.smk:
# report_inputs); the library globs nothing. Library: inbedder.report.
from inbedder.files import sha256_json


# `config_sha256`: the page prints the whole configuration under Provenance and sets each fidelity switch
# (method block, re_encoder, per-model decoding / dtype, recipe epochs) beside the authors' value under
# Method fidelity, so any config change rerenders it (a few seconds); the scores come in through the inputs.
rule render_report:
    input:
        unpack(report_inputs),
        template="report/index.html.j2",
        css="report/style.css",
        paper="src/inbedder/paper_numbers.csv",
    output:
        html=report(
            f"{R}/report/index.html",
            caption="../../report/index.rst",
            category="Report",
        ),
        # what the page was made from and its verdicts: commit, config hash, scores hash (make publish reads it)
        summary=f"{R}/report/summary.json",
        figures=report(
            directory(f"{R}/report/figures"),
            patterns=["{name}.png"],
            caption="../../report/figures.rst",
            category="Figures",
        ),
    log:
        f"{R}/logs/report/render_report.log",
    params:
        configfiles=[str(path) for path in workflow.configfiles],
        config_sha256=sha256_json(config),
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/render_report.py"
