"""The params of every rule that runs a stage: exactly the config settings that change its output.

Snakemake reruns a job when its params change, so each function here returns what decides that
job's files and nothing else (input files are inputs, not params). The rule files call these and
nothing else reads the config on their behalf.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inbedder.controls import gold_spec
from inbedder.fidelity import method_settings
from inbedder.model_kinds import kind_of
from inbedder.models import RELEASED_SUFFIX, check_kind
from inbedder.task_kinds import kind_class, modes_for
from inbedder.train_loop import TRAIN_LOOP
from inbedder.train_settings import RUN_KEYS, check_recipe
from inbedder.train_sweep import sweep_settings
from inbedder.vocabulary import TRAIN_SEED_SEP, UNTRAINED_RECIPES, split_recipe


def train_seeds(model: str, spec: Mapping[str, Any]) -> list[int]:
    """The training seeds of a model: `train.seeds` when set, else [`train.seed`]."""
    train = spec.get("train") or {}
    seeds = train.get("seeds")
    if seeds is None:
        if "seed" not in train:
            raise ValueError(f"models.{model}.train.seed: missing (a fine-tuned model's train block sets it)")
        return [int(train["seed"])]
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"models.{model}.train.seeds: a non-empty list of distinct integers, got {seeds!r}")
    return [int(s) for s in seeds]


def recipe_runs(model: str, recipe: str, config: Mapping[str, Any]) -> list[str]:
    """The runs of one (model, recipe): the recipe itself, and `<recipe>@<seed>` for each further training seed."""
    if recipe in UNTRAINED_RECIPES:
        return [recipe]
    seeds = train_seeds(model, config["models"][model])
    return [recipe] + [f"{recipe}{TRAIN_SEED_SEP}{s}" for s in seeds[1:]]


def resolve_run(model: str, name: str, config: Mapping[str, Any]) -> tuple[str, int | None]:
    """A run's name (`inbedder`, `inbedder@1`, `none`) -> (recipe, training seed); None for untrained models."""
    recipe, seed = split_recipe(name)
    if recipe in UNTRAINED_RECIPES:
        if seed is not None:
            raise ValueError(f"{model}-{name}: recipe {recipe!r} is not trained, so it has no training seed")
        return recipe, None
    seeds = train_seeds(model, config["models"][model])
    if seed is None:
        return recipe, seeds[0]
    if seed not in seeds[1:]:
        raise ValueError(f"{model}-{name}: training seed {seed} is not one of models.{model}.train.seeds after "
                         f"the first ({seeds[1:]}; the first seed's run is the plain {recipe!r})")
    return recipe, seed


def run_name(model: str, recipe: str, train_seed: int | None, config: Mapping[str, Any]) -> str:
    """The inverse of resolve_run: (recipe, training seed) -> the run's name."""
    if recipe in UNTRAINED_RECIPES or train_seed is None:
        return recipe
    first = train_seeds(model, config["models"][model])[0]
    return recipe if int(train_seed) == first else f"{recipe}{TRAIN_SEED_SEP}{int(train_seed)}"


def materialize_params(name: str, models: Mapping[str, Mapping[str, Any]], released: bool = False) -> dict:
    """Params of the materialize rules: exactly what decides the folder (name, kind, source)."""
    if name not in models:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(models))}")
    spec = models[name]
    key = "released" if released else "source"
    if not spec.get(key):
        raise ValueError(
            f"models.{name} has no `{key}` (needed for data/models/{name}{RELEASED_SUFFIX if released else ''})"
        )
    return {"name": name, "kind": check_kind(name, spec), "source": dict(spec[key])}


