"""`inbedder cluster` on small files of our own, with real packaged models (sockets blocked)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from inbedder import cli

MESSAGES = {
    "card": [
        "My card was eaten by the cash machine.",
        "The new card has not arrived yet.",
        "Someone stole my credit card on the train.",
        "My card is declined at every shop.",
    ],
    "loan": [
        "What rate would I pay on a car loan?",
        "Can I borrow money to repair my roof?",
        "I want to repay my mortgage early.",
        "How long does a loan approval take?",
    ],
}


@pytest.fixture
def messages(tmp_path: Path) -> Path:
    path = tmp_path / "messages.jsonl"
    rows = [{"body": text, "gold": topic} for topic, texts in MESSAGES.items() for text in texts]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_model_kind_from_the_folder(minilm, smollm2, tmp_path):
    assert cli.model_kind(minilm) == "sentence-encoder"
    assert cli.model_kind(smollm2) == "causal"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["RobertaForMaskedLM"]}))
    assert cli.model_kind(tmp_path) == "masked"
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        cli.model_kind(tmp_path / "nothing")


def test_cluster_with_a_sentence_encoder(minilm, messages, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(
        [
            "cluster",
            str(messages),
            "--instruction",
            "What is the message about?",
            "--model",
            str(minilm),
            "--k",
            "2",
            "--text-column",
            "body",
            "--label-column",
            "gold",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "cluster" in printed and "v_measure" in printed
    assignments = pd.read_csv(out / "assignments.csv")
    assert len(assignments) == 8 and set(assignments["cluster"]) == {0, 1}
    # two plain topics, four messages each: the clusters are the topics
    purity = assignments.groupby("cluster")["label"].agg(lambda s: s.value_counts().iloc[0]).sum() / 8
    assert purity >= 0.75
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores["metric"]) == {"silhouette", "v_measure"} and scores["mode"].unique().tolist() == [
        "prefixed"
    ]
    expl = json.loads((out / "explanations.json").read_text())
    words = {w for c in expl["explanations"][0]["clusters"] for w, _ in c["top_words"]}
    assert {"card", "loan"} & words
    assert not (out / "answers.csv").exists()  # a sentence encoder generates nothing


def test_cluster_with_a_language_model_writes_answers_and_reuses_its_cache(smollm2, messages, tmp_path):
    out = tmp_path / "out"
    argv = [
        "cluster",
        str(messages),
        "--instruction",
        "What is the message about?",
        "--model",
        str(smollm2),
        "--k",
        "2",
        "--text-column",
        "body",
        "--out",
        str(out),
        "--quiet",
    ]
    assert cli.main(argv) == 0
    answers = pd.read_csv(out / "answers.csv", keep_default_na=False)
    assert len(answers) == 8 and answers["answer"].str.len().gt(0).all()
    scores = pd.read_csv(out / "scores.csv")
    assert scores["metric"].tolist() == ["silhouette"] and scores["mode"].tolist() == ["1st-gen"]
    key = json.loads((out / "cache" / "meta.json").read_text())["cache_key"]
    assert cli.main(argv) == 0  # rerun: the encode cache is reused, same key
    assert json.loads((out / "cache" / "meta.json").read_text())["cache_key"] == key


def test_cluster_errors_are_one_clear_line(minilm, messages, tmp_path, capsys):
    code = cli.main(
        [
            "cluster",
            str(messages),
            "--instruction",
            "q?",
            "--model",
            str(minilm),
            "--k",
            "2",
            "--text-column",
            "nope",
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ]
    )
    assert code == 2
    assert "['nope']" in capsys.readouterr().err
