# Encode stage: one pass of a model over every distinct (text, instruction) prompt of a task ->
# results/<run>/cache/<model>-<recipe>/<task>/ (prompts, answers, hidden states, meta.json last).
# Every embedding mode is pooled from that cache (inbedder.pooling). Library: inbedder.encode.
from inbedder.tasks import modes_for as encode_modes_for


# helpers
def encode_modes(model, task):
    """The model's embedding modes that this task scores (decides whether answers are re-encoded)."""
    return encode_modes_for(TASKS[task], MODELS[model].get("modes", []))


def encode_re_encoder(model, task):
    """The sentence encoder for the re-encode modes, or None when no such mode is scored."""
    modes = encode_modes(model, task)
    if MODELS[model]["kind"] == "sentence-encoder" or not any(m.startswith("re-encode") for m in modes):
        return None
    name = config.get("re_encoder")
    if not name:
        raise ValueError(f"models.{model}.modes has a re-encode mode but config `re_encoder` is not set")
    if name not in MODELS or MODELS[name]["kind"] != "sentence-encoder":
        raise ValueError(f"re_encoder: {name!r} is not a sentence-encoder key of models")
    return name


def encode_inputs(wildcards):
    """The model folder's completion marker, the task's prepared table and the re-encoder, if any."""
    spec = TASKS[wildcards.task]
    inputs = {"model": model_ready(wildcards.model, wildcards.recipe)}
    if spec["kind"] == "own":
        inputs["data"] = spec["path"]
    elif "dataset" in spec:
        inputs["data"] = f"data/prepared/{spec['dataset']}.parquet"
    re_encoder = encode_re_encoder(wildcards.model, wildcards.task)
    if re_encoder:
        inputs["re_encoder"] = model_ready(re_encoder, "none")
    return inputs


def encode_params(wildcards):
    """Exactly the settings that change a cache (paths of the model and re-encoder are inputs)."""
    model, recipe, task = wildcards.model, wildcards.recipe, wildcards.task
    spec = MODELS[model]
    generative = spec["kind"] != "sentence-encoder"
    modes = encode_modes(model, task)
    return {
        "task": task,
        "task_spec": TASKS[task],
        "kind": spec["kind"],
        "template": RECIPES[recipe]["template"] if recipe in RECIPES else "inbedder",
        "max_new_tokens": int(spec.get("max_new_tokens", 3)) if generative else 0,
        "layers": list(config.get("layers", [-1])) if generative else [-1],
        "batch_size": int(config.get("encode_batch_size", 32)),
        "device": config.get("device", "auto"),
        "dtype": config.get("dtype", "auto"),
        "re_encode_multi": generative and "re-encode-multi" in modes,
        "limit": config["limits"]["task_rows"],
    }


rule encode:
    input:
        unpack(encode_inputs),
    output:
        R + "/cache/{model}-{recipe}/{task}/meta.json",
    log:
        R + "/logs/encode/{model}-{recipe}/{task}.log",
    benchmark:
        R + "/benchmarks/encode/{model}-{recipe}/{task}.tsv"
    params:
        settings=encode_params,
        data_dir="data",
    threads: 2
    resources:
        gpu=1,
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/encode_task.py"
