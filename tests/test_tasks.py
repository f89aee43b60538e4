"""Task tables, prompts, limits, own data, the task-table file and mteb task objects (offline: prepared tables;
hub: mteb's loading)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from inbedder import datasets, mteb_tasks, sources, task_kinds, tasks

TWO_VIEWS = {"action": "What does the customer want to do?", "object": "Which product is this about?"}


def prompts_of(name: str, spec: dict, data_dir: Path | str = "data", limit: int | None = None) -> list[dict]:
    """The prompts of a task, through its task table (what the encode job reads)."""
    return task_kinds.task_prompts(name, spec, task_kinds.task_table(name, spec, data_dir=data_dir, limit=limit))


def write_table(data_dir: Path, name: str, rows: list[dict]) -> None:
    path = data_dir / "prepared" / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Tiny prepared tables of every kind, hand-made."""
    texts = {"t1": ("close", "card"), "t2": ("close", "loan"), "t3": ("open", "card"), "t4": ("open", "loan")}
    write_table(
        tmp_path,
        "two_view",
        [
            {"subset": view, "instruction": "stale instruction in the table", "text": t, "label": labels[i]}
            for i, view in enumerate(("action", "object"))
            for t, labels in texts.items()
        ],
    )
    write_table(
        tmp_path,
        "triplets",
        [
            {"subset": "action", "instruction": "x", "anchor": "t1", "positive": "t2", "negative": "t3"},
            {"subset": "object", "instruction": "x", "anchor": "t1", "positive": "t3", "negative": "t2"},
        ],
    )
    write_table(
        tmp_path,
        "pairs",
        [
            {"subset": "default", "instruction": TWO_VIEWS["action"], "text1": "t1", "text2": "t2", "score": 1.0},
            {"subset": "default", "instruction": TWO_VIEWS["object"], "text1": "t1", "text2": "t2", "score": 0.0},
        ],
    )
    write_table(
        tmp_path,
        "sts",
        [
            {"subset": "default", "text1": f"a{i}", "text2": f"b{i}", "score": float(i % 6)}
            for i in range(12)
        ],
    )
    write_table(
        tmp_path,
        "sets",
        [
            {"subset": str(s), "instruction": "topic?", "text": f"s{s}-{i}", "label": f"g{i % 3}"}
            for s in range(2)
            for i in range(9)
        ],
    )
    return tmp_path


def test_clustering_prompts_use_config_instructions_and_include_the_cross_view(tiny):
    spec = {"kind": "clustering", "dataset": "two_view", "instructions": TWO_VIEWS}
    prompts = prompts_of("Two", spec, data_dir=tiny)
    assert len(prompts) == 8  # 4 texts x 2 instructions, each once
    assert {p["instruction"] for p in prompts} == set(TWO_VIEWS.values())  # config wins over the table
    assert prompts == prompts_of("Two", spec, data_dir=tiny)  # deterministic
    assert prompts[0] == {"text": "t1", "instruction": TWO_VIEWS["action"]}


def test_triplet_and_pair_prompts(tiny):
    spec = {"kind": "triplets", "dataset": "triplets", "instructions": TWO_VIEWS}
    prompts = prompts_of("Trip", spec, data_dir=tiny)
    assert {(p["text"], p["instruction"]) for p in prompts} == {
        (t, i) for t in ("t1", "t2", "t3") for i in TWO_VIEWS.values()
    }
    pairs = prompts_of("Pairs", {"kind": "pairs", "dataset": "pairs"}, data_dir=tiny)
    assert pairs == [
        {"text": "t1", "instruction": TWO_VIEWS["action"]},
        {"text": "t2", "instruction": TWO_VIEWS["action"]},
        {"text": "t1", "instruction": TWO_VIEWS["object"]},
        {"text": "t2", "instruction": TWO_VIEWS["object"]},
    ]


def test_a_single_view_task_has_no_cross_view_prompts(tiny):
    spec = {"kind": "clustering", "dataset": "two_view", "instructions": TWO_VIEWS}
    table = task_kinds.task_table("Two", spec, data_dir=tiny)
    write_table(tiny, "one_view", table[table["subset"] == "action"].to_dict("records"))
    prompts = prompts_of("One", {"kind": "clustering", "dataset": "one_view"}, data_dir=tiny)
    assert {p["instruction"] for p in prompts} == {TWO_VIEWS["action"]}  # from the table: no config entry


