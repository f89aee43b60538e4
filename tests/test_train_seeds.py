"""Training seeds: each is its own fine-tune (`<recipe>@<seed>`), its rows labelled with `train_seed`, the
report averaging over them, resampling them in every CI and showing their spread."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from workspace import smoke_dry_run

from inbedder import report
from inbedder.config import load_config
from inbedder.item_data import ItemData, item_frame
from inbedder.rule_params import (
    encode_params,
    evaluate_params,
    recipe_runs,
    resolve_run,
    run_name,
    train_params,
)
from inbedder.scores import read_scores, write_scores
from inbedder.vocabulary import SCORE_COLUMNS, split_recipe

ROOT = Path(__file__).resolve().parents[1]
# The offline analogs of the project's task records (config.yaml `tasks.<name>.report`).
OFFLINE_SUITE = report.suites_of(load_config(ROOT / "config.yaml")["tasks"])["offline"]


@pytest.fixture(scope="module")
def offline() -> dict:
    return load_config(ROOT / "config.yaml", ROOT / "workflow" / "profiles" / "offline" / "run.yaml")


def with_seeds(config: dict, seeds: list[int]) -> dict:
    config = copy.deepcopy(config)
    config["models"]["smollm2-135m"]["train"]["seeds"] = seeds
    return config


def test_split_recipe():
    assert split_recipe("inbedder") == ("inbedder", None)
    assert split_recipe("inbedder@7") == ("inbedder", 7)
    with pytest.raises(ValueError, match="integer"):
        split_recipe("inbedder@x")


def test_each_further_seed_is_a_run_and_the_first_keeps_its_params(offline):
    seeded = with_seeds(offline, [42, 7, 8])
    assert recipe_runs("smollm2-135m", "inbedder", offline) == ["inbedder"]
    assert recipe_runs("smollm2-135m", "inbedder", seeded) == ["inbedder", "inbedder@7", "inbedder@8"]
    assert recipe_runs("smollm2-135m", "none", seeded) == ["none"]
    # adding seeds leaves the first seed's fine-tune (and so its caches and scores) as it was
    assert train_params("smollm2-135m", "inbedder", seeded) == train_params("smollm2-135m", "inbedder", offline)
    further = train_params("smollm2-135m", "inbedder@7", seeded)
    assert further["recipe"] == "inbedder" and further["train"]["seed"] == 7 and "seeds" not in further["train"]
    assert encode_params("smollm2-135m", "inbedder@7", "STSBenchmark", seeded) == encode_params(
        "smollm2-135m", "inbedder", "STSBenchmark", seeded)
    assert resolve_run("smollm2-135m", "inbedder", seeded) == ("inbedder", 42)
    assert resolve_run("smollm2-135m", "inbedder@8", seeded) == ("inbedder", 8)
    assert resolve_run("smollm2-135m", "none", seeded) == ("none", None)
    for recipe, seed in (("inbedder", 42), ("inbedder", 8), ("none", None)):
        assert resolve_run("smollm2-135m", run_name("smollm2-135m", recipe, seed, seeded), seeded) == (recipe, seed)
    labels = evaluate_params("smollm2-135m", "inbedder@8", "STSBenchmark", seeded)
    assert (labels["recipe"], labels["train_seed"]) == ("inbedder", 8)
    assert evaluate_params("minilm-l6", "none", "STSBenchmark", seeded)["train_seed"] is None
    # a seed list whose first seed is not `seed` trains the first under its own seed
    assert train_params("smollm2-135m", "inbedder", with_seeds(offline, [5, 6]))["train"]["seed"] == 5


def test_bad_seeds_name_the_key(offline):
    seeded = with_seeds(offline, [42, 7])
    with pytest.raises(ValueError, match=r"training seed 9 is not one of models.smollm2-135m.train.seeds"):
        train_params("smollm2-135m", "inbedder@9", seeded)
    with pytest.raises(ValueError, match="the first seed's run is the plain 'inbedder'"):
        resolve_run("smollm2-135m", "inbedder@42", seeded)
    with pytest.raises(ValueError, match="not trained"):
        resolve_run("smollm2-135m", "none@1", seeded)
    typo = copy.deepcopy(offline)
    typo["models"]["smollm2-135m"]["train"].update(heldout_every=5, stop_when_flat={"patience": 1,
                                                                                    "recipes": ["inbeder"]})
    with pytest.raises(ValueError, match=r"models.smollm2-135m.train.stop_when_flat.recipes: unknown recipe"):
        train_params("smollm2-135m", "inbedder", typo)
    with pytest.raises(ValueError, match=r"models.smollm2-135m.train.seeds: a non-empty list of distinct"):
        recipe_runs("smollm2-135m", "inbedder", with_seeds(offline, [1, 1]))


def test_the_workflow_grid_has_a_fine_tune_per_seed(offline, tmp_path):
    """The DAG (a dry run) trains, encodes and scores each training seed; the further seed reads its recipe's
    training table."""
    text = smoke_dry_run({"run": "seeds-dry", "models": {"smollm2-135m": {"train": {"seeds": [42, 7]}}}}, tmp_path)
    assert "results/seeds-dry/models/smollm2-135m-inbedder@7/train_summary.json" in text
    assert "results/seeds-dry/scores/smollm2-135m-inbedder@7/STSBenchmark.csv" in text
    assert "results/seeds-dry/train/inbedder@7.jsonl" not in text  # one training table per recipe


def test_old_score_tables_without_train_seed_still_read(tmp_path):
    row = {c: v for c, v in zip(SCORE_COLUMNS, ["m", "none", "plain", -1, "T", "all", "spearman", 0.5, None,
                                                None, 10], strict=True)}
    old = pd.DataFrame([row]).drop(columns=["train_seed"])
    old.to_csv(tmp_path / "old.csv", index=False)
    back = read_scores(tmp_path / "old.csv")
    assert list(back.columns[: len(SCORE_COLUMNS)]) == list(SCORE_COLUMNS) and back["train_seed"].isna().all()
    write_scores(back.assign(train_seed=pd.array([3], dtype="Int64")), tmp_path / "new.csv")
    assert int(read_scores(tmp_path / "new.csv")["train_seed"].iloc[0]) == 3


def _rows(seed_values: dict[int, float], mode: str = "avg-gen") -> pd.DataFrame:
    """Triplet success rates of one fine-tune per training seed (both views at one value)."""
    rows = []
    for train_seed, v in seed_values.items():
        for view in ("action", "object"):
            rows.append({"model": "smollm2-135m", "recipe": "inbedder", "mode": mode, "layer": "-1",
                         "task": "NLUPPTwoViewTriplets", "subset": view, "metric": "success_rate", "value": v,
                         "seed": -1, "train_seed": train_seed, "n": 300})
    return pd.DataFrame(rows)[list(SCORE_COLUMNS)]


def _items(seed_values: dict[int, float], n_items: int = 300) -> ItemData:
    out = []
    for train_seed, v in seed_values.items():
        rng = np.random.default_rng(train_seed)
        for view in ("action", "object"):
            correct = (np.arange(n_items) < round(v * n_items)).astype(float)
            rng.shuffle(correct)
            out += [{"model": "smollm2-135m", "recipe": "inbedder", "task": "NLUPPTwoViewTriplets", "mode": "avg-gen",
                     "layer": -1, "subset": view, "metric": "success_rate", "seed": -1, "train_seed": train_seed,
                     "item": i, "statistic": "mean", "value": c} for i, c in enumerate(correct)]
    return ItemData(item_frame(out), n_boot=400)


def test_report_averages_training_seeds_and_resamples_them():
    col = OFFLINE_SUITE.ia[1]  # IntEmo analog: NLUPPTwoViewTriplets, hmean of the views
    spread = {42: 0.5, 7: 0.7, 8: 0.6}
    cell = report.column_cells(_rows(spread), col, _items(spread))[("smollm2-135m", "inbedder", "avg-gen")]
    assert cell.value == pytest.approx(60.0)
    assert cell.n_seeds == 3 and cell.sd == pytest.approx(10.0)
    # the seeds are resampled: the CI is much wider than one seed's item-only interval
    one = report.column_cells(_rows({42: 0.6}), col, _items({42: 0.6}))[("smollm2-135m", "inbedder", "avg-gen")]
    assert one.n_seeds == 1
    assert cell.high - cell.low > 2 * (one.high - one.low)
    assert cell.low < 55 and cell.high > 65


def test_spread_across_training_seeds_per_headline_run():
    spread = {42: 0.5, 7: 0.7}
    scores = _rows(spread)
    run = report.Run("smollm2-135m", "inbedder", "avg-gen")
    # the other IA tasks, so the IA average exists per seed
    extra = []
    for train_seed, v in spread.items():
        extra.append({"model": run.model, "recipe": run.recipe, "mode": run.mode, "layer": "-1",
                      "task": "NLUPPInstructedPairs", "subset": "all", "metric": "spearman", "value": v / 2,
                      "seed": -1, "train_seed": train_seed, "n": 300})
        for view in ("action", "object"):
            extra.append({"model": run.model, "recipe": run.recipe, "mode": run.mode, "layer": "-1",
                          "task": "NLUPPTwoViewClustering", "subset": view, "metric": "v_measure", "value": v / 4,
                          "seed": 0, "train_seed": train_seed, "n": 300})
    scores = pd.concat([scores, pd.DataFrame(extra)[list(SCORE_COLUMNS)]], ignore_index=True)
    rows = report.train_seed_spread(scores, OFFLINE_SUITE, [run])
    ia = next(r for r in rows if r["column"] == report.IA_AVG)
    assert ia["seeds"] == [7, 42]
    expected = {s: 100 * (v + v / 4 + v / 2) / 3 for s, v in spread.items()}
    assert ia["values"] == pytest.approx([expected[7], expected[42]])
    assert ia["sd"] == pytest.approx(np.std(list(expected.values()), ddof=1))
    # one training seed: no spread to show
    assert report.train_seed_spread(scores[scores["train_seed"] == 42], OFFLINE_SUITE, [run]) == []
