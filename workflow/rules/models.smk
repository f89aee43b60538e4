# Models stage: each registry model (and each released InBedder checkpoint) is materialised once
# into data/models/<name>/ as plain safetensors + tokenizer; fingerprint.json, written last, marks
# the folder complete. Library: inbedder.models (which also computes the rules' params).
from inbedder.rule_params import materialize_params


rule materialize_model:
    output:
        "data/models/{model}/fingerprint.json",
    log:
        "data/logs/models/materialize_model/{model}.log",
    benchmark:
        "data/benchmarks/models/materialize_model/{model}.tsv"
    params:
        spec=lambda wildcards: materialize_params(wildcards.model, MODELS),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/materialize_model.py"


# The authors' fine-tuned checkpoint (recipe `released`), e.g. BrandonZYW/opt-350m-InBedder.
rule materialize_released:
    output:
        "data/models/{model}-released/fingerprint.json",
    log:
        "data/logs/models/materialize_released/{model}.log",
    benchmark:
        "data/benchmarks/models/materialize_released/{model}.tsv"
    params:
        spec=lambda wildcards: materialize_params(wildcards.model, MODELS, released=True),
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/materialize_model.py"
