"""Prepared tables from the real mirror: row counts, label sets, schemas, determinism, bad input."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import datasets as hf_datasets
import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr
from sklearn.feature_extraction.text import TfidfVectorizer

from inbedder import analogs
from inbedder import datasets as D
from inbedder.datasets import DataError, prepare
from inbedder.files import read_jsonl, sha256_file
from inbedder.sources import fetch
from inbedder.text import STOPWORDS

MIRRORED = ("alpaca_5000", "c3", "stsb", "banking77", "nlupp", "twenty_newsgroups")
EVALUATION_DATASETS = ["nlupp_triplets", "nlupp_clustering", "nlupp_pairs", "twenty_newsgroups", "stsb", "banking77"]
OFFLINE_DATASETS = ["c3_qa", "c3_qa_heldout", "alpaca_5k", *EVALUATION_DATASETS]


@pytest.fixture(scope="module")
def raw(mirror, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    for name in MIRRORED:
        fetch(name, root / name, mirror=mirror, offline=True)
    return root


@pytest.fixture(scope="module")
def tables(raw, tmp_path_factory) -> dict[str, pd.DataFrame]:
    out = tmp_path_factory.mktemp("prepared")
    return {d: prepare(d, raw, out / f"{d}.parquet") for d in OFFLINE_DATASETS}


def _schema(table: pd.DataFrame, dataset: str) -> None:
    assert tuple(table.columns) == D.SCHEMAS[D.DATASETS[dataset].kind]


@pytest.mark.parametrize("dataset", EVALUATION_DATASETS)
def test_evaluation_tables_hold_only_what_comes_with_the_data(tables, dataset):
    """No instruction in a prepared evaluation table: the task_table rule resolves it from config."""
    t = tables[dataset]
    assert "instruction" not in t.columns
    assert t.columns[0] == "subset" and not (t["subset"].str.strip() == "").any()
    assert "instructions" not in inspect.signature(D.prepare).parameters
    assert "instructions" not in inspect.signature(D.DATASETS[dataset].builder).parameters


def test_c3_qa_is_c3_train_with_stopwords_removed_from_answers(tables, mirror):
    t = tables["c3_qa"]
    _schema(t, "c3_qa")
    assert len(t) == 3968  # 4,010 train rows less 42 whose answer is only stopwords
    for answer in t["output"]:
        assert answer and not [w for w in answer.split() if w.lower() in STOPWORDS]
    first = {"instruction": "What kind of movie does the woman like the most?", "output": "Comedy movies"}
    assert t.iloc[0][["instruction", "output"]].to_dict() == first


def test_c3_qa_heldout_comes_from_validation_only(tables, mirror):
    held, train = tables["c3_qa_heldout"], tables["c3_qa"]
    _schema(held, "c3_qa_heldout")
    assert len(held) == D.HELDOUT_ROWS == 300
    validation = [json.loads(x) for x in (mirror / "c3" / "c3.validation.en.jsonl").read_text().splitlines()]
    pairs = {(r["value"], r["key"]) for r in validation}
    assert set(zip(held["instruction"], held["input"])) <= pairs
    assert not set(zip(held["instruction"], held["input"])) & set(zip(train["instruction"], train["input"]))
    assert held["input"].nunique() > 200  # a random sample, not one passage's questions


def test_alpaca_5k(tables):
    t = tables["alpaca_5k"]
    _schema(t, "alpaca_5k")
    assert len(t) == 4998  # two mirrored rows have an empty output
    assert (t["input"] == "").sum() > 1000  # many Alpaca rows have no input; kept as ""


def _nlupp_labels(raw: Path) -> dict[str, tuple[str, str]]:
    return {u.text: (u.action, u.object) for u in analogs.nlupp_utterances(raw / "nlupp")}


def test_nlupp_clustering(tables, raw):
    t = tables["nlupp_clustering"]
    _schema(t, "nlupp_clustering")
    assert t["subset"].value_counts().to_dict() == {"action": 542, "object": 542}
    action, obj = t[t.subset == "action"], t[t.subset == "object"]
    assert set(action["label"]) == set(analogs.NLUPP_ACTIONS)
    assert set(obj["label"]) == set(analogs.NLUPP_OBJECTS)
    assert list(action["text"]) == list(obj["text"])
    labels = _nlupp_labels(raw)
    assert all(labels[x][0] == y for x, y in zip(action["text"], action["label"]))


def test_nlupp_triplets_follow_the_two_view_construction(tables, raw):
    t = tables["nlupp_triplets"]
    _schema(t, "nlupp_triplets")
    assert t["subset"].value_counts().to_dict() == {"action": 537, "object": 537}
    labels = _nlupp_labels(raw)
    for view, other in ((0, 1), (1, 0)):
        sub = t[t.subset == ("action", "object")[view]]
        for a, p, n in zip(sub["anchor"], sub["positive"], sub["negative"]):
            la, lp, ln = labels[a], labels[p], labels[n]
            assert lp[view] == la[view] and lp[other] != la[other]
            assert ln[other] == la[other] and ln[view] != la[view]
    action, obj = t[t.subset == "action"], t[t.subset == "object"]
    assert list(action["anchor"]) == list(obj["anchor"])
    assert list(action["positive"]) == list(obj["negative"])
    assert action["anchor"].nunique() == 537


def _tfidf(texts):
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)).fit(texts)
    return lambda xs: vec.transform(xs).toarray()


def test_an_instruction_agnostic_embedder_sums_to_100_percent(tables):
    """The paper's sanity check: success on the two views sums to ~100%, instructed pairs give ~0."""
    t = tables["nlupp_triplets"]
    embed = _tfidf(pd.concat([t.anchor, t.positive, t.negative]).unique())
    rates, ties = {}, 0
    for view in ("action", "object"):
        sub = t[t.subset == view]
        a, p, n = embed(sub.anchor), embed(sub.positive), embed(sub.negative)
        sim_p, sim_n = (a * p).sum(1), (a * n).sum(1)
        rates[view] = float(np.mean(sim_p > sim_n))
        ties += int(np.isclose(sim_p, sim_n).sum())
    assert rates["action"] + rates["object"] == pytest.approx(1.0 - ties / 537, abs=1e-9)
    assert 0.9 < rates["action"] + rates["object"] <= 1.0

    pairs = tables["nlupp_pairs"]
    embed = _tfidf(pd.concat([pairs.text1, pairs.text2]).unique())
    cos = (embed(pairs.text1) * embed(pairs.text2)).sum(1)
    assert abs(spearmanr(cos, pairs.score).statistic) < 1e-9


