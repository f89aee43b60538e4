"""Config validation, cross-reference checks and the dry runs of the paper and offline profiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inbedder.config import SCHEMA, ConfigError, check_runtime, load_config, merge
from inbedder.task_kinds import unavailable_reason

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
    from inbedder.vocabulary import MODEL_KINDS

    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    kinds = schema["properties"]["models"]["additionalProperties"]["properties"]["kind"]["enum"]
    assert tuple(kinds) == MODEL_KINDS


def test_defaults_come_from_the_schema_alone(root):
    config = load_config(root / "config.yaml")
    assert config["device"] == "auto" and config["dtype"] == "auto" and config["layers"] == [-1]
    assert all(spec["max_new_tokens"] >= 1 for spec in config["models"].values())
