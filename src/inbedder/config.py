"""Load, validate and check the workflow config outside Snakemake (tests, CLI) and at start-up."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from inbedder.model_kinds import kind_of
from inbedder.sources import Origin, SourceError, resolve_origin
from inbedder.vocabulary import MODEL_KINDS, UNTRAINED_RECIPES

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config value is wrong; the message names the key."""


def merge(base: dict, override: dict) -> dict:
    """Merge like Snakemake: dictionaries key by key, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(*paths: str | os.PathLike, overrides: dict | None = None) -> dict[str, Any]:
    """Read config files in order (later ones win), apply overrides, validate; defaults filled in."""
    # Snakemake's own validation, as the Snakefile calls it: the same defaults in and outside Snakemake
    from snakemake.utils import validate

    config: dict[str, Any] = {}
    for path in paths or (ROOT / "config.yaml",):
        with open(path, encoding="utf-8") as fh:
            config = merge(config, yaml.safe_load(fh) or {})
    if overrides:
        config = merge(config, overrides)
    validate(config, schema=str(SCHEMA))
    return config


@functools.cache
def schema() -> dict[str, Any]:
    """The config schema, read once."""
    with open(SCHEMA, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def check_block(values: Mapping[str, Any], pointer: str, where: str) -> dict[str, Any]:
    """A block met outside a whole config, checked against the schema at `pointer`, its defaults filled in."""
    from jsonschema.exceptions import best_match

    block = copy.deepcopy(dict(values))
    error = best_match(_block_validator(pointer).iter_errors(block))
    if error is not None:
        key = "".join(f".{k}" for k in error.absolute_path)
        raise ValueError(f"{where}{key}: {error.message}")
    return block


@functools.cache
def _block_validator(pointer: str) -> Any:
    """A validator of the schema's part at `pointer` that fills in defaults as Snakemake's `validate` does."""
    from jsonschema import Draft202012Validator, validators
    from referencing import Registry, Resource

    def fill_defaults(validator, properties, instance, part):
        if validator.is_type(instance, "object"):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, part)

    uri = SCHEMA.as_uri()
    registry = Registry().with_resource(uri, Resource.from_contents(schema()))
    filling = validators.extend(Draft202012Validator, {"properties": fill_defaults})
    return filling({"$ref": f"{uri}#{pointer}"}, registry=registry)


def check_runtime(config: dict) -> None:
    """Check cross-references the schema cannot express, the device, and the offline switch."""
    select = config["select"]
    for group, registry in (("models", "models"), ("tasks", "tasks")):
        for name in select[group]:
            if name not in config[registry]:
                raise ConfigError(
                    f"select.{group}: {name!r} is not a key of {registry} (known: {sorted(config[registry])})"
                )
    for name in select["recipes"]:
        if name not in config["recipes"] and name not in UNTRAINED_RECIPES:
            raise ConfigError(
                f"select.recipes: {name!r} is not a key of recipes, 'none' or 'released' "
                f"(known: {sorted(config['recipes'])})"
            )
    for name, spec in config["models"].items():
        if spec["kind"] not in MODEL_KINDS:
            raise ConfigError(f"models.{name}.kind: {spec['kind']!r} is not one of {MODEL_KINDS}")
    re_encoder = config.get("re_encoder")
    if re_encoder is not None:
        if re_encoder not in config["models"]:
            raise ConfigError(f"re_encoder: {re_encoder!r} is not a key of models")
        if not kind_of(config["models"][re_encoder]["kind"]).encodes_sentences:
            raise ConfigError(f"re_encoder: {re_encoder!r} is not a sentence-encoder")
    if config["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("device: 'cuda' was asked for but no CUDA GPU is visible (use device: auto or cpu)")
    if config["offline"]:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
            os.environ[var] = "1"
    data_origin(config)


def data_origin(config: dict) -> Origin:
    """Where this run's data files come from (config `data_mirror`, `offline`, $INBEDDER_DATA_MIRROR).

    Raises before any job runs when the named mirror is missing, or when `offline: true` finds none.
    """
    try:
        return resolve_origin(config["data_mirror"], config["offline"])
    except SourceError as err:
        raise ConfigError(str(err)) from None


def resolve_device(wanted: str) -> str:
    """The torch device for config `device` (auto: CUDA when a GPU is visible, else the CPU)."""
    if wanted == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def resolve_dtype(wanted: str, device: str) -> str:
    """The compute dtype name for config `dtype` on a device (auto: bfloat16 on CUDA, else float32)."""
    if wanted == "auto":
        return "bfloat16" if device == "cuda" else "float32"
    return wanted