def test_nlupp_pairs(tables, raw):
    t = tables["nlupp_pairs"]
    _schema(t, "nlupp_pairs")
    assert len(t) == 4 * analogs.NLUPP_PAIRS_PER_VIEW == 1200
    assert t["score"].value_counts().to_dict() == {1.0: 600, 0.0: 600}
    labels = _nlupp_labels(raw)
    view_of = {"action": 0, "object": 1}
    shared_counts = {0: 0, 1: 0}
    for (x, y), group in t.groupby(["text1", "text2"], sort=False):
        assert sorted(group["score"]) == [0.0, 1.0]
        assert set(group["subset"]) == set(view_of)
        shared = view_of[group[group.score == 1.0]["subset"].item()]
        assert labels[x][shared] == labels[y][shared] and labels[x][1 - shared] != labels[y][1 - shared]
        shared_counts[shared] += 1
    assert shared_counts == {0: 300, 1: 300}


def test_twenty_newsgroups_subject_sets(tables):
    t = tables["twenty_newsgroups"]
    _schema(t, "twenty_newsgroups")
    sizes = t.groupby("subset").size()
    assert sorted(sizes.index) == [str(i) for i in range(10)]
    assert sizes.between(1000, 10000).all()
    assert len(t) == sizes.sum() == 60558
    assert all(t.groupby("subset")["label"].nunique() == 20)
    assert {g.split(".")[0] for g in t["label"]} == {"alt", "comp", "misc", "rec", "sci", "soc", "talk"}
    assert t["text"].str.startswith("Subject:").mean() < 0.001  # one post's subject itself repeats it
    assert t["text"].str.len().max() <= 200
    for _, group in t.groupby("subset"):
        assert not group["text"].index.duplicated().any()


