"""`train.steps_of`: a recipe's run ends at the step where another recipe's run of the same model and
training seed ended (the Alpaca baseline trained for as many steps as the InBedder run it is compared with)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inbedder.config import load_config
from inbedder.rule_params import train_leader, train_params
from inbedder.train_settings import job_from_params

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def offline() -> dict:
    return load_config(ROOT / "config.yaml", ROOT / "workflow" / "profiles" / "offline" / "run.yaml")


def with_train(config: dict, **train) -> dict:
    config = copy.deepcopy(config)
    config["models"][MODEL]["train"].update(train)
    return config


def test_the_follower_names_its_leader_of_the_same_seed_and_the_leader_keeps_its_params(offline):
    stop = {"patience": 2, "min_delta": 0.005, "recipes": ["inbedder"]}
    before = with_train(offline, seeds=[42, 1], heldout_every=50, stop_when_flat=stop)
    after = with_train(before, steps_of={"alpaca": "inbedder"})
    assert train_leader(MODEL, "alpaca", after) == "inbedder"
    assert train_leader(MODEL, "alpaca@1", after) == "inbedder@1"
    assert train_leader(MODEL, "inbedder@1", after) is None
    assert train_params(MODEL, "alpaca@1", after)["steps_of"] == f"{MODEL}-inbedder@1"
    # adding the key reruns no leader, and the follower's train block is as before
    for run in ("inbedder", "inbedder@1"):
        assert train_params(MODEL, run, after) == train_params(MODEL, run, before)
    follower = train_params(MODEL, "alpaca", after)
    assert follower.pop("steps_of") == f"{MODEL}-inbedder"
    assert follower == train_params(MODEL, "alpaca", before)


@pytest.mark.parametrize(
    ("steps_of", "stop_recipes", "message"),
    [
        ({"alpaca": "nope"}, ["inbedder"], r"steps_of: 'nope' is not a trained recipe"),
        ({"none": "inbedder"}, ["inbedder"], r"steps_of: 'none' is not a trained recipe"),
        ({"alpaca": "alpaca"}, ["inbedder"], r"steps_of.alpaca: 'alpaca' must be another recipe"),
        ({"alpaca": "inbedder", "inbedder": "alpaca"}, ["inbedder"], r"must be another recipe that follows none"),
        ({"alpaca": "inbedder"}, None, r"steps_of.alpaca: the recipe also stops by itself"),
        (["alpaca"], ["inbedder"], r"steps_of: a mapping"),
    ],
)
def test_bad_steps_of_names_the_key(offline, steps_of, stop_recipes, message):
    config = with_train(offline, heldout_every=10, steps_of=steps_of,
                        stop_when_flat={"patience": 1, "recipes": stop_recipes})
    with pytest.raises(ValueError, match=message):
        train_params(MODEL, "alpaca", config)


def test_following_reads_the_leaders_final_step_into_the_run_key(tmp_path, offline):
    job = job_from_params(train_params(MODEL, "alpaca", with_train(offline, max_steps=250)))
    leader = tmp_path / f"{MODEL}-inbedder@1" / "train_summary.json"
    leader.parent.mkdir()
    leader.write_text(json.dumps({"steps": 200}))
    follower = job.following(leader)
    assert (follower.stop_at_step, follower.steps_of) == (200, f"{MODEL}-inbedder@1")
    assert follower.run_key_settings() == {**job.run_key_settings(), "stop_at_step": 200}
    assert follower.effective_settings().max_steps == 250  # the schedule is the follower's own
    leader.write_text(json.dumps({"steps": 0}))
    with pytest.raises(ValueError, match=r"train_summary.json: no positive 'steps'"):
        job.following(leader)


def test_the_follower_waits_for_its_leader_in_the_dag(tmp_path):
    extra = tmp_path / "steps_of.yaml"
    extra.write_text(yaml.safe_dump({"run": "steps-of-dry", "select": {"recipes": ["inbedder", "alpaca", "none"]},
                                     "models": {MODEL: {"train": {
                                         "seeds": [42, 7], "heldout_every": 2, "steps_of": {"alpaca": "inbedder"},
                                         "stop_when_flat": {"patience": 1, "recipes": ["inbedder"]}}}}}))
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    detail = subprocess.run(
        [snakemake, "-n", "--profile", "workflow/profiles/smoke", "--configfile", "config.yaml",
         "workflow/profiles/offline/run.yaml", "workflow/profiles/smoke/run.yaml", str(extra),
         "--forceall", f"results/steps-of-dry/models/{MODEL}-alpaca@7/train_summary.json"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert detail.returncode == 0, detail.stderr[-3000:]
    text = detail.stdout
    assert f"results/steps-of-dry/models/{MODEL}-inbedder@7/train_summary.json" in text  # the leader runs first
    assert f"{MODEL}-inbedder/train_summary.json" not in text  # not the other seed's
