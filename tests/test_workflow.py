"""The smoke profile end to end, and resume after `kill -9` at training, encoding and evaluation.

These run the real workflow (real SmolLM2 and MiniLM weights, mirrored data) on tiny slices. The run end
to end is the session's (conftest.smoke_run, shared with tests/test_download.py); the resume test
reruns the fine-tuning chain in a copy of it.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from workspace import SMOKE_CONFIGS, SmokeRun, copy_workspace

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SCORE_COLUMNS = ["model", "recipe", "mode", "layer", "task", "subset", "metric", "value", "seed", "train_seed", "n"]
SMOKE_TASKS = {"NLUPPTwoViewTriplets", "NLUPPTwoViewClustering", "NLUPPInstructedPairs", "STSBenchmark"}

# The first test that asks for the shared smoke run makes it, within its own time limit.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]
FINE_TUNED = "smollm2-135m-inbedder"


def command(run: str, *extra: str) -> list[str]:
    """The smoke profile as `make smoke` runs it (the mirror comes from $INBEDDER_DATA_MIRROR)."""
    return [SNAKEMAKE, "--profile", "workflow/profiles/smoke", "--config", f"run={run}", *extra]


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


def run_to_end(smoke: SmokeRun, work: Path, *targets: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """The smoke profile in `work` (the shared run's folder or a copy of it) with its environment, to
    `targets` (default: the whole run, report included)."""
    targets_first = [SNAKEMAKE, *targets, *command(smoke.run)[1:]]  # not after --config: it takes the rest
    result = subprocess.run(
        targets_first, check=False, cwd=work, env=smoke.env, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def unlock(smoke: SmokeRun, work: Path) -> None:
    """What a user does after a `kill -9`: Snakemake's lock files outlive the killed process."""
    subprocess.run(command(smoke.run, "--unlock"), check=True, cwd=work, env=smoke.env, capture_output=True,
                   timeout=300)


def run_until(smoke: SmokeRun, work: Path, condition: Callable[[], bool], timeout: int = 600) -> str:
    """Start the workflow in `work` and `kill -9` its whole process group as soon as `condition` holds."""
    unlock(smoke, work)
    log = work / "results" / f".{smoke.run}.killed.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command(smoke.run), cwd=work, env=smoke.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
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
def uninterrupted(smoke_run: SmokeRun) -> Path:
    """The results folder of the session's smoke run."""
    return smoke_run.results


def test_smoke_run_scores_every_task_and_renders_the_report(uninterrupted: Path):
    scores = read_scores(uninterrupted)
    assert list(pd.read_csv(uninterrupted / "scores.csv").columns) == SCORE_COLUMNS + ["ci_low", "ci_high"]
    with_ci = scores.dropna(subset=["ci_low", "ci_high"])
    assert len(with_ci) >= 0.9 * len(scores), "most scores carry a bootstrap CI"
    # every point estimate inside its own interval, exactly (no tolerance)
    assert ((with_ci["ci_low"] <= with_ci["value"]) & (with_ci["value"] <= with_ci["ci_high"])).all()
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


def test_a_finished_run_does_nothing_on_rerun(smoke_run: SmokeRun):
    result = run_to_end(smoke_run, smoke_run.workspace)
    assert jobs_run(result.stdout + result.stderr) == []


def without_fine_tuning(smoke: SmokeRun, dest: Path) -> Path:
    """A copy of the shared run's folder without what its fine-tuning made (the training tables, the
    fine-tuned model and its caches, scores, logs and benchmarks): the run continued there fine-tunes,
    encodes and scores with that model again; the untrained models' caches and scores are kept."""
    results = Path("results") / smoke.run
    made = [results / "train", results / "logs" / "data" / "training_table", results / "logs" / "train",
            results / "benchmarks" / "train", results / "models" / FINE_TUNED]
    made += [results / stage / FINE_TUNED for stage in ("cache", "scores", "logs/encode", "logs/evaluate",
                                                        "benchmarks/encode", "benchmarks/evaluate")]
    assert all((smoke.workspace / p).exists() for p in made), "the shared run is not laid out as expected"
    return copy_workspace(smoke.workspace, dest, leave_out=made)


# Three interrupted runs and one run to the end: the budget is their own timeouts (3 x 600 s + 900 s),
# not pytest's default per test, which a busy machine exceeds without anything being wrong (and the
# shared smoke run when this test is the first to ask for it).
@pytest.mark.timeout(3600)
def test_kill_9_at_training_encoding_and_evaluation_then_rerun_gives_the_same_scores(
    smoke_run: SmokeRun, uninterrupted: Path, tmp_path: Path
):
    work = without_fine_tuning(smoke_run, tmp_path / "work")
    results = work / "results" / smoke_run.run
    trained = results / "models" / FINE_TUNED

    # 1. Training: killed once its first checkpoint is complete (the marker is written after the save).
    run_until(smoke_run, work,
              lambda: any((trained / "checkpoints").glob("checkpoint-*/checkpoint_complete.json")))
    assert not (trained / "train_summary.json").exists()
    done_before = {p.relative_to(results) for p in (results / "train").glob("*.jsonl")}

    # 2. Encoding: killed while a cache of the fine-tuned model is being written (its log exists, its
    # meta.json not yet). That job needs the finished model, so the training of this run has resumed and
    # ended by then (the untrained models' caches are the copied ones).
    def trained_model_encoding() -> bool:
        logs = list((results / "logs" / "encode" / trained.name).glob("*.log"))
        return any(not (results / "cache" / trained.name / p.stem / "meta.json").exists() for p in logs)

    resumed = run_until(smoke_run, work, trained_model_encoding)
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
    # untrained models are the copied ones).
    finished_caches = {p.parent for p in (results / "cache").glob("*/*/meta.json")}
    scored_before = set((results / "scores" / trained.name).glob("*.csv"))
    run_until(smoke_run, work,
              lambda: bool(set((results / "scores" / trained.name).glob("*.csv")) - scored_before))

    # Rerun to the scores: finished caches are not recomputed and the scores equal the uninterrupted run's
    # (the fine-tuned model's rows computed again here, the untrained models' copied). The report of
    # those scores is the shared run's to check (the test above).
    unlock(smoke_run, work)
    final = run_to_end(smoke_run, work, f"results/{smoke_run.run}/scores.csv")
    encoded_again = {
        work / re.search(r"^\s*output: (\S+)/meta\.json", block, flags=re.MULTILINE).group(1)
        for rule, block in job_blocks(final.stdout + final.stderr)
        if rule == "encode"
    }
    assert not encoded_again & finished_caches
    pd.testing.assert_frame_equal(
        read_scores(results), read_scores(uninterrupted), check_exact=False, rtol=1e-6
    )


def planned_jobs(smoke: SmokeRun, change: dict, tmp_path: Path) -> set[tuple[str, str]]:
    """(rule, wildcards) of the jobs a dry run in the shared run's folder plans after a config change."""
    import yaml

    extra = tmp_path / "change.yaml"
    extra.write_text(yaml.safe_dump(change))
    configfiles = [*SMOKE_CONFIGS, str(extra)]
    result = subprocess.run(
        command(smoke.run, "-n", "--configfile", *configfiles),
        check=False,
        cwd=smoke.workspace,
        env=smoke.env,
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


def test_a_changed_instruction_reruns_that_tasks_jobs_only(smoke_run: SmokeRun, tmp_path: Path):
    task = "NLUPPTwoViewTriplets"
    change = {"tasks": {task: {"instructions": {"action": "Which operation does the customer ask for?"}}}}
    jobs = planned_jobs(smoke_run, change, tmp_path)
    pairs = [("smollm2-135m", "inbedder"), ("smollm2-135m", "none"), ("minilm-l6", "none")]
    expected = {("task_table", f"task={task}")}
    for rule in ("encode", "evaluate_task"):
        expected |= {(rule, f"model={m}, recipe={r}, task={task}") for m, r in pairs}
    expected |= {("collect_scores", ""), ("render_report", ""), ("all", "")}
    assert jobs == expected


def test_a_changed_step_count_reruns_that_models_chain_only(smoke_run: SmokeRun, tmp_path: Path):
    jobs = planned_jobs(smoke_run, {"models": {"smollm2-135m": {"train": {"max_steps": 5}}}}, tmp_path)
    expected = {("train_model", "model=smollm2-135m, recipe=inbedder")}
    for rule in ("encode", "evaluate_task"):
        expected |= {(rule, f"model=smollm2-135m, recipe=inbedder, task={t}") for t in SMOKE_TASKS}
    expected |= {("collect_scores", ""), ("render_report", ""), ("all", "")}
    assert jobs == expected
