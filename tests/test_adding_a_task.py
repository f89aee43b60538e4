"""Adding a task is one record plus data (docs/adding-a-task.md): a record added to a config reaches the task
table, the score rows and the report's tables, and the workflow plans its jobs, with no code changed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from inbedder import evaluate, report, rule_params, task_kinds
from inbedder.config import load_config
from inbedder.fidelity_rows import method_rows
from inbedder.report.render import tables_part
from inbedder.tasks import read_task_table

ROOT = Path(__file__).resolve().parents[1]
NAME = "TinyTopics"
LABELS = ("card", "loan", "travel")
INSTRUCTION = "What is the customer's message about?"


def record(path: Path) -> dict:
    """The new task's record, as a user writes it in a config file."""
    return {
        "kind": "own",
        "path": str(path),
        "text_column": "text",
        "label_column": "topic",
        "instructions": {"topic": INSTRUCTION},
        "k": len(LABELS),
        "report": {"column": "Tiny", "part": "generic", "suites": ["offline"],
                   "construction": "twelve customer messages on three topics, clustered under one instruction"},
    }


@pytest.fixture
def added(tmp_path: Path) -> tuple[Path, dict]:
    """The offline profile with the new record layered over it from its own config file, as a user adds it."""
    data = tmp_path / "tiny.csv"
    rows = [f"message {i} about {label}" for i in range(4) for label in LABELS]
    data.write_text("text,topic\n" + "".join(f"{t},{t.rsplit(' ', 1)[1]}\n" for t in rows), encoding="utf-8")
    extra = tmp_path / "task.yaml"
    extra.write_text(yaml.safe_dump({"run": "add-task-check", "tasks": {NAME: record(data)},
                                     "select": {"models": ["minilm-l6"], "recipes": ["none"], "tasks": [NAME]}}),
                     encoding="utf-8")
    return extra, load_config(ROOT / "config.yaml", ROOT / "workflow" / "profiles" / "offline" / "run.yaml", extra)


def embeddings(table, mode: str, layer: int) -> dict:
    """A perfect embedder: each text's vector points at its label (the same under every mode and layer)."""
    return {(t, i): np.eye(len(LABELS))[LABELS.index(lab)] + 1e-3 * (k % 3)
            for k, (t, i, lab) in enumerate(zip(table["text"], table["instruction"], table["label"], strict=True))}


def test_a_new_task_record_reaches_the_table_the_scores_and_the_report(added, tmp_path):
    _, config = added
    # the task table: the rule's params, then the task_table rule's entry point
    params = rule_params.task_table_params(NAME, config)
    assert "report" not in params["spec"]  # the record's report part changes no table
    task_kinds.build_task_table(NAME, params["spec"], tmp_path / "tasks" / f"{NAME}.parquet",
                                limit=params["limit"])
    table = read_task_table(tmp_path / "tasks" / f"{NAME}.parquet")
    assert table.attrs == {"task": NAME, "kind": "own", "limit": 150}
    assert set(table["instruction"]) == {INSTRUCTION} and len(table) == 12
    # the score rows: the evaluate job's entry point on the table, then collect_scores
    ev = rule_params.evaluate_params("minilm-l6", "none", NAME, config)
    run = evaluate.Run(model="minilm-l6", recipe="none", task=NAME, spec=ev["spec"], modes=tuple(ev["modes"]),
                       layers=tuple(ev["layers"]), seeds=tuple(ev["seeds"]))
    job_csv = tmp_path / "scores" / "minilm-l6-none" / f"{NAME}.csv"
    evaluate.evaluate_task(run, table, lambda mode, layer: embeddings(table, mode, layer), job_csv,
                           job_csv.with_suffix(""))
    scores = evaluate.collect_scores([job_csv], {}, tmp_path / "scores.csv", tmp_path / "skipped.csv")
    assert set(scores["task"]) == {NAME}
    assert scores.loc[scores["metric"] == "v_measure", "value"].tolist() == pytest.approx([1.0] * 3 * 2)
    # the report: the offline suite gains the column, its generic table the number, the mapping the record
    data = report.read_page_data(report.ReportInputs(scores=tmp_path / "scores.csv",
                                                     skipped=tmp_path / "skipped.csv"), config)
    suite = data.books["offline"].suite
    assert [c.label for c in suite.generic][-1] == "Tiny" and suite.generic[-1].task == NAME
    assert ("Tiny", "—", NAME, record(Path())["report"]["construction"]) in report.analog_mapping(suite)
    generic = tables_part(data, method_rows(config), config)["offline_generic"]
    assert generic.columns[-2:] == ["Tiny", "Avg"]
    row = next(r for r in generic.rows if r.label == "minilm-l6 (plain)")
    assert row.cells[generic.columns.index("Tiny")].ours.value == pytest.approx(100.0)
    assert any(f.startswith(f"Tiny ← {NAME}: v_measure") for f in generic.footnotes)


def test_a_new_task_record_is_planned_by_the_workflow(added):
    extra, _ = added
    snakemake = str(Path(sys.executable).with_name("snakemake"))
    result = subprocess.run(
        [snakemake, "-n", "--profile", "workflow/profiles/offline", "--configfile", "config.yaml",
         "workflow/profiles/offline/run.yaml", str(extra), "--forceall"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for path in (f"results/add-task-check/tasks/{NAME}.parquet", f"results/add-task-check/scores/minilm-l6-none/{NAME}.csv",
                 "results/add-task-check/report/index.html"):
        assert path in result.stdout
