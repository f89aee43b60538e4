# Evaluate stage: encode cache -> per-(model, recipe, task) tidy scores, mteb-layout JSON and cluster
# explanations -> results/<run>/scores.csv (+ skipped.csv). The rows scored are the task table's, the
# same file the encode job read. Library: inbedder.evaluate, inbedder.task_kinds.
rule evaluate_task:
    input:
        cache=f"{R}/cache/{{model}}-{{recipe}}/{{task}}/meta.json",
        table=f"{R}/tasks/{{task}}.parquet",
    output:
        scores=f"{R}/scores/{{model}}-{{recipe}}/{{task}}.csv",
        details=directory(f"{R}/scores/{{model}}-{{recipe}}/{{task}}"),
        item_data=f"{R}/scores/{{model}}-{{recipe}}/{{task}}.items.parquet",
    log:
        f"{R}/logs/evaluate/{{model}}-{{recipe}}/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{model}}-{{recipe}}/{{task}}.tsv"
    params:
        settings=lambda wildcards: evaluate_params(wildcards.model, wildcards.recipe, wildcards.task, config),
    threads: 1
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/evaluate_task.py"


rule collect_scores:
    input:
        score_files(),
    output:
        scores=report(f"{R}/scores.csv", caption="../../report/scores.rst", category="Scores"),
        skipped=report(f"{R}/skipped.csv", caption="../../report/skipped.rst", category="Scores"),
    log:
        f"{R}/logs/evaluate/collect_scores.log",
    params:
        skipped=evaluation_skips(),
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/collect_scores.py"
