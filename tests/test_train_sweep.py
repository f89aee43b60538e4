"""The learning-rate sweep: plan, picking rule, table, short runs; where the held-out metric reaches."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from test_train import data, job, smollm2_dir, tiny_model  # noqa: F401
from workspace import smoke_dry_run

from inbedder.config import load_config
from inbedder.report.provenance import training_ending
from inbedder.rule_params import lr_sweep_params, train_params
from inbedder.train import train_model
from inbedder.train_settings import job_from_params
from inbedder.train_sweep import (
    SweepRun,
    pick_lr,
    read_chosen_lr,
    sweep_job,
    sweep_plan,
    sweep_table,
    write_sweep_table,
)

ROOT = Path(__file__).resolve().parents[1]


def _row(lr, loss, f1=0.0):
    return {"model": "m", "recipe": "r", "lr": lr, "steps": 10, "heldout_token_f1": f1, "heldout_loss": loss}


def test_the_rule_picks_the_best_rate_and_a_tie_goes_to_the_smaller():
    rows = [_row(1e-4, 2.0, 0.3), _row(3e-5, 1.5, 0.2), _row(1e-5, 1.7, 0.3)]
    assert pick_lr(rows, "lowest_heldout_loss") == 3e-5
    assert pick_lr(rows, "highest_heldout_token_f1") == 1e-5  # 0.3 twice: the smaller rate
    assert pick_lr([_row(2e-5, 1.5), _row(1e-5, 1.5)], "lowest_heldout_loss") == 1e-5
    # a run that diverged (NaN loss) is never picked
    assert pick_lr([_row(1e-3, math.nan), _row(1e-5, 9.0)], "lowest_heldout_loss") == 1e-5
    with pytest.raises(ValueError, match="no run has a heldout_loss"):
        pick_lr([_row(1e-3, math.nan)], "lowest_heldout_loss")
    with pytest.raises(ValueError, match="lr_rule 'best'"):
        pick_lr(rows, "best")


def test_the_sweep_table_marks_one_chosen_rate(tmp_path):
    rows = sweep_table([_row(1e-4, 2.0), _row(1e-5, math.nan), _row(3e-5, 1.5)], "lowest_heldout_loss")
    assert [(r["lr"], r["chosen"]) for r in rows] == [(1e-5, False), (3e-5, True), (1e-4, False)]
    write_sweep_table(tmp_path / "t.csv", rows)
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0] == "model,recipe,lr,steps,heldout_token_f1,heldout_loss,chosen"
    assert lines[1] == "m,r,1e-05,10,0,,False" and lines[2] == "m,r,3e-05,10,0,1.5,True"
    assert read_chosen_lr(tmp_path / "t.csv") == 3e-5
    (tmp_path / "none.csv").write_text(lines[0] + "\n")
    with pytest.raises(ValueError, match="0 rows with chosen True"):
        read_chosen_lr(tmp_path / "none.csv")


def _offline() -> dict:
    return load_config(ROOT / "config.yaml")


def test_the_plan_covers_each_swept_model_recipe_and_rate():
    config = _offline()
    model = next(m for m, s in config["models"].items() if s.get("train"))
    assert sweep_plan(config["models"], ["inbedder", "alpaca", "none"]) == []  # off by default
    swept = copy.deepcopy(config)
    swept["models"][model]["train"] = {**swept["models"][model]["train"], "lr_sweep": [1e-4, 1e-5]}
    plan = sweep_plan({model: swept["models"][model]}, ["inbedder", "alpaca", "none"])
    assert plan == [SweepRun(model, r, lr, 50) for r in ("inbedder", "alpaca") for lr in (1e-5, 1e-4)]
    sweep = {"rates": [1e-5, 1e-4], "steps": 50, "rule": "lowest_heldout_loss"}
    assert lr_sweep_params(model, swept) == sweep
    assert lr_sweep_params(model, config) is None
    # the sweep keys say which runs there are: no fine-tune's params change
    assert train_params(model, "inbedder", swept) == train_params(model, "inbedder", config)


def test_the_heldout_metric_reaches_only_the_runs_it_chooses_for():
    config = _offline()
    model = next(m for m, s in config["models"].items() if s.get("train"))
    assert config["recipes"]["inbedder"]["heldout_metric"] == "token_f1"
    assert config["recipes"]["alpaca"]["heldout_metric"] == "loss"  # the schema's default
    plain = copy.deepcopy(config)
    plain["models"][model]["train"] = {**plain["models"][model]["train"], "heldout_every": None}
    for recipe in ("inbedder", "alpaca"):  # no checks during training: no metric in the params (as before it)
        assert "heldout_metric" not in train_params(model, recipe, plain)
    checked = copy.deepcopy(config)
    checked["models"][model]["train"] = {**checked["models"][model]["train"], "heldout_every": 10}
    params = train_params(model, "alpaca", checked)
    assert params["heldout_metric"] == "loss" and job_from_params(params).heldout_metric == "loss"
    assert train_params(model, "inbedder", checked)["heldout_metric"] == "token_f1"
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    recipe = schema["properties"]["recipes"]["additionalProperties"]
    assert recipe["properties"]["heldout_metric"]["default"] == "loss"


def test_the_report_names_the_kept_step():
    assert training_ending({"stopped_early": True, "plateau_step": 100, "steps": 140, "kept_step": 120}) == \
        "F1 flat: stopped (best at step 100); kept step 120 (best held-out F1)"
    assert training_ending({"steps": 250, "settings": {"max_steps": 250}, "kept_step": 200,
                            "heldout_metric": "loss"}) == "step cap; kept step 200 (best held-out loss)"
    assert training_ending({"steps": 250, "settings": {"max_steps": 250}, "kept_step": 250}) == "step cap"


def test_short_runs_are_the_fine_tune_cut_at_the_sweep_steps(tmp_path, data, smollm2_dir):  # noqa: F811
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    fine_tune = job("causal", max_steps=6, batch_size=2, heldout_every=2, stop_when_flat={"patience": 1})
    results = []
    for lr in (1e-4, 1e-2):
        run = SweepRun("tiny-causal", "inbedder", lr, 2)
        short = sweep_job(fine_tune, run)
        assert short.settings.learning_rate == lr and short.settings.max_steps == 6  # the schedule, cut
        summary = train_model(short, base, data["train"], data["heldout"], tmp_path / run.name)
        assert summary["steps"] == 2 and [p["step"] for p in summary["heldout_curve"]] == [0, 2]
        results.append({"lr": lr, "heldout_loss": summary["heldout_loss_after"],
                        "heldout_token_f1": summary["heldout_token_f1_after"]})
    # a higher rate lowers a random model's held-out loss faster in 2 steps
    assert results[1]["heldout_loss"] < results[0]["heldout_loss"]
    assert pick_lr(results, "lowest_heldout_loss") == 1e-2


def test_the_workflow_sweeps_before_the_fine_tune(tmp_path):
    """A dry run with train.lr_sweep: one lr_sweep job per (model, recipe), before its fine-tunes."""
    text = smoke_dry_run({"run": "sweep-dry", "models": {"smollm2-135m": {"train": {
        "lr_sweep": [1e-5, 1e-4], "seeds": [42, 7]}}}}, tmp_path)
    assert "results/sweep-dry/lr_sweep/smollm2-135m-inbedder.csv" in text
    assert "results/sweep-dry/lr_sweep/smollm2-135m-inbedder@7.csv" not in text  # one sweep for every seed
    assert "rule lr_sweep" in text
    assert "results/sweep-dry/models/smollm2-135m-inbedder@7/train_summary.json" in text


def test_the_sweep_script_writes_its_table(tmp_path, data, smollm2_dir):  # noqa: F811
    """The lr_sweep rule's script, run as Snakemake runs it (a `snakemake` object in its globals)."""
    import runpy
    from types import SimpleNamespace

    from test_train import TINY_TRAIN

    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    params = {"model": "tiny-causal", "recipe": "inbedder", "kind": "causal", "template": "inbedder",
              "dataset": "c3_qa", "train": {**TINY_TRAIN, "max_steps": 4, "batch_size": 2},
              "max_new_tokens": 3, "heldout_rows": None, "device": "cpu", "dtype": "float32",
              "train_target": "authors", "train_answer_cut": "authors", "recipe_epochs": None}
    table = tmp_path / "lr_sweep" / "tiny-causal-inbedder.csv"
    snakemake = SimpleNamespace(
        wildcards=SimpleNamespace(model="tiny-causal", recipe="inbedder"), threads=1,
        log=[str(tmp_path / "sweep.log")],
        input=SimpleNamespace(base=str(base / "fingerprint.json"), train=str(data["train"]),
                              heldout=str(data["heldout"])),
        output=SimpleNamespace(table=str(table)),
        params=SimpleNamespace(
            job=params, sweep={"rates": [1e-5, 1e-2], "steps": 2, "rule": "lowest_heldout_loss"}
        ),
    )
    runpy.run_path(str(ROOT / "workflow" / "scripts" / "lr_sweep.py"), init_globals={"snakemake": snakemake})
    lines = table.read_text().splitlines()
    assert lines[0] == "model,recipe,lr,steps,heldout_token_f1,heldout_loss,chosen" and len(lines) == 3
    assert read_chosen_lr(table) == 1e-2 and lines[2].endswith(",True")
    assert [p.name for p in table.parent.iterdir()] == [table.name]  # the short runs' folders are gone
