"""A run's method beside the authors': the rows of the report's method-fidelity section, one per switch as
the run's config sets it (`inbedder.fidelity.SWITCHES`), and the notes a table row carries for the switches
that differ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inbedder.config import check_block
from inbedder.fidelity import (
    AUTHORS_COMMIT,
    AUTHORS_EPOCHS,
    AUTHORS_RE_ENCODERS,
    AUTHORS_REPO,
    METHOD_PREFIX,
    SWITCHES,
    Citation,
    Switch,
    method_settings,
)
from inbedder.fidelity_setting import (
    SETTING_SWITCHES,
    SETTING_TRAIN_SWITCHES,
    selected_models,
    setting_rows,
    setting_summary,
)
from inbedder.model_kinds import SAMPLING_KINDS
from inbedder.train_settings import RECIPE_SCHEMA
from inbedder.vocabulary import GENERATIVE_KINDS, RELEASED, UNTRAINED_RECIPES

__all__ = ["MethodRow", "method_notes", "method_rows", "same_re_encoder", "setting_summary"]

AUTHORS_BLOB = f"https://github.com/{AUTHORS_REPO}/blob/{AUTHORS_COMMIT}"
_SAMPLED = "sampled (temperature 0.6, top_p 0.9)"
_DTYPES = ("float32", "bfloat16")
_GENERATING = SAMPLING_KINDS  # kinds that decode an answer (a masked LM fills its masks in one pass)
# Switches of the fine-tuning: they cannot move a row of an untuned model or of the authors' checkpoint.
_TRAINING_SWITCHES = ("method.train_answer_cut", "method.train_target", "recipes.<recipe>.epochs",
                      "recipes.<recipe>.dataset", *SETTING_TRAIN_SWITCHES)
# Switches of the model's own weights: they cannot move a row of the authors' checkpoint.
_WEIGHT_SWITCHES = ("models.<model>.variant", "models.<model>.source")


def citation_url(c: Citation) -> str:
    """The cited lines on GitHub, at the authors' commit."""
    return f"{AUTHORS_BLOB}/{c.path}#L{c.first}-L{c.last}"


@dataclass(frozen=True)
class MethodRow:
    """One switch as a run sets it: the concrete key, this run's value, the authors', and whether they agree.

    `agrees` is None where the config alone cannot tell (dtype `auto` with device `auto`: it depends on the
    machine). `model` / `recipe` name the only model or recipe the row concerns (per-model and per-recipe
    keys).
    """

    key: str
    switch: str
    value: str
    authors: str
    agrees: bool | None
    description: str
    citations: tuple[tuple[str, str], ...]  # (path:lines, URL at the authors' commit)
    moves: tuple[str, ...]
    model: str | None = None
    recipe: str | None = None

    @property
    def marker(self) -> str:
        """A marker for the page: ✓ agrees, ✗ differs, ? depends on the machine."""
        return {True: "\u2713", False: "\u2717", None: "?"}[self.agrees]

    @property
    def verdict(self) -> str:
        """agrees / differs / depends on the device, in words."""
        return {True: "agrees", False: "differs", None: "depends on the device"}[self.agrees]


def _row(
    s: Switch,
    key: str,
    value: str,
    authors: str,
    agrees: bool | None,
    *,
    model: str | None = None,
    recipe: str | None = None,
) -> MethodRow:
    return MethodRow(
        key=key,
        switch=s.key,
        value=value,
        authors=authors,
        agrees=agrees,
        description=s.description,
        citations=tuple((str(c), citation_url(c)) for c in s.follows),
        moves=s.moves,
        model=model,
        recipe=recipe,
    )


def _is_llama(name: str, spec: dict[str, Any]) -> bool:
    """Whether a registry model is a Llama-2 model (the authors sampled those in bfloat16)."""
    hub = str(((spec.get("source") or {}) if isinstance(spec.get("source"), dict) else {}).get("hub") or "")
    return "llama" in name.lower() or "llama" in hub.lower()


