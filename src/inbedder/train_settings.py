"""What one fine-tune is: its hyper-parameters (config `models.<m>.train`) and its job (model, recipe, how).

Bounds and defaults are the config schema's (`$defs/train`, `recipes`): blocks that reach this module
outside a whole config are checked against it here (`inbedder.config.check_block`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from inbedder.config import check_block, resolve_device, resolve_dtype
from inbedder.heldout import METRICS, StopWhenFlat, check_heldout_keys
from inbedder.train_data import check_train_method
from inbedder.vocabulary import UNTRAINED_RECIPES

# keys of a model's train block that say which runs there are, not how one trains (inbedder.rule_params)
RUN_KEYS = ("seeds", "steps_of", "lr_sweep", "lr_sweep_steps", "lr_rule")
TRAIN_SCHEMA = "/$defs/train"
RECIPE_SCHEMA = "/properties/recipes/additionalProperties"


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one fine-tune (config `models.<name>.train`); optional keys None when unset."""

    learning_rate: float
    epochs: float
    max_steps: int | None
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    batch_size: int
    grad_accum: int
    max_length: int
    save_steps: int
    seed: int
    heldout_rows: int | None = None  # None = config limits.heldout_rows
    heldout_max_new_tokens: int | None = None  # None = the model's max_new_tokens
    heldout_every: int | None = None  # None = held-out F1 before and after training only
    stop_when_flat: StopWhenFlat | None = None  # None = train to max_steps / epochs

    def __post_init__(self) -> None:
        # a mapping (from a config, or an asdict round trip) becomes a StopWhenFlat
        object.__setattr__(
            self, "stop_when_flat", check_heldout_keys(self.heldout_every, self.stop_when_flat, "train")
        )

    @classmethod
    def from_config(cls, values: Mapping[str, Any], where: str = "train") -> TrainSettings:
        """Build from a config train block checked against the schema; errors name the key under `where`."""
        block = check_block(values, TRAIN_SCHEMA, where)
        check_heldout_keys(block.get("heldout_every"), block.get("stop_when_flat"), where)
        return cls(**{k: v for k, v in block.items() if k not in RUN_KEYS})