def test_twenty_newsgroups_pool_is_every_post(raw):
    pool = analogs.newsgroups_subjects(raw / "twenty_newsgroups" / "20news-bydate.tar.gz")
    assert pool["split"].value_counts().to_dict() == {"train": 11314, "test": 7532}
    first = pool.iloc[0]
    assert (first.split, first.group, first.subject) == (
        "test",
        "alt.atheism",
        "Re: about the bible quiz answers",
    )


def test_stsb_reads_scores_and_ignores_trailing_columns(tables, mirror):
    t = tables["stsb"]
    _schema(t, "stsb")
    assert len(t) == 1379
    assert t["score"].between(0, 5).all() and t["score"].min() == 0 and t["score"].max() == 5
    lines = (mirror / "stsb" / "sts-test.csv").read_text(encoding="utf-8").splitlines()
    extra = [i for i, line in enumerate(lines) if len(line.split("\t")) > 7]
    assert extra, "the mirror's sts-test.csv has lines with extra trailing columns"
    fields = lines[extra[0]].split("\t")
    row = t.iloc[extra[0]]
    assert (row.text1, row.text2, row.score) == (fields[5], fields[6], float(fields[4]))


def test_banking77_clustering(tables):
    t = tables["banking77"]
    _schema(t, "banking77")
    assert len(t) == 3080
    assert t["label"].nunique() == 77
    assert set(t["subset"]) == {"default"}


@pytest.mark.parametrize("dataset", OFFLINE_DATASETS)
def test_builders_are_deterministic(dataset, raw, tmp_path):
    paths = [tmp_path / f"{dataset}.{i}.parquet" for i in range(2)]
    for path in paths:
        prepare(dataset, raw, path)
    assert sha256_file(paths[0]) == sha256_file(paths[1])


def test_an_unfetched_source_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"stsb/manifest\.json is missing"):
        prepare("stsb", tmp_path, tmp_path / "t.parquet")


# Bad input at the boundary: a copy of a fetched source, altered, then prepared.


def _altered(raw: Path, tmp_path: Path, source: str) -> Path:
    root = tmp_path / "raw"
    shutil.copytree(raw / source, root / source)
    return root


def test_missing_column_names_file_and_column(raw, tmp_path):
    root = _altered(raw, tmp_path, "c3")
    path = root / "c3" / "c3.validation.en.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    del rows[7]["value_prefix"]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"{path}: column 'value_prefix' missing \(row 7"):
        prepare("c3_qa_heldout", root, tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()


def test_empty_dataset_names_the_file(raw, tmp_path):
    root = _altered(raw, tmp_path, "banking77")
    path = root / "banking77" / "test.csv"
    path.write_text("text,category\n")
    with pytest.raises(DataError, match=rf"{path}: empty dataset"):
        prepare("banking77", root, tmp_path / "t.parquet")


def test_non_utf8_text_names_file_and_column(raw, tmp_path):
    root = _altered(raw, tmp_path, "banking77")
    path = root / "banking77" / "test.csv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = b"Caf\xe9 card " + lines[3]  # a latin-1 byte in the text column of row 2
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=rf"{path}: column 'text', row 2: text is not valid UTF-8"):
        prepare("banking77", root, tmp_path / "t.parquet")


def test_short_stsb_line_names_the_missing_column(raw, tmp_path):
    root = _altered(raw, tmp_path, "stsb")
    path = root / "stsb" / "sts-test.csv"
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[4] = "\t".join(lines[4].split("\t")[:6])
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:5: 6 tab-separated fields.*'sentence2' missing"):
        prepare("stsb", root, tmp_path / "t.parquet")


def test_nlupp_fold_without_text_names_file_and_column(raw, tmp_path):
    root = _altered(raw, tmp_path, "nlupp")
    path = root / "nlupp" / "banking" / "fold3.json"
    rows = json.loads(path.read_text())
    rows[0] = {"utterance": rows[0]["text"], "intents": rows[0].get("intents", [])}
    path.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=rf"{path}: column 'text' missing \(row 0"):
        prepare("nlupp_clustering", root, tmp_path / "t.parquet")


