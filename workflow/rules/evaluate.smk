# Evaluate stage: encode cache -> per-(model, recipe, task) tidy scores, mteb-layout JSON and cluster
# explanations -> results/<run>/scores.csv (+ skipped.csv). Library: inbedder.evaluate, inbedder.tasks.
from inbedder.tasks import modes_for


# helpers
def eval_modes(model, task):
    """Embedding modes scored: the model's, restricted by the task's `modes` (robustness: 1st-gen)."""
    return modes_for(TASKS[task], MODELS[model].get("modes", []))


def eval_layers(model):
    """Hidden layers scored: config `layers` for language models, -1 for sentence encoders."""
    if MODELS[model]["kind"] == "sentence-encoder":
        return [-1]
    return list(config.get("layers", [-1]))


def evaluate_params(wildcards):
    """Exactly the settings that change one job's scores."""
    return {
        "spec": TASKS[wildcards.task],
        "modes": eval_modes(wildcards.model, wildcards.task),
        "layers": eval_layers(wildcards.model),
        "seeds": list(config.get("seeds", [0, 1, 2])),
        "limit": config["limits"]["task_rows"],
    }


def task_data(wildcards):
    """The task's own input file: its prepared table, or the own-data file."""
    spec = TASKS[wildcards.task]
    if spec["kind"] == "own":
        return [spec["path"]]
    if "dataset" in spec:
        return [f"data/prepared/{spec['dataset']}.parquet"]
    return []


def evaluated_score_files():
    """Score tables of this run, less (model, task) pairs with no mode to score."""
    return [f for f in score_files() if eval_modes(*evaluated_pair(f))]


def evaluated_pair(path):
    """(model, task) of a score file R/scores/<model>-<recipe>/<task>.csv."""
    folder, name = path.split("/")[-2:]
    model = next(m for m in sorted(MODELS, key=len, reverse=True) if folder.startswith(m + "-"))
    return model, name[: -len(".csv")]


def evaluation_skips():
    """Task -> reason, for selected tasks that cannot run or have no mode for some model."""
    skips = dict(skipped_tasks())
    for task in runnable_tasks():
        none = [m for m in selected_models() if not eval_modes(m, task)]
        if none:
            skips[task] = (
                f"no embedding mode of {', '.join(none)} is in tasks.{task}.modes "
                f"{TASKS[task].get('modes', ['1st-gen'])}"
            )
    return skips


rule evaluate_task:
    input:
        cache=R + "/cache/{model}-{recipe}/{task}/meta.json",
        data=task_data,
    output:
        scores=R + "/scores/{model}-{recipe}/{task}.csv",
        details=directory(R + "/scores/{model}-{recipe}/{task}"),
    log:
        R + "/logs/evaluate/{model}-{recipe}/{task}.log",
    benchmark:
        R + "/benchmarks/evaluate/{model}-{recipe}/{task}.tsv"
    params:
        settings=evaluate_params,
        data_dir="data",
    threads: 1
    conda:
        "../../envs/torch.yaml"
    script:
        "../scripts/evaluate_task.py"


rule collect_scores:
    input:
        evaluated_score_files(),
    output:
        scores=R + "/scores.csv",
        skipped=R + "/skipped.csv",
    log:
        R + "/logs/evaluate/collect_scores.log",
    params:
        skipped=evaluation_skips(),
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/collect_scores.py"