def same_re_encoder(paper: str, ours: str | None, models: dict[str, Any] | None = None) -> bool:
    """Whether this run's re-encoder (a registry name) is the one an authors' run used (`komninos`,
    `e5-large-v2`): the same name, or a registry entry whose hub source is that model."""
    if paper not in AUTHORS_RE_ENCODERS:
        raise ValueError(f"re_encoder {paper!r} of a paper row is not one of {sorted(AUTHORS_RE_ENCODERS)}")
    if not ours:
        return False
    if ours == paper:
        return True
    source = ((models or {}).get(ours) or {}).get("source") or {}
    return isinstance(source, dict) and source.get("hub") == AUTHORS_RE_ENCODERS[paper]


def _decoding_rows(s: Switch, config: dict[str, Any]) -> list[MethodRow]:
    rows = []
    for name, spec in selected_models(config, GENERATIVE_KINDS):
        key = f"models.{name}.decoding"
        value = spec["decoding"]
        if isinstance(value, dict):  # the config's sampling settings: {temperature, top_p, seed}
            sampled = (float(value["temperature"]), float(value["top_p"]))
            value = f"sampled (temperature {sampled[0]:g}, top_p {sampled[1]:g}, seed {value['seed']})"
            matches_theirs = sampled == (0.6, 0.9)
        elif value not in s.values:
            raise ValueError(
                f"{key}: {value!r} is not one of {', '.join(map(repr, s.values))} "
                f"or {{temperature, top_p, seed}}"
            )
        else:
            matches_theirs = None
        if spec.get("kind") not in _GENERATING:  # a masked LM decodes nothing: the setting cannot differ
            rows.append(_row(s, key, value, "none (the masks are filled in one pass)", True, model=name))
            continue
        theirs = _SAMPLED if _is_llama(name, spec) else "greedy"
        if matches_theirs is None:
            agrees = value == s.authors or value == theirs
        else:
            agrees = matches_theirs and theirs == _SAMPLED
        rows.append(
            _row(
                s,
                key,
                value,
                f"{theirs} ({'Llama-2' if theirs == _SAMPLED else 'OPT, T5'} runs)",
                agrees,
                model=name,
            )
        )
    return rows


def _dtype_rows(s: Switch, config: dict[str, Any]) -> list[MethodRow]:
    rows = []
    run_dtype, device = config["dtype"], config["device"]
    for name, spec in selected_models(config, GENERATIVE_KINDS):
        key = f"models.{name}.dtype"
        value = spec.get("dtype", run_dtype)
        if value not in (*s.values, *_DTYPES):
            raise ValueError(f"{key}: {value!r} is not one of {', '.join(map(repr, (*s.values, *_DTYPES)))}")
        theirs = "bfloat16" if _is_llama(name, spec) else "float32"
        resolved = {"cpu": "float32", "cuda": "bfloat16"}.get(device) if value == "auto" else value
        shown = (
            value
            if value != "auto"
            else (f"auto ({resolved} on {device})" if resolved else "auto (bfloat16 on CUDA, float32 on CPU)")
        )
        agrees: bool | None
        if value == s.authors:
            agrees = True
        elif resolved is None:
            agrees = None
        else:
            agrees = resolved == theirs
        rows.append(
            _row(
                s,
                key,
                shown,
                f"{theirs} ({'Llama-2' if theirs == 'bfloat16' else 'OPT, RoBERTa, T5'} runs)",
                agrees,
                model=name,
            )
        )
    return rows


