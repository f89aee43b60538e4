# Helpers shared by every rule file: names, paths and the grid of jobs.
import os
import re

from inbedder.config import check_runtime, unavailable_reason

check_runtime(config)

R = "results/" + config["run"]
MODELS = config["models"]
TASKS = config["tasks"]
RECIPES = config["recipes"]
# Recipes that do not train: the untouched model and the authors' released checkpoint.
UNTRAINED_RECIPES = ("none", "released")


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)) if MODELS else "[^/]+",
    recipe="[A-Za-z0-9_]+",
    task="[A-Za-z0-9_]+",


def selected_models():
    """Selected model names, in config order."""
    return list(config["select"]["models"])


def model_spec(name):
    """The registry entry of a model."""
    return MODELS[name]


def task_spec(name):
    """The registry entry of a task."""
    return TASKS[name]


def recipes_for(model):
    """Recipes run for a model: sentence encoders only untuned, language models every selected recipe."""
    if MODELS[model]["kind"] == "sentence-encoder":
        return ["none"]
    recipes = list(config["select"]["recipes"])
    if "released" in recipes and "released" not in MODELS[model]:
        recipes.remove("released")
    return recipes


def runnable_tasks():
    """Selected tasks whose data this run can reach."""
    return [t for t in config["select"]["tasks"] if unavailable_reason(t, config) is None]


def skipped_tasks():
    """Selected tasks this run cannot reach, with the reason (recorded, never silently dropped)."""
    out = {}
    for task in config["select"]["tasks"]:
        reason = unavailable_reason(task, config)
        if reason is not None:
            out[task] = reason
    return out


def model_dir(model, recipe):
    """Folder of the model to encode with."""
    if recipe == "none":
        return f"data/models/{model}"
    if recipe == "released":
        return f"data/models/{model}-released"
    return f"{R}/models/{model}-{recipe}"


def model_ready(model, recipe):
    """Completion marker inside model_dir: the file a rule takes as input."""
    if recipe in UNTRAINED_RECIPES:
        return model_dir(model, recipe) + "/fingerprint.json"
    return model_dir(model, recipe) + "/train_summary.json"


def trained_pairs():
    """(model, recipe) pairs that are fine-tuned in this run."""
    return [
        (m, r) for m in selected_models() for r in recipes_for(m) if r not in UNTRAINED_RECIPES
    ]


def score_files():
    """Per-(model, recipe, task) score tables of this run."""
    return [
        f"{R}/scores/{m}-{r}/{t}.csv"
        for m in selected_models()
        for r in recipes_for(m)
        for t in runnable_tasks()
    ]


def get_final_output():
    """Targets of `rule all`: the score table and the report."""
    return [f"{R}/scores.csv", f"{R}/report/index.html"]
