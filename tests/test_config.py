"""Config validation, cross-reference checks and the dry runs of the paper and offline profiles."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import inbedder
from inbedder.config import SCHEMA, ConfigError, check_block, check_runtime, load_config, merge
from inbedder.heldout import StopWhenFlat
from inbedder.task_kinds import unavailable_reason
from inbedder.train_settings import TrainJob, TrainSettings
from inbedder.vocabulary import MODEL_KINDS

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
OFFLINE = ("config.yaml", "workflow/profiles/offline/run.yaml")


def paths(*names: str) -> list[Path]:
    return [ROOT / n for n in names]


def test_merge_dicts_by_key_and_replaces_lists():
    merged = merge({"a": {"x": 1, "y": 2}, "l": [1, 2]}, {"a": {"y": 3}, "l": [9]})
    assert merged == {"a": {"x": 1, "y": 3}, "l": [9]}


def test_paper_profile_is_valid_and_fills_defaults():
    config = load_config(*paths("config.yaml"))
    assert config["select"]["models"] == ["roberta-large", "opt-350m", "e5-large-v2", "instructor-large"]
    assert set(config["select"]["recipes"]) == {"inbedder", "alpaca", "none"}
    assert config["models"]["opt-350m"]["train"]["learning_rate"] == pytest.approx(2e-5)
    assert config["models"]["flan-t5-large"]["train"]["learning_rate"] == pytest.approx(1e-4)
    train = config["models"]["roberta-large"]["train"]
    assert train["batch_size"] * train["grad_accum"] == 64
    check_runtime(config)


def test_offline_profile_selects_packaged_models_and_offline_tasks():
    config = load_config(*paths(*OFFLINE))
    check_runtime(config)
    assert config["offline"] == "hub"  # no Hugging Face hub; data from the mirror or the declared URLs
    assert config["select"]["models"] == ["smollm2-135m", "minilm-l6", "mpnet-base"]
    assert all(unavailable_reason(t, config) is None for t in config["select"]["tasks"])
    # The merge kept the paper's registry and replaced only what the profile names.
    assert config["models"]["smollm2-135m"]["train"]["learning_rate"] == pytest.approx(1e-4)
    assert "roberta-large" in config["models"]


def test_hub_only_task_offline_is_reported_not_dropped():
    config = load_config(*paths(*OFFLINE), overrides={"select": {"tasks": ["IntentEmotion", "SciDocsRR"]}})
    assert "hub-only" in unavailable_reason("IntentEmotion", config)
    assert "hub-only" in unavailable_reason("SciDocsRR", config)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"no_such_key": 1}, "no_such_key"),
        ({"seeds": "zero"}, "seeds"),
        ({"models": {"opt-350m": {"train": {"learning_rate": "fast"}}}}, "learning_rate"),
        ({"models": {"opt-350m": {"kind": "diffusion"}}}, "diffusion"),
        ({"tasks": {"NLUPPTwoViewTriplets": {"colour": "red"}}}, "colour"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(override, named):
    with pytest.raises(Exception) as err:
        load_config(*paths("config.yaml"), overrides=override)
    assert named in str(err.value)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"select": {"models": ["gpt-9"]}}, "gpt-9"),
        ({"select": {"tasks": ["NoSuchTask"]}}, "NoSuchTask"),
        ({"select": {"recipes": ["dpo"]}}, "dpo"),
        ({"re_encoder": "opt-350m"}, "re_encoder"),
    ],
)
def test_cross_references_are_checked(override, named):
    config = load_config(*paths("config.yaml"), overrides=override)
    with pytest.raises(ConfigError, match=named):
        check_runtime(config)


def test_cuda_asked_for_without_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = load_config(*paths("config.yaml"), overrides={"device": "cuda"})
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        check_runtime(config)


def snakemake(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SNAKEMAKE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_paper_profile_dry_run_plans_the_paper_grid():
    result = snakemake(
        "-n", "--cores", "1", "--resources", "gpu=1", "--quiet", "rules", "--config", "run=dry-run-check"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    for rule in ("train_model", "encode", "evaluate", "render_report"):
        assert rule in out


def test_offline_profile_dry_run():
    result = snakemake(
        "-n", "--profile", "workflow/profiles/offline", "--quiet", "rules", "--config", "run=dry-run-check"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train_model" in result.stdout + result.stderr


def test_unknown_config_key_on_the_command_line_names_it():
    result = snakemake("-n", "--config", "no_such_key=1")
    assert result.returncode != 0
    assert "no_such_key" in result.stdout + result.stderr


def test_lint_is_clean():
    result = snakemake("--lint")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "Lints for" not in out, out[-3000:]


def test_the_schema_lists_the_shared_vocabulary():
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    kinds = schema["properties"]["models"]["additionalProperties"]["properties"]["kind"]["enum"]
    assert tuple(kinds) == MODEL_KINDS


# ------------------------------------------------------------------------------------------------
# defaults live in the schema only

ANY = "*"  # any key of a mapping (additionalProperties, patternProperties)
PAPER_TRAIN = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))["train_defaults"]
STOPPING_TRAIN = {**PAPER_TRAIN, "heldout_every": 5, "stop_when_flat": {"patience": 2}}
# The smallest config that reaches every block of the schema holding a default.
MINIMAL = {
    "run": "minimal",
    "select": {"models": ["lm"], "recipes": ["qa"], "tasks": ["t"]},
    "train_defaults": STOPPING_TRAIN,
    "models": {
        "lm": {"kind": "causal", "source": {"hub": "a/lm"}, "train": STOPPING_TRAIN},
        "sampled": {"kind": "causal", "source": {"hub": "a/sampled"}, "decoding": {"temperature": 0.5}},
    },
    "recipes": {"qa": {"dataset": "qa", "template": "inbedder"}},
    "tasks": {"t": {"kind": "triplets"}},
}


def schema_defaults() -> list[tuple[tuple[str, ...], Any]]:
    """(key path, default) of every key of the schema that has a default, `ANY` standing for any key of a
    mapping; the walk follows properties, additionalProperties, patternProperties, items, the *Of lists
    and $ref, and fails when a default is left where it does not reach."""
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    found: list[tuple[tuple[str, ...], Any]] = []
    reached: set[int] = set()

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if not isinstance(node, dict):
            return
        if "$ref" in node:
            target = schema
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            walk(target, path)
        for key, sub in (node.get("properties") or {}).items():
            if isinstance(sub, dict) and "default" in sub:
                found.append(((*path, key), sub["default"]))
                reached.add(id(sub))
            walk(sub, (*path, key))
        for sub in [node.get("additionalProperties"), *(node.get("patternProperties") or {}).values()]:
            walk(sub, (*path, ANY))
        walk(node.get("items"), (*path, ANY))
        for group in ("oneOf", "anyOf", "allOf"):
            for sub in node.get(group) or []:
                walk(sub, path)

    walk(schema, ())

    def every_default(node: Any) -> list[dict]:
        if isinstance(node, list):
            return [d for item in node for d in every_default(item)]
        if not isinstance(node, dict):
            return []
        return ([node] if "default" in node else []) + [d for v in node.values() for d in every_default(v)]

    unreached = [d for d in every_default(schema) if id(d) not in reached]
    assert not unreached, f"defaults the walk does not reach: {unreached}"
    return found


def instances(config: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    """The (concrete path, mapping) pairs of `config` where the last key of `path` would live."""
    found = [((), config)]
    for part in path[:-1]:
        found = [((*where, key), node[key]) for where, node in found if isinstance(node, dict)
                 for key in (node if part == ANY else [part]) if key in node]
    return [(where, node) for where, node in found if isinstance(node, dict)]


def test_loading_a_minimal_config_fills_in_every_default_of_the_schema(tmp_path):
    path = tmp_path / "minimal.yaml"
    path.write_text(yaml.safe_dump(MINIMAL), encoding="utf-8")
    config = load_config(path)
    for key_path, default in schema_defaults():
        filled = [(where, node[key_path[-1]]) for where, node in instances(config, key_path)
                  if key_path[-1] not in dict(instances(MINIMAL, key_path)).get(where, {})]
        assert filled, f"{'.'.join(key_path)}: the minimal config reaches no place where it is filled in"
        for where, value in filled:
            if isinstance(default, dict):  # an object default: its own keys' defaults are filled into it
                assert value == {**value, **default}, (where, value)
            else:
                assert value == default, (where, key_path[-1], value, default)


# Settings classes built from config keys, each field -> the key path it comes from.
SETTINGS_CLASSES = {
    TrainSettings: {f.name: ("models", ANY, "train", f.name) for f in dataclasses.fields(TrainSettings)},
    StopWhenFlat: {
        f.name: ("models", ANY, "train", "stop_when_flat", f.name) for f in dataclasses.fields(StopWhenFlat)
    },
    TrainJob: {
        "device": ("device",),
        "dtype": ("dtype",),
        "max_new_tokens": ("models", ANY, "max_new_tokens"),
        "heldout_rows": ("limits", "heldout_rows"),
        "train_rows": ("limits", "train_rows"),
        "train_target": ("method", "train_target"),
        "train_answer_cut": ("method", "train_answer_cut"),
    },
}


def test_settings_classes_leave_every_schema_default_to_the_schema():
    defaulted = {key_path for key_path, _ in schema_defaults()}
    for cls, keys in SETTINGS_CLASSES.items():
        for field in dataclasses.fields(cls):
            if keys.get(field.name) in defaulted:
                where = f"{cls.__name__}.{field.name} repeats the default of {'.'.join(keys[field.name])}"
                assert field.default is dataclasses.MISSING, where
                assert field.default_factory is dataclasses.MISSING, where


def package_dataclasses() -> list[type]:
    """Every dataclass defined in a module of the inbedder package."""
    found = []
    for info in pkgutil.walk_packages(inbedder.__path__, "inbedder."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # a command's entry point: importing it runs the command
        module = importlib.import_module(info.name)
        found += [value for value in vars(module).values() if inspect.isclass(value)
                  and dataclasses.is_dataclass(value) and value.__module__ == info.name]
    return found


def _plain(value: Any) -> Any:
    """`value` with tuples as lists and booleans told apart from numbers, to compare with a YAML default."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return (bool, value) if isinstance(value, bool) else value