def task_spec(task: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The task's entry in `tasks` without `rows` (which only sizes its table: task_row_limit) and `report`
    (which only places it in the report)."""
    if task not in config["tasks"]:
        raise KeyError(f"task {task!r} is not a key of tasks; known: {sorted(config['tasks'])}")
    return {k: v for k, v in config["tasks"][task].items() if k not in ("rows", "report")}


def task_row_limit(task: str, config: Mapping[str, Any]) -> int | None:
    """How many rows of the task's table are kept: the smaller of `limits.task_rows` and the task's own
    `rows`, None for all of them."""
    limits = [n for n in (config["limits"]["task_rows"], config["tasks"][task].get("rows")) if n is not None]
    return min(limits) if limits else None


def task_table_params(task: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Params of the task_table rule: exactly what changes a task's rows (the data files are inputs)."""
    return {"spec": task_spec(task, config), "limit": task_row_limit(task, config)}


def train_params(model: str, run: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Params of the train_model rule: exactly the settings that change a fine-tune.

    `run` is the recipe, or `<recipe>@<seed>` for a further training seed (`train.seeds`); the train
    block goes with `seed` set to the run's training seed and `seeds` left out, so the first seed's
    params do not change when seeds are added. The model's train block, its kind, the recipe's template, dataset and epochs, the held-out check
    (rows, answer length), the configured device/dtype (resolved at run time), the training
    loop's choices (`TRAIN_LOOP`: batching, where the LM head runs) and the two `method` switches
    of training (`train_target`, `train_answer_cut`; not the others, which do not change a fine-tune).
    """
    models, recipes = config["models"], config["recipes"]
    if model not in models:
        raise KeyError(f"model {model!r} is not a key of models; known: {sorted(models)}")
    spec = models[model]
    recipe, seed = resolve_run(model, run, config)
    recipe_spec = check_recipe(model, recipe, recipes)
    train = {k: v for k, v in (spec.get("train") or {}).items() if k not in RUN_KEYS}
    unknown = [r for r in (train.get("stop_when_flat") or {}).get("recipes") or [] if r not in recipes]
    if unknown:
        raise ValueError(f"models.{model}.train.stop_when_flat.recipes: unknown recipe(s) {unknown}; "
                         f"known: {sorted(recipes)}")
    if seed != train["seed"]:
        train["seed"] = seed
    method = method_settings(config)
    leader = train_leader(model, run, config)
    return {
        "model": model,
        "recipe": recipe,
        "kind": check_kind(model, spec),
        "template": recipe_spec["template"],
        "dataset": recipe_spec["dataset"],
        "train": train,
        "max_new_tokens": int(train.get("heldout_max_new_tokens") or spec["max_new_tokens"]),
        "heldout_rows": train.get("heldout_rows") or config["limits"]["heldout_rows"],
        "device": config["device"],
        "dtype": config["dtype"],
        "loop": TRAIN_LOOP,
        "train_target": method["train_target"],
        "train_answer_cut": method["train_answer_cut"],
        "recipe_epochs": recipe_spec.get("epochs"),
        # only where train.steps_of names this recipe, so that adding the key changes no other run's params
        **({"steps_of": f"{model}-{leader}"} if leader else {}),
        # the recipe's held-out metric picks the model kept among checks during training: only where they run
        **({"heldout_metric": recipe_spec["heldout_metric"]} if train.get("heldout_every") is not None else {}),
    }


def lr_sweep_params(model: str, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """Params of the lr_sweep rule ({rates, steps, rule} of `models.<m>.train.lr_sweep`), None: no sweep."""
    sweep = sweep_settings(config["models"][model].get("train"))
    return None if sweep is None else dict(zip(("rates", "steps", "rule"), sweep, strict=True))


def train_leader(model: str, run: str, config: Mapping[str, Any]) -> str | None:
    """The run whose final step this run ends at (config `models.<m>.train.steps_of`, same model and
    training seed), or None. Errors name the key."""
    steps_of = ((config["models"][model].get("train") or {}).get("steps_of")) or {}
    where = f"models.{model}.train.steps_of"
    if not isinstance(steps_of, Mapping):
        raise ValueError(  # noqa: TRY004 - a config error, as for every other key
            f"{where}: a mapping {{recipe: the recipe whose final step it ends at}}, got {steps_of!r}")
    recipes = config["recipes"]
    for follower, leader in steps_of.items():
        for name in (follower, leader):
            if name not in recipes or name in UNTRAINED_RECIPES:
                raise ValueError(f"{where}: {name!r} is not a trained recipe; known: "
                                 f"{sorted(r for r in recipes if r not in UNTRAINED_RECIPES)}")
        if leader == follower or leader in steps_of:
            raise ValueError(f"{where}.{follower}: {leader!r} must be another recipe that follows none itself")
        stop = (config["models"][model].get("train") or {}).get("stop_when_flat") or {}
        if stop and (stop.get("recipes") is None or follower in stop.get("recipes")):
            raise ValueError(f"{where}.{follower}: the recipe also stops by itself (stop_when_flat applies to it; "
                             "list the leader alone in stop_when_flat.recipes)")
    recipe, seed = resolve_run(model, run, config)
    if recipe not in steps_of:
        return None
    return run_name(model, steps_of[recipe], seed, config)


def encode_params(model: str, run: str, task: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Params of the encode rule: exactly the settings that change a cache (model folders are inputs).

    Template: the recipe's (`recipes.<r>.template`), "inbedder" for `none` and `released`; answer
    length `models.<m>.max_new_tokens` and `models.<m>.decoding`; `layers`,
    `encode_batch_size`, `device`, `dtype` (`models.<m>.dtype` first); re-encode-multi when the
    model's scored modes include it; the `method` switches and the instructions the authors' filter
    drops. The prompts come in as the task table.
    """
    models, recipes, tasks = config["models"], config["recipes"], config["tasks"]
    if model not in models:
        raise KeyError(f"model {model!r} is not a key of models; known: {sorted(models)}")
    if task not in tasks:
        raise KeyError(f"task {task!r} is not a key of tasks; known: {sorted(tasks)}")
    recipe = split_recipe(run)[0]
    if recipe not in recipes and recipe not in UNTRAINED_RECIPES:
        raise KeyError(f"recipe {recipe!r} is not a key of recipes, 'none' or 'released'")
    spec = models[model]
    generative = kind_of(spec["kind"]).generative
    modes = modes_for(tasks[task], spec.get("modes", []))
    return {
        "kind": spec["kind"],
        "template": recipes[recipe]["template"] if recipe in recipes else "inbedder",
        "max_new_tokens": int(spec["max_new_tokens"]) if generative else 0,
        "layers": [int(x) for x in config["layers"]] if generative else [-1],
        "batch_size": int(config["encode_batch_size"]),
        "device": config["device"],
        "dtype": spec.get("dtype") or config["dtype"],
        "decoding": spec["decoding"] if kind_of(spec["kind"]).samples else "greedy",
        "re_encode_multi": generative and "re-encode-multi" in modes,
        "method": method_settings(config) if generative else None,
        "filter_instructions": filter_instructions(tasks[task]) if generative else [],
        "keep_last_words": keep_last_words(spec, recipe, task, tasks[task]) if generative else None,
        **({"gold": gold} if (gold := gold_spec(model, task, config)) else {}),  # only with the positive control
    }


def keep_last_words(spec: Mapping[str, Any], recipe: str, task: str, task_spec: Mapping[str, Any]) -> int | None:
    """`models.<m>.keep_last_words[<recipe>]` on a clustering task (the authors' `truncate_to_length`,
    applied by their clustering task class alone), else None."""
    words = (spec.get("keep_last_words") or {}).get(recipe)
    if words is None:
        return None
    return int(words) if kind_class(task_spec["kind"])(task, task_spec).keeps_last_words() else None


def filter_instructions(spec: Mapping[str, Any]) -> list[str]:
    """The instructions whose tokens the authors' filter drops on a task: every instruction the task
    names in the config, none for pairs tasks (whose instructions come with each pair, as the
    authors' InstructSTSB filter held only the fillers)."""
    if not kind_class(spec["kind"]).instructions_filtered:
        return []
    out: list[str] = []
    for value in (spec.get("instructions") or {}).values():
        out += [value] if isinstance(value, str) else list(value)
    return list(dict.fromkeys(out))


def evaluate_params(model: str, run: str, task: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Params of the evaluate_task rule: exactly the settings that change one job's scores (the run's
    recipe and training seed label its rows)."""
    spec = config["models"][model]
    generative = kind_of(spec["kind"]).generative
    recipe, train_seed = resolve_run(model, run, config)
    return {
        "recipe": recipe,
        "train_seed": train_seed,
        "spec": task_spec(task, config),
        "modes": modes_for(config["tasks"][task], spec.get("modes", [])),
        "layers": list(config["layers"]) if generative else [-1],
        "seeds": list(config["seeds"]),
    }
