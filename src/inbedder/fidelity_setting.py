"""The setting a run's numbers were made in, read from its config: which model releases, which weights, which
training data and budget, and a one-line summary of them for the report's verdicts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from inbedder.config import check_block
from inbedder.fidelity import AUTHORS_SEQ2SEQ_LR, AUTHORS_TRAIN_DATA, AUTHORS_WARMUP, Switch
from inbedder.model_kinds import kind_of
from inbedder.train_settings import RECIPE_SCHEMA
from inbedder.vocabulary import GENERATIVE_KINDS, UNTRAINED_RECIPES

# Switches of the setting, each row built here from the config; those of the fine-tuning hyper-parameters.
SETTING_TRAIN_SWITCHES = ("models.<model>.train.learning_rate", "models.<model>.train.lr_scheduler",
                          "models.<model>.train.batch_size", "models.<model>.train.max_length")
SETTING_SWITCHES = ("models.<model>.variant", "models.<model>.source", "recipes.<recipe>.dataset",
                    *SETTING_TRAIN_SWITCHES)
# Short names of the training tables, for the page (a table not listed is shown by its name).
DATASET_LABELS = {
    "inbedder_qa": "the authors' QA collection",
    "alpaca": "Alpaca",
    "c3_qa": "C3 QA (offline analog)",
    "alpaca_5k": "Alpaca (5,000-row sample)",
}


def selected_models(config: dict[str, Any], kinds: tuple[str, ...]) -> list[tuple[str, dict[str, Any]]]:
    """The selected models (in selection order) of the given kinds, with their registry entries."""
    registry = config["models"]
    out = []
    for name in config["select"]["models"]:
        if name not in registry:
            raise ValueError(f"select.models: {name!r} is not in the models registry")
        spec = dict(registry[name] or {})
        if spec.get("kind") in kinds:
            out.append((name, spec))
    return out


def trained_recipes(config: dict[str, Any]) -> list[str]:
    """The selected recipes that fine-tune a model (not `none`, not the authors' checkpoint)."""
    recipes = config["recipes"]
    out = []
    for recipe in config["select"]["recipes"]:
        if recipe in UNTRAINED_RECIPES:
            continue
        if recipe not in recipes:
            raise ValueError(f"select.recipes: {recipe!r} is not in the recipes registry")
        out.append(recipe)
    return out


@dataclass(frozen=True)
class Release:
    """A registry model's release: its name, instruction-tuned or base, and its weights' quantisation."""

    name: str
    instruct: bool
    quantisation: str | None  # a GGUF type (Q4_1; empty when not stated), None for full-precision weights
    source: str

    @property
    def gguf(self) -> bool:
        """Whether the weights come from a GGUF file (dequantised on conversion)."""
        return self.quantisation is not None

    @property
    def gguf_type(self) -> str:
        """`Q4_1 GGUF`, or `GGUF` where the type is not stated."""
        return f"{self.quantisation} GGUF".strip()

    @property
    def tuning(self) -> str:
        """instruction-tuned / base, in words."""
        return "instruction-tuned" if self.instruct else "base"

    @property
    def weights(self) -> str:
        """Where the weights come from, in words."""
        if self.gguf:
            return f"{self.gguf_type} ({self.source}), dequantised to float32"
        return f"full-precision weights ({self.source})"


def release(name: str, spec: dict[str, Any]) -> Release:
    """The release a registry entry names (its `variant`; a GGUF source file without a stated type)."""
    variant = spec.get("variant") or {}
    source = spec.get("source") or {}
    where = source.get("hub") or source.get("wheel") or "?"
    where = where.split()[0] + (" + parts" if len(where.split()) > 1 else "")
    quant = variant.get("quantisation")
    if quant is None and str(source.get("file") or "").endswith(".gguf"):
        quant = ""
    return Release(variant.get("name") or name, bool(variant.get("instruct")), quant, where)


def authors_tuning(kind: str) -> str:
    """The authors' base model of a kind, instruction-tuned or base (only their seq2seq flan-t5 is tuned)."""
    # the authors' one encoder-decoder, flan-t5, is their one instruction-tuned base
    return "instruction-tuned (flan-t5)" if kind_of(kind).decoder_target else "base (RoBERTa-large, OPT, Llama-2-7b-hf)"


def effective_batch(train: dict[str, Any]) -> int:
    """Rows per optimizer step: batch size times gradient accumulation."""
    return int(train["batch_size"]) * int(train["grad_accum"])


def recipe_epochs(config: dict[str, Any], recipe: str) -> float | None:
    """The recipe's own epochs (None: the model's `train.epochs`)."""
    return check_block(config["recipes"][recipe], RECIPE_SCHEMA, f"recipes.{recipe}").get("epochs")


def budget(config: dict[str, Any], recipe: str, train: dict[str, Any]) -> str:
    """A model's training budget on a recipe: `N steps` (its step cap) or `N epoch(s)`."""
    steps = train.get("max_steps")
    if steps:
        return f"{steps} steps"
    own = recipe_epochs(config, recipe)
    epochs = float(own if own is not None else train["epochs"])
    return f"{epochs:g} epoch{'s' if epochs != 1 else ''}"


def rows_seen(config: dict[str, Any], train: dict[str, Any]) -> int | None:
    """At most how many training rows a model sees: step cap x batch, within `limits.train_rows` (None: all)."""
    cap = (config.get("limits") or {}).get("train_rows")
    steps = train.get("max_steps")
    seen = int(steps) * effective_batch(train) if steps else None
    if cap is not None:
        seen = min(seen, int(cap)) if seen is not None else int(cap)
    return seen


def dataset_label(dataset: str) -> str:
    """A training table's short name for the page."""
    return DATASET_LABELS.get(dataset, dataset)


def is_authors_data(recipe: str, dataset: str) -> bool:
    """Whether a recipe trains on the table of the authors' data for that recipe."""
    return recipe in AUTHORS_TRAIN_DATA and AUTHORS_TRAIN_DATA[recipe][0] == dataset


def rate(x: float) -> str:
    """A learning rate as the paper writes it: 2e-5, 1e-4."""
    mantissa, exponent = f"{float(x):e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _span(values: list[str]) -> str:
    """Distinct values in order, joined by `/`."""
    return "/".join(dict.fromkeys(values))


def _models_text(models: list[tuple[str, dict[str, Any]]]) -> str:
    """The selected language models as releases, e.g. `SmolLM2-135M-Instruct (instruction-tuned; ...)`."""
    shown = []
    for name, spec in models:
        r = release(name, spec)
        shown.append(f"{r.name} ({r.tuning}{f'; {r.gguf_type} weights, dequantised' if r.gguf else ''})")
    return ", ".join(shown[:-1]) + (" and " if len(shown) > 1 else "") + shown[-1]


def setting_summary(config: dict[str, Any]) -> str:
    """The run's setting in one line: the model releases and weights, the training budget, data and rate."""
    models = selected_models(config, GENERATIVE_KINDS)
    if not models:
        return "sentence encoders only (no language model)"
    text = _models_text(models)
    recipes = trained_recipes(config)
    if not recipes:
        return f"{text}, untuned"
    trains = [spec["train"] for _, spec in models]
    per_recipe = {r: _span([budget(config, r, t) for t in trains]) for r in recipes}
    budgets = (next(iter(per_recipe.values())) if len(set(per_recipe.values())) == 1
               else ", ".join(f"{b} ({r})" for r, b in per_recipe.items()))
    cap = "at most " if any(t.get("stop_when_flat") or t.get("steps_of") for t in trains) else ""
    seen = [rows_seen(config, t) for t in trains]
    rows = f", at most {max(seen):,} rows of each" if all(n is not None for n in seen) else ""
    data = " and ".join(dataset_label(config["recipes"][r]["dataset"]) for r in recipes)
    batch = _span([str(effective_batch(t)) for t in trains])
    rates = _span([rate(t["learning_rate"]) for t in trains])
    return f"{text}, fine-tuned for {cap}{budgets} of batch {batch} on {data}{rows}, lr {rates}"

class SettingRow(NamedTuple):
    """One setting as a run sets it: the concrete key, this run's value, the authors', whether they agree."""

    key: str
    value: str
    authors: str
    agrees: bool | None
    model: str | None = None
    recipe: str | None = None


def _model_rows(s: Switch, config: dict[str, Any]) -> list[SettingRow]:
    """The release and the weights of each selected language model."""
    rows = []
    for name, spec in selected_models(config, GENERATIVE_KINDS):
        r = release(name, spec)
        if s.key.endswith(".variant"):
            theirs = authors_tuning(spec["kind"])
            rows.append(SettingRow(f"models.{name}.variant", f"{r.tuning} ({r.name})", theirs,
                                   theirs.startswith(r.tuning), name))
        else:
            rows.append(SettingRow(f"models.{name}.source", r.weights, "full-precision hub weights",
                                   not r.gguf, name))
    return rows


def _data_rows(config: dict[str, Any]) -> list[SettingRow]:
    """Per trained recipe: its table and at most how many rows each selected language model sees."""
    rows = []
    models = selected_models(config, GENERATIVE_KINDS)
    for recipe in trained_recipes(config):
        dataset = config["recipes"][recipe]["dataset"]
        seen: dict[str, list[str]] = {}
        for name, spec in models:
            n = rows_seen(config, spec["train"])
            seen.setdefault("every row" if n is None else f"at most {n:,} rows", []).append(name)
        used = "; ".join(f"{k} ({', '.join(v)})" for k, v in seen.items()) or "no model trained"
        theirs = AUTHORS_TRAIN_DATA.get(recipe)
        agrees = None if theirs is None else is_authors_data(recipe, dataset) and set(seen) <= {"every row"}
        paper = theirs[1] if theirs else "— (no such recipe in the paper)"
        rows.append(SettingRow(f"recipes.{recipe}.dataset", f"{dataset}, {dataset_label(dataset)}: {used}", paper,
                               agrees, recipe=recipe))
    return rows


def _train_value(s: Switch, train: dict[str, Any], kind: str) -> tuple[str, str, bool]:
    """One hyper-parameter of a model's `train` block: this run's value, the authors', whether they agree."""
    if s.key.endswith("learning_rate"):
        encoder_decoder = kind_of(kind).decoder_target  # the authors trained their T5 runs at another rate
        theirs = AUTHORS_SEQ2SEQ_LR if encoder_decoder else float(s.authors)
        ours = float(train["learning_rate"])
        runs = "T5" if encoder_decoder else "RoBERTa, OPT, Llama-2"
        return rate(ours), f"{rate(theirs)} ({runs} runs)", ours == theirs
    if s.key.endswith("lr_scheduler"):
        warm = float(train["warmup_ratio"])
        same = train["lr_scheduler"] == s.authors and warm == AUTHORS_WARMUP
        theirs = f"{s.authors}, warm-up {AUTHORS_WARMUP:.0%}"
        return f"{train['lr_scheduler']}, warm-up {warm:.0%}", theirs, same
    if s.key.endswith("batch_size"):
        n = effective_batch(train)
        ours = f"{n} ({train['batch_size']} x {train['grad_accum']} accumulated)"
        return ours, str(s.authors), n == s.authors
    return str(train["max_length"]), str(s.authors), int(train["max_length"]) == s.authors


def setting_rows(s: Switch, config: dict[str, Any]) -> list[SettingRow]:
    """The rows of one setting switch: per selected language model, or per trained recipe (the data)."""
    if s.key not in SETTING_SWITCHES:
        raise ValueError(f"switch {s.key!r} is not a setting switch ({', '.join(SETTING_SWITCHES)})")
    if s.key == "recipes.<recipe>.dataset":
        return _data_rows(config)
    if s.key not in SETTING_TRAIN_SWITCHES:
        return _model_rows(s, config)
    if not trained_recipes(config):
        return []
    rows = []
    for name, spec in selected_models(config, GENERATIVE_KINDS):
        value, theirs, agrees = _train_value(s, spec["train"], spec["kind"])
        rows.append(SettingRow(s.key.replace("<model>", name), value, theirs, agrees, name))
    return rows
