"""The smoke profile on a real (one-node) Slurm cluster through workflow/profiles/slurm.

Brings up munged, slurmctld and slurmd from Debian's packages (tests/slurm_cluster.py), runs the smoke
settings for the fine-tuned model alone (SmolLM2 + InBedder on the four smoke tasks: every rule of the
smoke DAG, 25 jobs, the untrained models left out) with every job a Slurm job, `scancel`s the training
job once it has a checkpoint, lets the profile's retry resubmit it (it resumes from the checkpoint), and
checks the scores equal those of the same settings run locally. The cluster is torn down whatever
happens. Run by `make test-slurm`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from slurm_cluster import single_node_cluster
from workspace import SMOKE_CONFIGS, clean_env, fresh_clone, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(3600), pytest.mark.enable_socket]  # free ports for slurm.conf

SCORE_KEYS = ["model", "recipe", "mode", "layer", "task", "subset", "metric", "seed"]
# The smoke settings narrowed to the model that is fine-tuned (what the scancel needs): each Slurm job
# starts its own Snakemake and the model jobs queue for the one GPU slot, so every job counts.
FINE_TUNED_ONLY = {"select": {"models": ["smollm2-135m"], "recipes": ["inbedder"]}}
# What workflow/profiles/slurm assumes a real cluster provides, scaled to this node (2 CPUs, no
# accounting database): small memory and one core per job, squeue status queries, quick first check.
NODE_OVERRIDES = [
    "--default-resources", "slurm_partition=gpu", "runtime=60", "mem_mb=2500", "cpus_per_task=1",
    "--set-resources", "train_model:mem_mb=4000", "train_model:runtime=60",
    "fetch_source:slurm_partition=cpu", "fetch_source:mem_mb=1000",
    "prepare_dataset:slurm_partition=cpu", "prepare_dataset:mem_mb=2000",
    "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5",
]


def read_scores(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).sort_values(SCORE_KEYS).reset_index(drop=True)


def squeue(env: dict[str, str], *args: str) -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", *args], env=env, capture_output=True, text=True, check=False).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


def test_smoke_profile_on_slurm_equals_the_local_run_and_resumes_after_scancel(mirror, tmp_path):
    env = clean_env(INBEDDER_DATA_MIRROR=str(mirror))
    narrowed = tmp_path / "fine-tuned-only.yaml"
    narrowed.write_text(yaml.safe_dump(FINE_TUNED_ONLY), encoding="utf-8")
    configfiles = [*SMOKE_CONFIGS, str(narrowed)]

    local = fresh_clone(tmp_path / "local")
    result = snakemake(local, "--profile", "workflow/profiles/smoke", "--configfile", *configfiles,
                       "--config", "run=slurm-reference", env=env, timeout=2400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]

    clone = fresh_clone(tmp_path / "cluster")
    run = f"slurm-smoke-{os.getpid()}"
    results = clone / "results" / run
    trained = results / "models" / "smollm2-135m-inbedder"
    command = [
        str(clone / ".venv" / "bin" / "snakemake"), "--profile", "workflow/profiles/slurm",
        "--configfile", *configfiles, *NODE_OVERRIDES, "--config", f"run={run}",
    ]
    with single_node_cluster(tmp_path / "slurm") as cluster_env:
        job_env = {**cluster_env, **env, "PYTHONPATH": str(clone / "src")}
        log = tmp_path / "slurm-run.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(command, cwd=clone, env=job_env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            # scancel the training job once a checkpoint is complete (its marker is written after the
            # save) and before the training has finished.
            cancelled = None
            deadline = time.monotonic() + 1500
            while cancelled is None:
                assert proc.poll() is None, f"the run ended before training checkpointed:\n{log.read_text()[-4000:]}"
                assert time.monotonic() < deadline, "training never checkpointed"
                if any((trained / "checkpoints").glob("checkpoint-*/checkpoint_complete.json")):
                    running = [j for j, c in squeue(job_env, "-t", "R", "-o", "%i|%k") if c.startswith("rule_train_model")]
                    assert not (trained / "train_summary.json").exists(), "training finished before the scancel"
                    if running:
                        subprocess.run(["scancel", running[0]], env=job_env, check=True)
                        cancelled = running[0]
                time.sleep(0.2)
            rc = proc.wait(timeout=1800)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)
        text = log.read_text()
        assert rc == 0, text[-4000:]
        # Every job went through sbatch: none ran on the submit host but the `all` target.
        submitted = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", text)
        assert len(submitted) >= 20, text[-3000:]
        assert cancelled in submitted
        assert re.search(rf"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED'", text), text[-3000:]

    train_log = (results / "logs" / "train" / "smollm2-135m-inbedder.log").read_text()
    assert re.search(r"resuming smollm2-135m-inbedder from .*checkpoint-\d+$", train_log, flags=re.MULTILINE), (
        train_log[-2000:]
    )
    fetch_logs = [(clone / "data" / "logs" / "data" / "fetch_source" / f"{s}.log").read_text()
                  for s in ("c3", "nlupp", "stsb")]
    assert all(f"origin mirror {mirror}" in t for t in fetch_logs)
    pd.testing.assert_frame_equal(
        read_scores(results / "scores.csv"),
        read_scores(local / "results" / "slurm-reference" / "scores.csv"),
        check_exact=False, rtol=1e-6,
    )
