"""The smoke profile end to end, and resume after `kill -9` at training, encoding and evaluation.

These run the real workflow (real SmolLM2 and MiniLM weights, mirrored data) on tiny slices.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
MIRROR = Path(os.environ.get("INBEDDER_DATA_MIRROR", ROOT.parent / "shared" / "data")).resolve()
SCORE_COLUMNS = ["model", "recipe", "mode", "layer", "task", "subset", "metric", "value", "seed", "train_seed", "n"]
SMOKE_TASKS = {"NLUPPTwoViewTriplets", "NLUPPTwoViewClustering", "NLUPPInstructedPairs", "STSBenchmark"}

pytestmark = pytest.mark.slow


def command(run: str, *extra: str) -> list[str]:
    return [
        SNAKEMAKE,
        "--profile",
        "workflow/profiles/smoke",
        "--config",
        f"run={run}",
        f"data_mirror={MIRROR}",
        *extra,
    ]


def fresh(run: str) -> Path:
    results = ROOT / "results" / run
    shutil.rmtree(results, ignore_errors=True)
    return results


def jobs_run(output: str) -> list[str]:
    """Rule names of the jobs a Snakemake invocation started, from its log."""
    return re.findall(r"^\s*(?:local)?rule (\w+):", output, flags=re.MULTILINE)


def job_blocks(output: str) -> list[tuple[str, str]]:
    """(rule, the lines Snakemake printed for that job) of every job in a log."""
    blocks = []
    for block in re.split(r"^\s*(?=(?:local)?rule \w+:)", output, flags=re.MULTILINE):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if head:
            blocks.append((head.group(1), block))
    return blocks


def run_to_end(run: str, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command(run), check=False, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def unlock(run: str) -> None:
    """What a user does after a `kill -9`: Snakemake's lock files outlive the killed process."""
    subprocess.run(command(run, "--unlock"), check=True, cwd=ROOT, capture_output=True, timeout=300)