def test_limit_is_seeded_deterministic_and_keeps_the_same_texts_in_every_view(tiny):
    spec = {"kind": "clustering", "dataset": "two_view", "instructions": TWO_VIEWS}
    table = task_kinds.task_table("Two", spec, data_dir=tiny, limit=2)
    by_view = {v: set(g["text"]) for v, g in table.groupby("subset")}
    assert len(by_view["action"]) == 2 and by_view["action"] == by_view["object"]
    assert table.equals(task_kinds.task_table("Two", spec, data_dir=tiny, limit=2))
    expected = sorted(["t1", "t2", "t3", "t4"], key=tasks.rank_key)[:2]
    assert by_view["action"] == set(expected)


def test_robustness_prompts_are_every_text_under_every_instruction(tiny):
    spec = {
        "kind": "robustness",
        "dataset": "two_view",
        "subset": "object",
        "instructions": {g: [f"{g} question {i}?" for i in range(10)] for g in tasks.ROBUSTNESS_GROUPS},
    }
    prompts = prompts_of("Rob", spec, data_dir=tiny)
    assert len(prompts) == 4 * 30
    table = task_kinds.task_table("Rob", spec, data_dir=tiny)
    assert table.groupby("subset", sort=False)["label"].agg(list).tolist() == [["card", "loan", "card", "loan"]] * 30
    assert table.groupby("subset", sort=False)["instruction"].first().tolist() == [
        i for _, _, i in tasks.robustness_instructions("Rob", spec)
    ]
    assert table["subset"].iloc[0] == "correct/00" and table["subset"].iloc[-1] == "incorrect/09"
    assert len(prompts_of("Rob", spec, data_dir=tiny, limit=3)) == 3 * 30
    with pytest.raises(tasks.TaskError, match="incorrect"):
        prompts_of(
            "Rob", {**spec, "instructions": {"correct": ["a"], "implicit": ["b"]}}, data_dir=tiny
        )


def test_modes_for_restricts_and_defaults_robustness_to_first_gen():
    modes = ["1st-gen", "avg-gen", "avg-ppt"]
    assert task_kinds.modes_for({"kind": "clustering"}, modes) == modes
    assert task_kinds.modes_for({"kind": "robustness"}, modes) == ["1st-gen"]
    assert task_kinds.modes_for(
        {"kind": "robustness", "modes": ["1st-gen", "prefixed"]}, ["plain", "prefixed"]
    ) == ["prefixed"]
    assert task_kinds.modes_for({"kind": "robustness"}, ["plain"]) == []


def test_errors_name_the_file_column_and_key(tiny):
    with pytest.raises(tasks.TaskError, match=r"missing_table\.parquet"):
        prompts_of("X", {"kind": "clustering", "dataset": "missing_table"}, data_dir=tiny)
    write_table(tiny, "no_label", [{"subset": "a", "instruction": "i", "text": "t"}])
    with pytest.raises(tasks.TaskError, match=r"column 'label' missing .*\(tasks\.X\)"):
        prompts_of("X", {"kind": "clustering", "dataset": "no_label"}, data_dir=tiny)
    with pytest.raises(tasks.TaskError, match="tasks.X.kind"):
        prompts_of("X", {"kind": "nonsense"}, data_dir=tiny)
    with pytest.raises(tasks.TaskError, match="tasks.X.instructions.a"):
        prompts_of(
            "X", {"kind": "clustering", "dataset": "two_view", "instructions": {"a": ""}}, data_dir=tiny
        )


def test_own_data_csv_and_jsonl(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("message,tag\nhello there,a\n,b\nbye now,b\n", encoding="utf-8")
    spec = {
        "kind": "own",
        "path": str(csv),
        "text_column": "message",
        "label_column": "tag",
        "instructions": {"mood": "How does the writer feel?", "topic": "What is it about?"},
        "k": 2,
    }
    table = task_kinds.task_table("Mine", spec)
    assert table[table["subset"] == "mood"].drop(columns="subset").to_dict("records") == [
        {"instruction": "How does the writer feel?", "text": "hello there", "label": "a"},
        {"instruction": "How does the writer feel?", "text": "bye now", "label": "b"},
    ]
    assert list(table["subset"]) == ["mood", "mood", "topic", "topic"]
    assert len(prompts_of("Mine", spec)) == 4
    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text('{"message": "one"}\n{"message": "two"}\n', encoding="utf-8")
    spec_jsonl = {"kind": "own", "path": str(jsonl), "text_column": "message", "instructions": {"a": "q?"}}
    assert [p["text"] for p in prompts_of("Mine", spec_jsonl)] == ["one", "two"]
    with pytest.raises(tasks.TaskError, match=r"\['nope'\]"):
        task_kinds.task_table("Mine", {**spec, "text_column": "nope"})
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"text\n\xff\xfe broken\n")
    with pytest.raises(tasks.TaskError, match="UTF-8"):
        task_kinds.task_table("Mine", {**spec, "path": str(bad), "text_column": "text", "label_column": None})