# Hub datasets: the fetch path with a stand-in for the hub (no network here), then the builders.


@pytest.fixture
def hub_raw(tmp_path, monkeypatch) -> Path:
    def fake_load_dataset(path, name=None, revision=None):
        n = 20
        if path == "BrandonZYW/IntentEmotion":
            rows = {k: [f"{name} {k} {i}" for i in range(n)] for k in ("anchor", "positive", "negative")}
        elif path == "BrandonZYW/NYTClustering":
            rows = {
                "text": [f"{name} text {i}" for i in range(n)],
                "cluster": [f"c{i % 3}" for i in range(n)],
            }
        elif path == "BrandonZYW/InstructSTSB":
            rows = {
                "sentence1": [f"s1 {i}" for i in range(n)],
                "sentence2": [f"s2 {i}" for i in range(n)],
                "instruction": [f"question {i % 2}?" for i in range(n)],
                "score": [i % 2 for i in range(n)],
            }
            return hf_datasets.DatasetDict({"test": hf_datasets.Dataset.from_dict(rows)})
        else:  # InBedder QA data and Alpaca: one train split
            n = 1000
            rows = {
                "instruction": [f"q{i}" for i in range(n)],
                "input": [f"passage {i}" for i in range(n)],
                "output": [f"a{i}" for i in range(n)],
            }
            return hf_datasets.DatasetDict({"train": hf_datasets.Dataset.from_dict(rows)})
        return hf_datasets.DatasetDict({"test": hf_datasets.Dataset.from_dict(rows)})

    monkeypatch.setattr(hf_datasets, "load_dataset", fake_load_dataset)
    root = tmp_path / "raw"
    for name in ("inbedder_qa", "alpaca_full", "intent_emotion", "nyt_clustering", "instruct_stsb"):
        fetch(name, root / name, mirror=None, offline=False)
    return root


def test_hub_builders_on_the_hub_layout(hub_raw, tmp_path):
    ie = prepare("intent_emotion", hub_raw, tmp_path / "ie.parquet")
    _schema(ie, "intent_emotion")
    assert ie.groupby("subset").size().to_dict() == {"emotion": 20, "intent": 20}
    assert ie[ie.subset == "intent"]["anchor"].iloc[0] == "intent anchor 0"
    nyt = prepare("nyt_clustering", hub_raw, tmp_path / "nyt.parquet")
    _schema(nyt, "nyt_clustering")
    assert set(nyt["label"]) == {"c0", "c1", "c2"} and set(nyt["subset"]) == {"topic", "location"}
    stsb = prepare("instruct_stsb", hub_raw, tmp_path / "is.parquet")
    assert stsb["score"].dtype == np.float64 and set(stsb["instruction"]) == {"question 0?", "question 1?"}
    # the one evaluation set whose data has an instruction per pair keeps it, after `subset`
    assert tuple(stsb.columns) == ("subset", "instruction", "text1", "text2", "score")
    assert set(stsb["subset"]) == {"default"}
    qa = prepare("inbedder_qa", hub_raw, tmp_path / "qa.parquet")
    held = prepare("inbedder_qa_heldout", hub_raw, tmp_path / "held.parquet")
    assert (len(qa), len(held)) == (700, 300)
    assert not set(qa["instruction"]) & set(held["instruction"])
    assert len(prepare("alpaca", hub_raw, tmp_path / "alpaca.parquet")) == 1000


