"""Rule lr_sweep: short fine-tunes of one (model, recipe), one per rate of train.lr_sweep -> sweep table."""

import shutil
from pathlib import Path

import torch

from inbedder.rule_script import rule_script
from inbedder.train import train_model
from inbedder.train_settings import job_from_params, on_this_machine
from inbedder.train_sweep import SweepRun, sweep_job, sweep_table, write_sweep_table

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
w = snakemake.wildcards

with rule_script(snakemake.log[0], "lr_sweep", f"learning-rate sweep of {w.model}-{w.recipe}") as log:
    torch.set_num_threads(max(1, snakemake.threads))
    params = on_this_machine(snakemake.params.job)
    job = job_from_params(params)
    sweep = snakemake.params.sweep
    table = Path(snakemake.output.table)
    results = []
    for lr in sweep["rates"]:
        run = SweepRun(job.model, job.recipe, float(lr), int(sweep["steps"]))
        out = table.parent / table.stem / f"lr-{run.lr:g}"  # its checkpoints let a killed sweep resume
        summary = train_model(sweep_job(job, run), Path(snakemake.input.base).parent, snakemake.input.train,
                              snakemake.input.heldout, out)
        results.append({"model": run.model, "recipe": run.recipe, "lr": run.lr, "steps": summary["steps"],
                        "heldout_token_f1": summary["heldout_token_f1_after"],
                        "heldout_loss": summary["heldout_loss_after"]})
        log.info("%s: %d steps, held-out F1 %.4f, loss %s", run.name, summary["steps"],
                 summary["heldout_token_f1_after"], summary["heldout_loss_after"])
    rows = sweep_table(results, sweep["rule"])
    write_sweep_table(table, rows)
    shutil.rmtree(table.parent / table.stem)  # the short runs' weights; the table holds what they showed
    log.info("%s-%s: learning rate %g chosen (%s)", job.model, job.recipe,
             next(r["lr"] for r in rows if r["chosen"]), sweep["rule"])