def test_example_own_data_file_in_config(root):
    from inbedder.config import load_config

    spec = load_config(root / "config.yaml")["tasks"]["OwnDataExample"]
    spec = {**spec, "path": str(root / spec["path"])}
    table = task_kinds.task_table("OwnDataExample", spec)
    assert set(table.groupby("subset").size()) == {40} and table["label"].nunique() == spec["k"]


# ----------------------------------------------------------------------------------------------
# mteb tasks


def test_offline_mteb_tasks_list_exactly_what_mteb_encodes(tiny):
    sts = {"kind": "mteb", "mteb_task": "STSBenchmark", "dataset": "sts", "instructions": {"default": "q?"}}
    table = task_kinds.task_table("MySTS", sts, data_dir=tiny)
    task = mteb_tasks.mteb_task("MySTS", sts, table=table)
    assert task.metadata.name == "STSBenchmark"
    assert task.metadata.dataset["path"] == "inbedder:data/prepared/sts.parquet"
    assert task.metadata.dataset["revision"] == tasks.table_revision(table)
    assert mteb_tasks.texts_of_loaded_task(task) == task_kinds.Mteb.texts(table)  # same order too
    assert len(prompts_of("MySTS", sts, data_dir=tiny)) == 24

    clu = {
        "kind": "mteb",
        "mteb_task": "TwentyNewsgroupsClustering",
        "dataset": "sets",
        "instructions": {"default": "t?"},
    }
    table = task_kinds.task_table("My20", clu, data_dir=tiny, limit=4)
    task = mteb_tasks.mteb_task("My20", clu, table=table, seed=7)
    assert task.seed == 7
    assert task.dataset["test"].num_rows == 2  # one row per cluster set
    assert [len(s) for s in task.dataset["test"]["sentences"]] == [4, 4]
    assert sorted(mteb_tasks.texts_of_loaded_task(task)) == sorted(task_kinds.Mteb.texts(table))

    b77_spec = {"kind": "mteb", "dataset": "sets", "instructions": {"default": "need?"}}
    b77_table = task_kinds.task_table("Banking77Clustering", b77_spec, data_dir=tiny)
    b77 = mteb_tasks.mteb_task("Banking77Clustering", b77_spec, table=b77_table)
    assert b77.metadata.main_score == "v_measure"
    with pytest.raises(tasks.TaskError, match="no task 'NoSuchTask'"):
        mteb_tasks.mteb_task_class("NoSuchTask")