def test_training_tables(raw, tmp_path):
    prepared = tmp_path / "prepared"
    prepare("c3_qa", raw, prepared / "c3_qa.parquet")
    prepare("c3_qa_heldout", raw, prepared / "c3_qa_heldout.parquet")
    out = [tmp_path / "train" / "inbedder.jsonl", tmp_path / "train" / "inbedder.heldout.jsonl"]
    counts = D.write_training_tables(
        prepared / "c3_qa.parquet", prepared / "c3_qa_heldout.parquet", *out, train_rows=64, heldout_rows=50
    )
    assert counts == (64, 50)
    train, held = (read_jsonl(p) for p in out)
    assert all(list(r) == ["instruction", "input", "output"] for r in train + held)
    assert [r["instruction"] for r in held] == list(
        pd.read_parquet(prepared / "c3_qa_heldout.parquet")["instruction"][:50]
    )
    again = tmp_path / "again.jsonl"
    D.write_training_tables(
        prepared / "c3_qa.parquet",
        prepared / "c3_qa_heldout.parquet",
        again,
        tmp_path / "again.heldout.jsonl",
        train_rows=64,
        heldout_rows=50,
    )
    assert sha256_file(again) == sha256_file(out[0])
    full = D.write_training_tables(prepared / "c3_qa.parquet", prepared / "c3_qa_heldout.parquet", *out)
    assert full == (3968, 300)
    with pytest.raises(ValueError, match=r"limits\.train_rows: 0"):
        D.write_training_tables(
            prepared / "c3_qa.parquet", prepared / "c3_qa_heldout.parquet", *out, train_rows=0
        )


def test_heldout_dataset_by_profile():
    assert D.heldout_dataset(offline=True) == "c3_qa_heldout"
    assert D.heldout_dataset(offline=False) == "inbedder_qa_heldout"


# What the rules of workflow/rules/data.smk ask the package, on the real config files.


@pytest.fixture(scope="module")
def configs(root):
    from inbedder.config import load_config

    paper = load_config(root / "config.yaml")
    offline = load_config(root / "config.yaml", root / "workflow" / "profiles" / "offline" / "run.yaml")
    return paper, offline


def test_every_dataset_named_in_config_has_a_builder(configs):
    for config in configs:
        for task, spec in config["tasks"].items():
            if "dataset" in spec:
                assert spec["dataset"] in D.DATASETS, task
        for recipe in config["recipes"]:
            training_inputs = D.training_inputs(recipe, config["recipes"], bool(config["offline"]))
            assert set(training_inputs) == {"train", "heldout"}


def test_rule_inputs_and_params_from_config(configs):
    paper, offline = configs
    assert D.training_inputs("inbedder", offline["recipes"], True) == {
        "train": "data/prepared/c3_qa.parquet",
        "heldout": "data/prepared/c3_qa_heldout.parquet",
    }
    assert D.training_inputs("alpaca", paper["recipes"], False) == {
        "train": "data/prepared/alpaca.parquet",
        "heldout": "data/prepared/inbedder_qa_heldout.parquet",
    }
    assert D.source_manifests("nlupp_pairs") == ["data/raw/nlupp/manifest.json"]
    with pytest.raises(ValueError, match=r"recipe 'none' is not a key of recipes"):
        D.training_inputs("none", paper["recipes"], False)
    with pytest.raises(ValueError, match=r"recipes\.x\.dataset: 'stsb' is not a training dataset"):
        D.training_inputs("x", {"x": {"dataset": "stsb"}}, False)