def _epoch_rows(s: Switch, config: dict[str, Any]) -> list[MethodRow]:
    """Per selected trained recipe: the budget each selected language model trains it with (its `max_steps`
    when set, else the recipe's `epochs`, else the model's `train.epochs`), beside the authors' epochs."""
    rows = []
    recipes = config["recipes"]
    trained = selected_models(config, GENERATIVE_KINDS)
    for recipe in config["select"]["recipes"]:
        if recipe in UNTRAINED_RECIPES:
            continue
        key = f"recipes.{recipe}.epochs"
        if recipe not in recipes:
            raise ValueError(f"select.recipes: {recipe!r} is not in the recipes registry")
        recipe_epochs = check_block(recipes[recipe], RECIPE_SCHEMA, f"recipes.{recipe}").get("epochs")
        theirs = AUTHORS_EPOCHS.get(recipe)
        budgets: dict[str, list[str]] = {}
        agree_all = True
        for name, mspec in trained:
            train = mspec.get("train") or {}
            steps = train.get("max_steps")
            epochs = float(recipe_epochs if recipe_epochs is not None else train["epochs"])
            text = f"{steps} steps" if steps else f"{epochs:g} epoch{'s' if epochs != 1 else ''}"
            budgets.setdefault(text, []).append(name)
            agree_all &= not steps and theirs is not None and epochs == theirs
        value = "; ".join(f"{b} ({', '.join(ms)})" for b, ms in budgets.items()) or "no model trained"
        if recipe_epochs is not None:
            value = f"{value} [recipe: {recipe_epochs:g}]"
        authors = str(theirs) if theirs is not None else "— (no such recipe in the paper)"
        rows.append(
            _row(s, key, value, authors, None if theirs is None or not trained else agree_all, recipe=recipe)
        )
    return rows


def method_rows(config: dict[str, Any]) -> list[MethodRow]:
    """Every switch of SWITCHES as this config sets it, beside the authors' value, in the registry's order.

    `method.*` keys come from `method_settings`; `models.<model>.decoding` and `models.<model>.dtype` (every
    selected language model; a masked LM decodes nothing) from each selected model's entry, the run's `dtype`
    where it has none; `recipes.<recipe>.epochs` from each selected trained recipe, else the
    budget of each selected language model's `train` block; `re_encoder` from the config's `re_encoder`.
    """
    settings = method_settings(config)
    rows: list[MethodRow] = []
    for s in SWITCHES:
        if not s.configurable:  # a deviation every run makes: no key selects it
            rows.append(
                _row(s, s.key, f"{s.ours} (every run; no config key selects it)", str(s.authors), False)
            )
        elif s.key.startswith(METHOD_PREFIX):
            value = settings[s.key[len(METHOD_PREFIX) :]]
            rows.append(_row(s, s.key, str(value), str(s.authors), value == s.authors))
        elif s.key == "re_encoder":
            ours = config.get("re_encoder")
            rows.append(
                _row(
                    s,
                    s.key,
                    str(ours or "none"),
                    str(s.authors),
                    same_re_encoder(str(s.authors), ours, config["models"]),
                )
            )
        elif s.key == "models.<model>.decoding":
            rows += _decoding_rows(s, config)
        elif s.key == "models.<model>.dtype":
            rows += _dtype_rows(s, config)
        elif s.key == "recipes.<recipe>.epochs":
            rows += _epoch_rows(s, config)
        elif s.key in SETTING_SWITCHES:
            rows += [_row(s, *r[:4], model=r[4], recipe=r[5]) for r in setting_rows(s, config)]
        else:
            raise ValueError(f"switch {s.key!r}: method_rows does not know where a config sets it")
    return rows


def method_notes(
    rows: list[MethodRow], tables: str | tuple[str, ...], model: str | None = None, recipe: str | None = None
) -> list[str]:
    """The keys of `rows` that differ from the authors' and can move one of `tables`, for a row of the given
    model and recipe (None: any). `re_encoder` is left out: a re-encode number is compared only with a paper
    row of the same re-encoder (the report says so where they differ)."""
    tables = (tables,) if isinstance(tables, str) else tuple(tables)
    out = []
    for r in rows:
        if r.agrees is not False or r.switch == "re_encoder" or not set(r.moves) & set(tables):
            continue
        if model is not None and r.model is not None and r.model != model:
            continue
        if recipe is not None and r.recipe is not None and r.recipe != recipe:
            continue
        if recipe in UNTRAINED_RECIPES and r.switch in _TRAINING_SWITCHES:
            continue
        if recipe == RELEASED and r.switch in _WEIGHT_SWITCHES:
            continue
        out.append(r.key)
    return list(dict.fromkeys(out))
