# Report stage: scores.csv, skipped.csv, training summaries, Snakemake benchmark files, data manifests,
# the config and the project's copy of the paper's numbers -> results/<run>/report/index.html (one
# self-contained page) and its figures. Library: inbedder.report.
from inbedder.files import sha256_json


# `training`: train_summary.json of every model fine-tuned in this run (train_log.csv is read beside it).
# `config_sha256`: the page prints the whole configuration under Provenance, so any config change
# rerenders it (a few seconds); the scores themselves come in through the inputs.
rule render_report:
    input:
        scores=f"{R}/scores.csv",
        skipped=f"{R}/skipped.csv",
        training=[f"{R}/models/{m}-{r}/train_summary.json" for m, r in trained_pairs()],
        template="report/index.html.j2",
        css="report/style.css",
        paper="src/inbedder/paper_numbers.csv",
    output:
        html=report(
            f"{R}/report/index.html",
            caption="../../report/index.rst",
            category="Report",
        ),
        figures=report(
            directory(f"{R}/report/figures"),
            patterns=["{name}.png"],
            caption="../../report/figures.rst",
            category="Figures",
        ),
    log:
        f"{R}/logs/report/render_report.log",
    params:
        data_dir="data",
        configfiles=[str(path) for path in workflow.configfiles],
        config_sha256=sha256_json(config),
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/render_report.py"