@dataclass(frozen=True)
class TrainJob:
    """Everything one training run needs besides the data: which model, recipe, and how.

    `train_target` and `train_answer_cut` are the config's `method` switches (see `inbedder.train_data`);
    `recipe_epochs` is the recipe's `epochs`, which replaces `settings.epochs` when `settings.max_steps`
    is null (`effective_settings`).
    """

    model: str
    recipe: str
    kind: str
    template: str
    dataset: str
    settings: TrainSettings
    device: str
    dtype: str
    max_new_tokens: int
    heldout_rows: int | None  # None: every row of the file
    train_rows: int | None
    train_target: str
    train_answer_cut: str
    recipe_epochs: float | None = None
    # config `train.steps_of`: this run ends at the step another recipe's run ended at
    steps_of: str | None = None  # that run's folder name (`<model>-<recipe>[@<seed>]`), beside this run's
    stop_at_step: int | None = None  # read from its train_summary.json when training starts
    # config `recipes.<name>.heldout_metric`: the held-out metric of the plateau rule and the model kept
    heldout_metric: str = "token_f1"

    def __post_init__(self) -> None:
        check_train_method(self.train_target, self.train_answer_cut)
        if self.heldout_metric not in METRICS:
            raise ValueError(f"{self.model}-{self.recipe}: heldout_metric {self.heldout_metric!r}, "
                             f"not one of {', '.join(METRICS)}")
        if self.stop_at_step is not None and (
            not isinstance(self.stop_at_step, int) or self.stop_at_step < 1
        ):
            raise ValueError(
                f"{self.model}-{self.recipe}: stop_at_step must be an integer >= 1, got {self.stop_at_step!r}"
            )

    def effective_settings(self) -> TrainSettings:
        """The settings trained with: the recipe's epochs replace the model's when no step budget is
        set; `stop_when_flat` is dropped for a recipe it does not list."""
        settings = self.settings
        if settings.stop_when_flat is not None and not settings.stop_when_flat.applies_to(self.recipe):
            settings = replace(settings, stop_when_flat=None)
        if self.recipe_epochs is None or settings.max_steps is not None:
            return settings
        return replace(settings, epochs=float(self.recipe_epochs))

    def run_key_settings(self) -> dict[str, Any]:
        """The settings in the run key of the checkpoints: those that change the weights.

        `heldout_every` only adds checks (they leave the training untouched), so it is left out, and
        checkpoints stay valid when it changes, unless `stop_when_flat` applies: then it decides where
        training stops, as does the rule itself (its `recipes` list aside). Left out when null, the two
        keys keep the run key of checkpoints made before they existed.
        """
        settings = asdict(self.settings)
        settings.pop("heldout_every")
        settings.pop("stop_when_flat")
        stop = self.effective_settings().stop_when_flat
        if stop is not None:
            settings["heldout_every"] = self.settings.heldout_every
            settings["stop_when_flat"] = {"patience": stop.patience, "min_delta": stop.min_delta}
            if self.heldout_metric != "token_f1":  # the metric of the rule (left out as it was before it)
                settings["heldout_metric"] = self.heldout_metric
        if self.stop_at_step is not None:
            settings["stop_at_step"] = self.stop_at_step
        return settings

    def following(self, leader_summary: str | os.PathLike) -> TrainJob:
        """This job ending at the step the run of `leader_summary` (its train_summary.json) ended at
        (config `train.steps_of`): the same step budget and schedule, cut at that step."""
        path = Path(leader_summary)
        summary = json.loads(path.read_text(encoding="utf-8"))
        steps = summary.get("steps")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(
                f"{path}: no positive 'steps' (the run {self.model}-{self.recipe} is to end at its step)"
            )
        return replace(self, steps_of=path.parent.name, stop_at_step=steps)


def check_recipe(model: str, recipe: str, recipes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The registry entry of a trainable recipe, checked against the schema, or an error naming the recipe."""
    if recipe in UNTRAINED_RECIPES:
        raise ValueError(f"recipe {recipe!r} is never trained (model {model!r}): it uses a model as it is")
    if recipe not in recipes:
        raise KeyError(
            f"recipe {recipe!r} (model {model!r}) is not a key of recipes; known: {sorted(recipes)}"
        )
    return check_block(recipes[recipe], RECIPE_SCHEMA, f"recipes.{recipe}")


def on_this_machine(params: Mapping[str, Any]) -> dict[str, Any]:
    """A training rule's params with `device` and `dtype` resolved here (auto -> cuda or cpu, bf16 or fp32)."""
    device = resolve_device(params["device"])
    return {**params, "device": device, "dtype": resolve_dtype(params["dtype"], device)}


def job_from_params(params: Mapping[str, Any]) -> TrainJob:
    """Build a TrainJob from the `params` of the train_model rule (`inbedder.rule_params.train_params`)."""
    return TrainJob(
        model=params["model"],
        recipe=params["recipe"],
        kind=params["kind"],
        template=params["template"],
        dataset=params["dataset"],
        settings=TrainSettings.from_config(params["train"], where=f"models.{params['model']}.train"),
        device=params["device"],
        dtype=params["dtype"],
        max_new_tokens=int(params["max_new_tokens"]),
        heldout_rows=params["heldout_rows"],
        train_rows=None,  # the training table is sliced by its own rule (limits.train_rows)
        train_target=params["train_target"],
        train_answer_cut=params["train_answer_cut"],
        recipe_epochs=params["recipe_epochs"],
        steps_of=params.get("steps_of"),
        # in the params only where checks during training make it choose (`rule_params.train_params`)
        **({"heldout_metric": params["heldout_metric"]} if "heldout_metric" in params else {}),
    )

