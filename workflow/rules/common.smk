# Helpers shared by every stage: names, paths and the grid of jobs.
import os
import re

from inbedder import model_kinds
from inbedder.vocabulary import UNTRAINED_RECIPES
from inbedder.config import check_runtime
from inbedder.rule_params import evaluate_params, recipe_runs
from inbedder.vocabulary import split_recipe
from inbedder.report.inputs import data_manifests, declared_inputs, projection_of
from inbedder.report.suites import suites_of
from inbedder.task_kinds import kind_of, modes_for, unavailable_reason

check_runtime(config)

R = f"results/{config['run']}"
MODELS = config["models"]
TASKS = config["tasks"]
RECIPES = config["recipes"]
suites_of(TASKS)  # the tasks' report records are checked here, before any job runs, not when the report renders



def selected_models():
    """Selected model names, in config order."""
    return list(config["select"]["models"])


def recipes_for(model):
    """Runs of a model: sentence encoders only untuned, language models every selected recipe, a
    fine-tuned recipe once per training seed (`inbedder`, `inbedder@1`, ...: rule_params.recipe_runs)."""
    if not model_kinds.kind_of(MODELS[model]["kind"]).trainable:
        return ["none"]
    recipes = list(config["select"]["recipes"])
    if "released" in recipes and "released" not in MODELS[model]:
        recipes.remove("released")
    return [run for recipe in recipes for run in recipe_runs(model, recipe, config)]


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
        return f"{model_dir(model, recipe)}/fingerprint.json"
    return f"{model_dir(model, recipe)}/train_summary.json"


def trained_pairs():
    """(model, recipe) pairs that are fine-tuned in this run."""
    return [
        (m, r) for m in selected_models() for r in recipes_for(m) if r not in UNTRAINED_RECIPES
    ]


def score_files():
    """Per-(model, recipe, task) score tables of this run (pairs with no mode to score are left out)."""
    return [
        f"{R}/scores/{m}-{r}/{t}.csv"
        for m in selected_models()
        for r in recipes_for(m)
        for t in runnable_tasks()
        if eval_modes(m, t)
    ]


# Evaluation
def eval_modes(model, task):
    """Embedding modes scored: the model's, restricted by the task's `modes` (robustness: 1st-gen)."""
    return modes_for(TASKS[task], MODELS[model].get("modes", []))


def task_data(wildcards):
    """The task's own input file: its prepared table, or the own-data file."""
    return kind_of(wildcards.task, TASKS[wildcards.task]).data_files()


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


def get_final_output():
    """What the default target builds: the score table and the report."""
    return [f"{R}/scores.csv", f"{R}/report/index.html"]


def report_inputs(wildcards):
    """Every file the report reads, named by inbedder.report.declared_inputs from this run's grid."""
    jobs = [
        (m, r, t)
        for m in selected_models()
        for r in recipes_for(m)
        for t in runnable_tasks()
        if eval_modes(m, t)
    ]
    folders = [m if r != "released" else f"{m}-released" for m, r, _ in jobs]
    if any(mode.startswith("re-encode") for m, _, t in jobs for mode in eval_modes(m, t)):
        folders.append(config["re_encoder"])  # the sentence encoder of the re-encode modes
    return declared_inputs(
        R,
        jobs=jobs,
        model_folders=folders,
        manifests=data_manifests(config, runnable_tasks(), [split_recipe(r)[0] for _, r in trained_pairs()]),
        projection=projection_of(config, runnable_tasks()),
        items=True,
    )