# (module, class, field) that may keep a default equal to the schema default of a key of the same name.
REPEATED_DEFAULT_ALLOWED: set[tuple[str, str, str]] = {
    # tasks.py is outside that change too: its one caller (evaluate.evaluate_task) passes run.seeds
    ("inbedder.tasks", "Scoring", "seeds"),
    # not a repeat: None is "not set for this model" (models.<m>.train.heldout_rows has no default); the
    # equal default is that of limits.heldout_rows, a different key
    ("inbedder.train_settings", "TrainSettings", "heldout_rows"),
}


def test_no_dataclass_repeats_the_schema_default_of_a_key_it_is_named_after():
    defaults: dict[str, list[Any]] = {}
    for key_path, default in schema_defaults():
        defaults.setdefault(key_path[-1], []).append(_plain(default))
    found = []
    for cls in package_dataclasses():
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                value = field.default
            elif field.default_factory is not dataclasses.MISSING:
                value = field.default_factory()
            else:
                continue
            if field.name in defaults and _plain(value) in defaults[field.name]:
                found.append((cls.__module__, cls.__name__, field.name))
    assert set(found) - REPEATED_DEFAULT_ALLOWED == set(), "dataclass fields repeating a schema default " \
        "(leave the default to the schema: the caller passes config[...]):\n" + "\n".join(
            ".".join(where) for where in sorted(set(found) - REPEATED_DEFAULT_ALLOWED))
    assert REPEATED_DEFAULT_ALLOWED - set(found) == set(), "allow-list entries that no longer repeat a default"