def _toy_retrieval_class():
    """A reranking-style retrieval task held in memory: what mteb loads from the hub, without the hub."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval

    base = mteb_tasks.mteb_task_class("AskUbuntuDupQuestions")

    class ToyRerank(AbsTaskRetrieval):
        metadata = base.metadata.model_copy(
            update={"name": "ToyRerank", "dataset": {"path": "toy", "revision": "1"}}
        )

        def load_data(self, num_proc=None, *, timer=None, **kwargs):
            queries = Dataset.from_dict(
                {"id": ["q1", "q2", "q3"], "text": ["how to x", "how to y", "how to z"]}
            )
            corpus = Dataset.from_dict(
                {
                    "id": [f"d{i}" for i in range(6)],
                    "title": ["T0", "", "T2", "", "", ""],
                    "text": [f"doc {i}" for i in range(6)],
                }
            )
            top = {"q1": ["d0", "d1", "d2"], "q2": ["d2", "d3"], "q3": ["d4", "d5"]}
            qrels = {"q1": {"d0": 1}, "q2": {"d3": 1}, "q3": {"d5": 1}}
            self.dataset = {
                "default": {
                    "test": {"queries": queries, "corpus": corpus, "relevant_docs": qrels, "top_ranked": top}
                }
            }
            self.data_loaded = True

    return ToyRerank


def test_retrieval_texts_include_titles_and_limit_keeps_the_reached_corpus():
    task = _toy_retrieval_class()()
    task.load_data()
    texts = mteb_tasks.texts_of_loaded_task(task)
    assert "T0 doc 0" in texts and "doc 1" in texts and "how to z" in texts
    assert len(texts) == 9
    mteb_tasks.limit_retrieval(task.dataset, 1)
    split = task.dataset["default"]["test"]
    (kept,) = split["queries"]["id"]
    assert set(split["corpus"]["id"]) == set(split["top_ranked"][kept]) | set(split["relevant_docs"][kept])


# ----------------------------------------------------------------------------------------------
# the real offline tables (NLU++ from the mirror)


@pytest.fixture(scope="module")
def nlupp_dir(tmp_path_factory, mirror) -> Path:
    data = tmp_path_factory.mktemp("data")
    sources.fetch("nlupp", data / "raw" / "nlupp", mirror=mirror, offline=True)
    for name in ("nlupp_clustering", "nlupp_triplets", "nlupp_pairs"):
        datasets.prepare(name, data / "raw", data / "prepared" / f"{name}.parquet")
    return data


def test_nlupp_prompts_on_the_mirror(nlupp_dir):
    clustering = {"kind": "clustering", "dataset": "nlupp_clustering", "instructions": TWO_VIEWS}
    prompts = prompts_of("C", clustering, data_dir=nlupp_dir)
    texts = {p["text"] for p in prompts}
    assert len(prompts) == 2 * len(texts) and len(texts) > 500
    limited = task_kinds.task_table("C", clustering, data_dir=nlupp_dir, limit=50)
    assert limited.groupby("subset")["text"].nunique().to_dict() == {"action": 50, "object": 50}
    triplets = {"kind": "triplets", "dataset": "nlupp_triplets", "instructions": TWO_VIEWS}
    t = task_kinds.task_table("T", triplets, data_dir=nlupp_dir, limit=20)
    # the same anchors in both views: the mirrored triplets survive the limit together
    assert set(t[t.subset == "action"]["anchor"]) == set(t[t.subset == "object"]["anchor"])
    pairs_spec = {"kind": "pairs", "dataset": "nlupp_pairs", "instructions": TWO_VIEWS}
    pairs = task_kinds.task_table("P", pairs_spec, data_dir=nlupp_dir, limit=30)
    assert pairs.groupby("instruction").size().tolist() == [30, 30]
    assert pairs.groupby("subset")["instruction"].unique().map(list).to_dict() == {
        v: [i] for v, i in TWO_VIEWS.items()}


def test_a_changed_instruction_changes_only_the_task_tables_instruction(nlupp_dir):
    """The prepared tables hold no instruction: each task's comes from config, in its task table only."""
    prepared = nlupp_dir / "prepared"
    assert all("instruction" not in pd.read_parquet(p).columns for p in prepared.glob("*.parquet"))
    changed = dict(TWO_VIEWS, object="What is the product?")
    for kind, dataset in (("triplets", "nlupp_triplets"), ("clustering", "nlupp_clustering"),
                          ("pairs", "nlupp_pairs")):
        before = task_kinds.task_table("T", {"kind": kind, "dataset": dataset, "instructions": TWO_VIEWS},
                                       data_dir=nlupp_dir, limit=40)
        after = task_kinds.task_table("T", {"kind": kind, "dataset": dataset, "instructions": changed},
                                      data_dir=nlupp_dir, limit=40)
        assert set(after[after.subset == "object"]["instruction"]) == {"What is the product?"}
        assert set(after[after.subset == "action"]["instruction"]) == {TWO_VIEWS["action"]}
        pd.testing.assert_frame_equal(after.drop(columns="instruction"), before.drop(columns="instruction"))


def test_two_tasks_on_one_dataset_each_get_their_own_instructions(nlupp_dir):
    """Two tasks may read one prepared table under different instructions (each has its own task table)."""
    other = {"action": "What is the request?", "object": "Which product?"}
    a = task_kinds.task_table("A", {"kind": "clustering", "dataset": "nlupp_clustering", "instructions": TWO_VIEWS},
                              data_dir=nlupp_dir)
    b = task_kinds.task_table("B", {"kind": "clustering", "dataset": "nlupp_clustering", "instructions": other},
                              data_dir=nlupp_dir)
    assert a.groupby("subset")["instruction"].first().to_dict() == TWO_VIEWS
    assert b.groupby("subset")["instruction"].first().to_dict() == other
    pd.testing.assert_frame_equal(a.drop(columns="instruction"), b.drop(columns="instruction"))


