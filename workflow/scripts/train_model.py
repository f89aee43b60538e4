"""Rule train_model: fine-tune one (model, recipe) into results/<run>/models/<model>-<recipe>/."""

from pathlib import Path

import torch

from inbedder.rule_script import rule_script
from inbedder.train import train_model
from inbedder.train_settings import job_from_params, on_this_machine
from inbedder.train_sweep import read_chosen_lr

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive
w = snakemake.wildcards

with rule_script(snakemake.log[0], "train_model", f"training {w.model}-{w.recipe}") as log:
    torch.set_num_threads(max(1, snakemake.threads))
    params = on_this_machine(snakemake.params.job)
    sweep = list(getattr(snakemake.input, "lr_sweep", []))
    if sweep:  # train.lr_sweep: the rate its sweep chose replaces learning_rate
        params["train"] = {**params["train"], "learning_rate": read_chosen_lr(sweep[0])}
        log.info("learning rate %g chosen by %s", params["train"]["learning_rate"], sweep[0])
    job = job_from_params(params)
    summary = train_model(
        job,
        Path(snakemake.input.base).parent,
        snakemake.input.train,
        snakemake.input.heldout,
        Path(snakemake.output[0]).parent,
    )
    log.info(
        "%s-%s: %d steps (kept step %s), %.2f s/step, loss %.3f -> %.3f, held-out F1 %.3f -> %.3f",
        job.model,
        job.recipe,
        summary["steps"],
        summary["kept_step"],
        summary["seconds_per_step"] or float("nan"),
        summary["first_loss"],
        summary["last_loss"],
        summary["heldout_token_f1_before"],
        summary["heldout_token_f1_after"],
    )