def _repeated_defaults(path: Path, defaults: dict[str, list[Any]]) -> list[str]:
    """The `.get(key, value)` / `.pop(key, value)` calls of a file whose value is a default of `key`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "pop") and len(node.args) == 2
                and isinstance(node.args[0], ast.Constant) and node.args[0].value in defaults):
            continue
        try:
            value = ast.literal_eval(node.args[1])
        except ValueError:
            continue
        if value in defaults[node.args[0].value]:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_code_repeats_a_schema_default_as_a_fallback():
    defaults: dict[str, list[Any]] = {}
    for key_path, default in schema_defaults():
        defaults.setdefault(key_path[-1], []).append(default)
    files = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "workflow").rglob("*.py"))
    found = [hit for path in files for hit in _repeated_defaults(path, defaults)]
    # the rule files are not Python to ast: a textual look for the same calls
    call = re.compile(r"\.(?:get|pop)\(\s*[\"'](" + "|".join(map(re.escape, defaults)) + r")[\"']\s*,")
    for path in [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if call.search(line):
                found.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not found, "schema defaults repeated as fallbacks (read config[...] instead):\n" + "\n".join(found)


def test_a_block_outside_a_config_gets_the_schemas_defaults_and_bounds():
    block = check_block(STOPPING_TRAIN, "/$defs/train", "x")
    assert block["stop_when_flat"] == {"patience": 2, "min_delta": 0, "recipes": None}
    with pytest.raises(ValueError, match=r"^x.warmup_ratio: 1 is greater than or equal to the maximum of 1$"):
        check_block({**PAPER_TRAIN, "warmup_ratio": 1}, "/$defs/train", "x")
