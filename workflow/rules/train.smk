# Training stage: fine-tune a language model on a recipe's table (InBedder QA or Alpaca) with the
# paper's objective for its kind. Checkpoints in <out>/checkpoints/ let a killed run resume;
# train_summary.json, written last, marks the run complete. Library: inbedder.train (the job:
# inbedder.train_settings; the rule's params: inbedder.rule_params.train_params).
from inbedder.rule_params import lr_sweep_params, train_leader, train_params
from inbedder.train_sweep import sweep_table_path
from inbedder.vocabulary import split_recipe


rule train_model:
    input:
        base="data/models/{model}/fingerprint.json",
        # a further training seed (`<recipe>@<seed>`) trains on its recipe's table
        train=lambda wildcards: f"{R}/train/{split_recipe(wildcards.recipe)[0]}.jsonl",
        heldout=lambda wildcards: f"{R}/train/{split_recipe(wildcards.recipe)[0]}.heldout.jsonl",
        # train.steps_of: the run whose final step this one ends at
        leader=lambda wildcards: [f"{R}/models/{wildcards.model}-{leader}/train_summary.json"
                                  for leader in [train_leader(wildcards.model, wildcards.recipe, config)] if leader],
        # train.lr_sweep: the sweep table whose chosen rate replaces learning_rate
        lr_sweep=lambda wildcards: [str(sweep_table_path(R, wildcards.model, split_recipe(wildcards.recipe)[0]))]
        if lr_sweep_params(wildcards.model, config) else [],
    output:
        summary=report(
            f"{R}/models/{{model}}-{{recipe}}/train_summary.json",
            caption="../../report/train_summary.rst",
            category="Training",
            labels={"model": "{model}", "recipe": "{recipe}", "file": "summary"},
        ),
        train_log=f"{R}/models/{{model}}-{{recipe}}/train_log.csv",
        loss=report(
            f"{R}/models/{{model}}-{{recipe}}/loss.png",
            caption="../../report/loss.rst",
            category="Training",
            labels={"model": "{model}", "recipe": "{recipe}", "file": "loss"},
        ),
        heldout_curve=f"{R}/models/{{model}}-{{recipe}}/heldout_curve.csv",
        heldout_f1=report(
            f"{R}/models/{{model}}-{{recipe}}/heldout_f1.png",
            caption="../../report/heldout_f1.rst",
            category="Training",
            labels={"model": "{model}", "recipe": "{recipe}", "file": "held-out F1"},
        ),
    log:
        f"{R}/logs/train/{{model}}-{{recipe}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{model}}-{{recipe}}.tsv"
    params:
        job=lambda wildcards: train_params(wildcards.model, wildcards.recipe, config),
    threads: 2
    resources:
        gpu=1,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/train_model.py"


# train.lr_sweep: short fine-tunes of (model, recipe) at each rate; the table marks the rate lr_rule picks.
rule lr_sweep:
    input:
        base="data/models/{model}/fingerprint.json",
        train=f"{R}/train/{{recipe}}.jsonl",
        heldout=f"{R}/train/{{recipe}}.heldout.jsonl",
    output:
        table=f"{R}/lr_sweep/{{model}}-{{recipe}}.csv",
    wildcard_constraints:
        recipe="[A-Za-z0-9_]+",  # a recipe: its first training seed's sweep serves every seed
    log:
        f"{R}/logs/lr_sweep/{{model}}-{{recipe}}.log",
    benchmark:
        f"{R}/benchmarks/lr_sweep/{{model}}-{{recipe}}.tsv"
    params:
        job=lambda wildcards: train_params(wildcards.model, wildcards.recipe, config),
        sweep=lambda wildcards: lr_sweep_params(wildcards.model, config),
    threads: 2
    resources:
        gpu=1,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/lr_sweep.py"