def test_a_missing_instruction_is_named(nlupp_dir):
    spec = {"kind": "triplets", "dataset": "nlupp_triplets", "instructions": {"action": "?"}}
    with pytest.raises(tasks.TaskError, match=r"no instruction for subset\(s\) \['object'\] "
                                              r"\(set tasks\.T\.instructions\)"):
        task_kinds.task_table("T", spec, data_dir=nlupp_dir)
    with pytest.raises(tasks.TaskError, match=r"nlupp_pairs\.parquet \(tasks\.P\): no instruction for subset"):
        task_kinds.task_table("P", {"kind": "pairs", "dataset": "nlupp_pairs"}, data_dir=nlupp_dir)


# ----------------------------------------------------------------------------------------------
# the task-table file: decided once, read by encode and evaluate


def test_the_task_table_file_keeps_rows_kind_and_limit(tiny, tmp_path):
    spec = {"kind": "triplets", "dataset": "triplets", "instructions": TWO_VIEWS}
    path = tmp_path / "results" / "tasks" / "Trip.parquet"
    built = task_kinds.build_task_table("Trip", spec, path, data_dir=tiny, limit=1)
    back = tasks.read_task_table(path)
    pd.testing.assert_frame_equal(back, built)
    assert back.attrs == {"task": "Trip", "kind": "triplets", "limit": 1}
    assert list(back.columns) == list(task_kinds.Triplets.columns)
    assert set(back["instruction"]) == set(TWO_VIEWS.values())  # resolved from config, not the table's "x"
    # the encode job needs nothing but the file to list the prompts
    assert task_kinds.table_prompts(back) == prompts_of("Trip", spec, data_dir=tiny, limit=1)
    assert tasks.table_revision(back).endswith("-limit1")
    plain = tmp_path / "plain.parquet"
    built.to_parquet(plain)
    with pytest.raises(tasks.TaskError, match="not a task table"):
        tasks.read_task_table(plain)
    with pytest.raises(tasks.TaskError, match="task table not found"):
        tasks.read_task_table(tmp_path / "nope.parquet")


def test_pair_subsets_are_the_config_keys_naming_the_instruction(tiny):
    spec = {"kind": "pairs", "dataset": "pairs", "instructions": {"act": TWO_VIEWS["action"]}}
    table = task_kinds.task_table("Pairs", spec, data_dir=tiny)
    assert table[["subset", "instruction"]].values.tolist() == [["act", TWO_VIEWS["action"]], ["", TWO_VIEWS["object"]]]


def test_table_params_hold_what_changes_the_rows(root):
    from inbedder import rule_params
    from inbedder.config import load_config

    config = load_config(root / "config.yaml", root / "workflow" / "profiles" / "offline" / "run.yaml")
    params = rule_params.task_table_params("NLUPPTwoViewTriplets", config)
    spec = {k: v for k, v in config["tasks"]["NLUPPTwoViewTriplets"].items() if k != "report"}  # the page's alone
    assert params == {"spec": spec, "limit": config["limits"]["task_rows"]}
    with pytest.raises(KeyError, match="task 'Nope'"):
        rule_params.task_table_params("Nope", config)


def test_a_tasks_own_rows_size_its_table_only_and_the_smaller_limit_applies(root):
    from inbedder import rule_params
    from inbedder.config import load_config

    full = load_config(root / "config.yaml", root / "workflow" / "profiles" / "offline" / "run.yaml",
                       root / "workflow" / "profiles" / "offline-full" / "run.yaml")
    banking = rule_params.task_table_params("Banking77Clustering", full)
    assert banking["limit"] == full["tasks"]["Banking77Clustering"]["rows"] == 1540
    assert "rows" not in banking["spec"]  # the rows reach the table as its limit only
    assert rule_params.task_table_params("NLUPPTwoViewTriplets", full)["limit"] is None  # every row
    assert "rows" not in rule_params.evaluate_params("minilm-l6", "none", "Banking77Clustering", full)["spec"]
    smoke = load_config(root / "config.yaml", root / "workflow" / "profiles" / "offline" / "run.yaml",
                        overrides={"limits": {"task_rows": 24}, "tasks": {"Banking77Clustering": {"rows": 1540}}})
    assert rule_params.task_table_params("Banking77Clustering", smoke)["limit"] == 24
