# Task tables: the rows each task scores, decided once -> results/<run>/tasks/<task>.parquet (the rows
# after `limits.task_rows`, each with its subset and resolved instruction; for mteb tasks the texts mteb
# will ask for). The encode and evaluate jobs of every model read this one file.
# Library: inbedder.task_kinds (params: rule_params.task_table_params; inputs: common.smk task_data).
from inbedder.rule_params import task_table_params


rule task_table:
    input:
        task_data,
    output:
        f"{R}/tasks/{{task}}.parquet",
    log:
        f"{R}/logs/tasks/{{task}}.log",
    params:
        settings=lambda wildcards: task_table_params(wildcards.task, config),
        data_dir="data",
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/task_table.py"