def run_until(run: str, condition: Callable[[], bool], timeout: int = 600) -> str:
    """Start the workflow and `kill -9` its whole process group as soon as `condition` holds."""
    unlock(run)
    log = ROOT / "results" / f".{run}.killed.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command(run), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        try:
            while not condition():
                if proc.poll() is not None:
                    pytest.fail(
                        f"the run ended (rc {proc.returncode}) before the kill point:\n{log.read_text()[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail("kill point not reached in time")
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    log.unlink()
    return text


def read_scores(results: Path) -> pd.DataFrame:
    scores = pd.read_csv(results / "scores.csv")
    return scores.sort_values(SCORE_COLUMNS[:7] + ["seed"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def uninterrupted() -> Path:
    results = fresh("smoke-full")
    run_to_end("smoke-full")
    return results


def test_smoke_run_scores_every_task_and_renders_the_report(uninterrupted: Path):
    scores = read_scores(uninterrupted)
    assert list(pd.read_csv(uninterrupted / "scores.csv").columns) == SCORE_COLUMNS + ["ci_low", "ci_high"]
    with_ci = scores.dropna(subset=["ci_low", "ci_high"])
    assert len(with_ci) >= 0.9 * len(scores), "most scores carry a bootstrap CI"
    assert (with_ci["ci_low"] <= with_ci["value"] + 1e-9).all() and (with_ci["value"] <= with_ci["ci_high"] + 1e-9).all()
    assert SMOKE_TASKS <= set(scores["task"])
    assert scores["value"].map(math.isfinite).all()
    assert {("smollm2-135m", "inbedder"), ("smollm2-135m", "none"), ("minilm-l6", "none")} <= set(
        zip(scores["model"], scores["recipe"])
    )
    clustering = scores[(scores["task"] == "NLUPPTwoViewClustering") & (scores["metric"] == "v_measure")]
    assert set(clustering["seed"].dropna().astype(int)) == {0, 1, 2}
    html = (uninterrupted / "report" / "index.html").read_text(encoding="utf-8")
    for claim in ("Claim 1", "Claim 2", "Claim 3", "Claim 4"):
        assert claim in html
    assert "58.80" in html


def test_a_finished_run_does_nothing_on_rerun(uninterrupted: Path):
    result = run_to_end("smoke-full")
    assert jobs_run(result.stdout + result.stderr) == []


# Three interrupted runs and one run to the end: the budget is their own timeouts (3 x 600 s + 900 s),
# not pytest's default per test, which a busy machine exceeds without anything being wrong.
@pytest.mark.timeout(2700)
def test_kill_9_at_training_encoding_and_evaluation_then_rerun_gives_the_same_scores(uninterrupted: Path):
    run = "smoke-resume"
    results = fresh(run)
    trained = results / "models" / "smollm2-135m-inbedder"

    # 1. Training: killed once its first checkpoint is complete (the marker is written after the save).
    run_until(run, lambda: any((trained / "checkpoints").glob("checkpoint-*/checkpoint_complete.json")))
    assert not (trained / "train_summary.json").exists()
    done_before = {p.relative_to(results) for p in (results / "train").glob("*.jsonl")}

    # 2. Encoding: killed while a cache of the fine-tuned model is being written (its log exists, its
    # meta.json not yet). That job needs the finished model, so the training of this run has resumed and
    # ended by then; jobs of the untrained models may run before it in any order.
    def trained_model_encoding() -> bool:
        logs = list((results / "logs" / "encode" / trained.name).glob("*.log"))
        return any(not (results / "cache" / trained.name / p.stem / "meta.json").exists() for p in logs)

    resumed = run_until(run, trained_model_encoding)
    assert "training_table" not in jobs_run(resumed), "finished training tables were rebuilt"
    assert done_before and all((results / p).exists() for p in done_before)
    train_log = (results / "logs" / "train" / "smollm2-135m-inbedder.log").read_text()
    assert re.search(r"resuming smollm2-135m-inbedder from .*checkpoint-2$", train_log, flags=re.MULTILINE), (
        train_log[-2000:]
    )
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["steps_this_run"] == 2
    assert summary["fresh_start_reason"] is None and summary["checkpoints_rejected"] == []

    # 3. Evaluation: killed once the first score table of the fine-tuned model exists (tables of the
    # untrained models may exist from the runs before).
    finished_caches = {p.parent for p in (results / "cache").glob("*/*/meta.json")}
    scored_before = set((results / "scores" / trained.name).glob("*.csv"))
    run_until(run, lambda: bool(set((results / "scores" / trained.name).glob("*.csv")) - scored_before))

    # Rerun to the end: finished caches are not recomputed and the scores equal the uninterrupted run's.
    unlock(run)
    final = run_to_end(run)
    encoded_again = {
        ROOT / re.search(r"^\s*output: (\S+)/meta\.json", block, flags=re.MULTILINE).group(1)
        for rule, block in job_blocks(final.stdout + final.stderr)
        if rule == "encode"
    }
    assert not encoded_again & finished_caches
    pd.testing.assert_frame_equal(
        read_scores(results), read_scores(uninterrupted), check_exact=False, rtol=1e-6
    )


def planned_jobs(run: str, change: dict, tmp_path: Path) -> set[tuple[str, str]]:
    """(rule, wildcards) of the jobs a dry run plans after a config change."""
    import yaml

    extra = tmp_path / "change.yaml"
    extra.write_text(yaml.safe_dump(change))
    configfiles = [
        "config.yaml",
        "workflow/profiles/offline/run.yaml",
        "workflow/profiles/smoke/run.yaml",
        str(extra),
    ]
    result = subprocess.run(
        command(run, "-n", "--configfile", *configfiles),
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    jobs = set()
    for rule, block in job_blocks(result.stdout + result.stderr):
        wildcards = re.search(r"^\s*wildcards: (.*)$", block, flags=re.MULTILINE)
        jobs.add((rule, wildcards.group(1).strip() if wildcards else ""))
    return jobs


def test_a_changed_instruction_reruns_that_tasks_jobs_only(uninterrupted: Path, tmp_path: Path):
    task = "NLUPPTwoViewTriplets"
    change = {"tasks": {task: {"instructions": {"action": "Which operation does the customer ask for?"}}}}
    jobs = planned_jobs("smoke-full", change, tmp_path)
    pairs = [("smollm2-135m", "inbedder"), ("smollm2-135m", "none"), ("minilm-l6", "none")]
    expected = {("task_table", f"task={task}")}
    for rule in ("encode", "evaluate_task"):
        expected |= {(rule, f"model={m}, recipe={r}, task={task}") for m, r in pairs}
    expected |= {("collect_scores", ""), ("render_report", ""), ("all", "")}
    assert jobs == expected


def test_a_changed_step_count_reruns_that_models_chain_only(uninterrupted: Path, tmp_path: Path):
    jobs = planned_jobs("smoke-full", {"models": {"smollm2-135m": {"train": {"max_steps": 5}}}}, tmp_path)
    expected = {("train_model", "model=smollm2-135m, recipe=inbedder")}
    for rule in ("encode", "evaluate_task"):
        expected |= {(rule, f"model=smollm2-135m, recipe=inbedder, task={t}") for t in SMOKE_TASKS}
    expected |= {("collect_scores", ""), ("render_report", ""), ("all", "")}
    assert jobs == expected
