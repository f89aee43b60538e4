# Training stage: fine-tune a language model on a recipe's table (InBedder QA or Alpaca) with the
# paper's objective for its kind. Checkpoints in <out>/checkpoints/ let a killed run resume;
# train_summary.json, written last, marks the run complete. Library: inbedder.train.


# helpers
def train_params(model, recipe):
    """Exactly the settings that change a fine-tune: the model's train block, kind, recipe, precision."""
    spec = model_spec(model)
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r} is not a key of recipes (known: {sorted(RECIPES)})")
    train = dict(spec.get("train") or {})
    return {
        "model": model,
        "recipe": recipe,
        "kind": spec["kind"],
        "template": RECIPES[recipe]["template"],
        "dataset": RECIPES[recipe]["dataset"],
        "train": train,
        "max_new_tokens": train.get("heldout_max_new_tokens") or spec.get("max_new_tokens", 8),
        "heldout_rows": train.get("heldout_rows") or config["limits"]["heldout_rows"],
        "device": config.get("device", "auto"),
        "dtype": config.get("dtype", "auto"),
    }


rule train_model:
    input:
        base="data/models/{model}/fingerprint.json",
        train="data/train/{recipe}.jsonl",
        heldout="data/train/{recipe}.heldout.jsonl",
    output:
        R + "/models/{model}-{recipe}/train_summary.json",
    log:
        R + "/logs/train/{model}-{recipe}.log",
    benchmark:
        R + "/benchmarks/train/{model}-{recipe}.tsv"
    params:
        job=lambda wildcards: train_params(wildcards.model, wildcards.recipe),
    threads: 2
    resources:
        gpu=1,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/train_model.py"
