# Encode stage: one pass of a model over every distinct (text, instruction) prompt of a task ->
# results/<run>/cache/<model>-<recipe>/<task>/ (prompts, answers, hidden states, meta.json last).
# The prompts are those of the task table (rule task_table). Every embedding mode is pooled from that
# cache (inbedder.pooling). A cache whose key and checksums still hold is reused, not recomputed.
# Library: inbedder.encode (params: rule_params.encode_params); the cache format: inbedder.cache.
from inbedder.controls import gold_inputs
from inbedder.encode import re_encoder_name
from inbedder.rule_params import encode_params


rule encode:
    input:
        model=lambda wildcards: model_ready(wildcards.model, wildcards.recipe),
        table=f"{R}/tasks/{{task}}.parquet",
        re_encoder=lambda wildcards: [
            model_ready(name, "none")
            for name in [re_encoder_name(wildcards.model, wildcards.task, config)]
            if name
        ],
        gold=lambda wildcards: gold_inputs(wildcards.model, wildcards.task, config),
    output:
        f"{R}/cache/{{model}}-{{recipe}}/{{task}}/meta.json",
    log:
        f"{R}/logs/encode/{{model}}-{{recipe}}/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/encode/{{model}}-{{recipe}}/{{task}}.tsv"
    params:
        settings=lambda wildcards: encode_params(
            wildcards.model, wildcards.recipe, wildcards.task, config
        ),
    threads: 2
    resources:
        gpu=1,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/encode_task.py"
