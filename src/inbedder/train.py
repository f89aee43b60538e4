"""Fine-tuning with the paper's objectives, through transformers' Trainer.

A fine-tune's settings and job are in `inbedder.train_settings`; the examples and their labels per model
kind in `inbedder.train_data`; which checkpoint a rerun resumes from, in `inbedder.checkpoints`; the
Trainer callbacks in `inbedder.train_callbacks`; the loss log and figures in `inbedder.train_curves`.
Checkpoints go to `<out>/checkpoints/` every `save_steps`; a rerun resumes from the newest complete one
when the run key (settings, base weights, training data) is unchanged, and when it starts over although
checkpoints existed, the log and `train_summary.json` (`fresh_start_reason`, `checkpoints_rejected`) say
why. The final model is moved into `<out>` from a temporary folder, then `train_log.csv`, `loss.png`,
`heldout_answers.jsonl`, `heldout_f1.png`, `fingerprint.json`, and last `train_summary.json` (the
completion marker) are written.

The held-out check, its curve over training and the plateau stop (`train.heldout_every`,
`train.stop_when_flat`) are in `inbedder.heldout`; the model saved after a stop is the model at that
stopping step, which gets no checkpoint, so a rerun after a kill replays up to it and stops there again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from inbedder.checkpoints import RUN_SETTINGS, CheckpointScan, prepare_checkpoints, scan_checkpoints
from inbedder.files import read_jsonl, sha256_file, sha256_json, write_json, write_jsonl
from inbedder.heldout import (
    BEFORE_FILE,
    CURVE,
    HeldoutCurve,
    curve_callback,
    curve_until,
    heldout_f1,
    read_curve,
    stop_reason,
    training_untouched,
    write_curve,
)
from inbedder.loading import load_lm
from inbedder.model_kinds import kind_of
from inbedder.models import check_kind, make_readable, read_fingerprint, write_fingerprint
from inbedder.train_callbacks import no_checkpoint_at_the_end, progress_callbacks, stop_at
from inbedder.train_curves import loss_rows, plot_heldout, plot_loss, write_log_csv
from inbedder.train_data import Collator, EncodedDataset, encode_example, eos_id, read_rows
from inbedder.train_loop import TRAIN_LOOP, StepMeter, make_trainer
from inbedder.train_settings import TrainJob, TrainSettings
from inbedder.vocabulary import TRAINABLE_KINDS, UNTRAINED_RECIPES

CHECKPOINTS = "checkpoints"
SUMMARY = "train_summary.json"
log = logging.getLogger(__name__)


def _mixed_precision(device: str, dtype: str) -> bool:
    """Whether to train with bf16 autocast: asked for (dtype) and supported on the device."""
    import torch

    if dtype != "bfloat16":
        return False
    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return True  # CPU autocast supports bfloat16


def training_arguments(settings: TrainSettings, output_dir: Path, *, bf16: bool, device: str):
    """transformers' TrainingArguments of a fine-tune: its settings, length-grouped batches, no reporting."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        learning_rate=settings.learning_rate,
        num_train_epochs=float(settings.epochs),
        max_steps=int(settings.max_steps) if settings.max_steps else -1,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=float(settings.warmup_ratio),
        weight_decay=settings.weight_decay,
        logging_steps=1,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        seed=settings.seed,
        data_seed=settings.seed,
        bf16=bf16,
        use_cpu=not device.startswith("cuda"),
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length",
    )


def check_trainable(model: str, spec: Mapping[str, Any]) -> str:
    """The model's kind, or a ValueError naming it when that kind is never fine-tuned."""
    kind = check_kind(model, spec)
    if not kind_of(kind).trainable:
        raise ValueError(
            f"model {model!r} has kind {kind!r}, which is not trained; trainable kinds: "
            f"{', '.join(TRAINABLE_KINDS)}"
        )
    return kind


# ----------------------------------------------------------------------------------------------
# the phases of one fine-tune


@dataclass
class _Run:
    """What every phase of one fine-tune reads: the job, its data, its folders, how it started."""

    job: TrainJob
    settings: TrainSettings
    out: Path
    rows: list[dict[str, str]]
    heldout: list[dict[str, str]]
    base_fp: dict[str, Any]
    bf16: bool
    fresh_start_reason: str | None

    @property
    def name(self) -> str:
        return f"{self.job.model}-{self.job.recipe}"

    @property
    def ckpt_dir(self) -> Path:
        return self.out / CHECKPOINTS

    @property
    def autocast(self) -> str | None:
        return "bfloat16" if self.bf16 else None


@dataclass
class _Trained:
    """What training left: the Trainer and its state, the loss log, the curve, and where it resumed from."""

    trainer: Any
    result: Any
    rows_log: list[dict[str, float]]
    curve: HeldoutCurve
    meter: StepMeter
    answers_cut: int
    first_step: list[int]
    timing: dict[str, float]
    scan: CheckpointScan
    resumed_from: int

    @property
    def state(self) -> Any:
        return self.trainer.state


def run_key(job: TrainJob, base_sha256: str, train_path: str | os.PathLike, bf16: bool) -> dict[str, Any]:
    """What a fine-tune's checkpoints belong to: the job (less its device), base weights, data, precision."""
    key = {
        "job": asdict(job),
        "base": base_sha256,
        "train": sha256_file(train_path),
        "bf16": bf16,
        "max_new_tokens": job.max_new_tokens,
        "loop": TRAIN_LOOP,
    }
    key["job"].pop("device")  # the same run may resume on another device
    key["job"]["settings"] = job.run_key_settings()
    return key


def start_run(
    job: TrainJob,
    base_dir: str | os.PathLike,
    train_path: str | os.PathLike,
    heldout_path: str | os.PathLike,
    out_dir: str | os.PathLike,
) -> _Run:
    """Check the job, read its data, keep the checkpoints of the same run key (else empty their folder)."""
    check_trainable(job.model, {"kind": job.kind})
    if job.recipe in UNTRAINED_RECIPES:
        raise ValueError(f"recipe {job.recipe!r} is never trained (model {job.model!r})")
    out = Path(out_dir)
    if job.steps_of is not None and job.stop_at_step is None:  # the leader's run sits beside this one
        job = job.following(out.parent / job.steps_of / SUMMARY)
    what = f"recipe {job.recipe!r} (dataset {job.dataset!r})"
    rows = read_rows(train_path, f"training data of {what}", job.train_rows)
    heldout = read_rows(heldout_path, f"held-out data of {what}", job.heldout_rows)
    base_fp = read_fingerprint(base_dir)
    bf16 = _mixed_precision(job.device, job.dtype)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).unlink(missing_ok=True)
    key = run_key(job, base_fp["sha256"], train_path, bf16)
    digest = sha256_json(key)
    ckpt_dir = out / CHECKPOINTS
    fresh_start_reason = prepare_checkpoints(ckpt_dir, digest, key, f"{job.model}-{job.recipe}")
    write_json(ckpt_dir / RUN_SETTINGS, {"key": digest, **key})
    return _Run(job, job.effective_settings(), out, rows, heldout, base_fp, bf16, fresh_start_reason)


def heldout_before(run: _Run, model, tokenizer) -> dict[str, Any]:
    """The held-out F1 before training, cached beside the checkpoints so that a resume does not redo it."""
    before_file = run.ckpt_dir / BEFORE_FILE
    if before_file.exists():
        return read_jsonl(before_file)[0]
    started = time.perf_counter()
    f1, answers = heldout_f1(model, tokenizer, run.job, run.heldout, run.autocast)
    before = {"f1": f1, "answers": answers, "seconds": time.perf_counter() - started}
    write_jsonl(before_file, [before])
    return before


def encode_rows(run: _Run, tokenizer) -> tuple[EncodedDataset, int]:
    """The training examples tokenised, and how many answers were cut to fit."""
    from tqdm.auto import tqdm

    job = run.job
    encoded = [
        encode_example(
            tokenizer,
            job.kind,
            job.template,
            r,
            run.settings.max_length,
            train_target=job.train_target,
            train_answer_cut=job.train_answer_cut,
        )
        for r in tqdm(run.rows, desc="tokenising", unit="row")
    ]
    answers_cut = sum(e.answer_cut for e in encoded)
    log.info(
        "%s: %d of %d answers cut (train_answer_cut=%s, train_target=%s)",
        run.name,
        answers_cut,
        len(encoded),
        job.train_answer_cut,
        job.train_target,
    )
    return EncodedDataset(encoded), answers_cut


def resume_point(run: _Run) -> tuple[CheckpointScan, int]:
    """The checkpoint scan and the step training resumes from (0: the start), said in the log."""
    scan = scan_checkpoints(run.ckpt_dir)
    resume = scan.complete
    for fault in scan.rejected:
        log.warning("%s: not resuming from %s", run.name, fault)
    for stale in run.ckpt_dir.glob("checkpoint-*"):
        if resume is None or int(stale.name.rsplit("-", 1)[-1]) > int(resume.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale)  # a cut-short save newer than the resume point: Trainer would write into it
    if resume:
        log.info("resuming %s from %s", run.name, resume)
        return scan, int(resume.name.rsplit("-", 1)[-1])
    if scan.rejected:
        run.fresh_start_reason = f"no complete checkpoint ({'; '.join(scan.rejected)})"
    if run.fresh_start_reason:
        log.warning("training %s from step 0: %s", run.name, run.fresh_start_reason)
    else:
        log.info("training %s from step 0 (no checkpoint yet)", run.name)
    return scan, 0


def train_or_resume(
    run: _Run,
    model,
    tokenizer,
    before: Mapping[str, Any],
    extra_callbacks: Sequence[Any],
    keep_checkpoints: bool,
) -> _Trained:
    """Train from the newest complete checkpoint of this run key (or step 0), with the held-out checks."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    job, settings = run.job, run.settings
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)

    def check() -> tuple[float, list[str]]:
        with training_untouched(model):
            return heldout_f1(model, tokenizer, job, run.heldout, run.autocast)

    # The curve is kept beside the checkpoints while training: Snakemake deletes the outputs of a job
    # that did not finish (out/heldout_curve.csv among them), and a resume needs the points it made.
    curve = HeldoutCurve(run.ckpt_dir / CURVE, settings.heldout_every, settings.stop_when_flat, check)
    dataset, answers_cut = encode_rows(run, tokenizer)
    first_step: list[int] = []
    timing: dict[str, float] = {}
    meter = StepMeter()
    trainer = make_trainer(
        meter,
        job.kind,
        model=model,
        args=training_arguments(settings, run.ckpt_dir, bf16=run.bf16, device=job.device),
        train_dataset=dataset,
        data_collator=Collator(pad_id),
        processing_class=tokenizer,
        callbacks=[*progress_callbacks(run.out, first_step, timing), *extra_callbacks],
    )
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer.add_callback(curve_callback(curve))  # last: after the step meter stops the step's clock
    if job.stop_at_step is not None:
        trainer.add_callback(stop_at(job.stop_at_step))
    if not keep_checkpoints:
        trainer.add_callback(no_checkpoint_at_the_end())
    scan, resumed_from = resume_point(run)
    try:
        kept = curve_until(read_curve(run.ckpt_dir / CURVE), resumed_from)
    except ValueError as err:
        log.warning("%s: held-out curve points before step %d lost: %s", run.name, resumed_from, err)
        kept = []
    curve.start(kept, {"step": 0, "f1": float(before["f1"]), "seconds": before.get("seconds")})
    model.train()
    result = trainer.train(resume_from_checkpoint=str(scan.complete) if scan.complete else None)
    rows_log = loss_rows(trainer.state.log_history)
    if not rows_log:
        raise RuntimeError(f"training {run.name} logged no loss")
    return _Trained(
        trainer, result, rows_log, curve, meter, answers_cut, first_step, timing, scan, resumed_from
    )


def write_outputs(
    run: _Run, trained: _Trained, model, tokenizer, before: Mapping[str, Any], base_dir: str | os.PathLike
) -> tuple[float, dict[str, Any]]:
    """Write the run folder but its summary; return the held-out F1 after training and the fingerprint."""
    out, job, curve = run.out, run.job, trained.curve
    # final model: saved in a temporary folder, then moved into place file by file
    with tempfile.TemporaryDirectory(prefix=".final-", dir=out) as tmp:
        trained.trainer.save_model(tmp)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "training_args.bin").unlink(missing_ok=True)  # a pickle; the summary holds the settings
        for entry in Path(tmp).iterdir():
            target = out / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)

    final_step = int(trained.state.global_step)
    if final_step in curve.answers:  # checked at its last step (stopped flat): the same weights
        f1_after = next(p["f1"] for p in curve.points if p["step"] == final_step)
        answers_after = curve.answers[final_step]
    else:
        model.eval()
        f1_after, answers_after = curve.check(final_step)
    write_jsonl(
        out / "heldout_answers.jsonl",
        [
            {
                "instruction": r["instruction"],
                "input": r["input"],
                "reference": r["output"],
                "answer_before": b,
                "answer_after": a,
            }
            for r, b, a in zip(run.heldout, before["answers"], answers_after)
        ],
    )
    write_curve(out / CURVE, curve.points)
    write_log_csv(out / "train_log.csv", trained.rows_log)
    plot_loss(out / "loss.png", trained.rows_log, f"{run.name}: {final_step} steps")
    plot_heldout(out / "heldout_f1.png", curve, f"{run.name}: held-out answer token F1")
    fingerprint = write_fingerprint(
        out, run.name, job.kind, {"base": run.base_fp["sha256"], "recipe": job.recipe}
    )
    if (Path(base_dir) / "licence").is_dir():  # a derivative keeps its base model's terms (Gemma)
        shutil.copytree(Path(base_dir) / "licence", out / "licence", dirs_exist_ok=True)
    return float(f1_after), fingerprint


def _steps_and_seconds(trained: _Trained) -> tuple[int, float]:
    """The optimizer steps of this run and their seconds, less the held-out checks between them."""
    state, timing = trained.state, trained.timing
    end = timing.get("end_step", state.global_step)
    seconds = timing["t1"] - timing["t0"] if "t0" in timing and "t1" in timing else float("nan")
    seconds -= sum(s for step, s in trained.curve.checks if step < end)
    return int(end - timing.get("start_step", 0)), seconds


def run_summary(
    run: _Run,
    trained: _Trained,
    model,
    before: Mapping[str, Any],
    f1_after: float,
    fingerprint: Mapping[str, Any],
) -> dict[str, Any]:
    """train_summary.json: settings, losses, held-out F1, where the run started and ended, its throughput."""
    import torch
    import transformers

    job, settings, curve, rows_log = run.job, run.settings, trained.curve, trained.rows_log
    state, final_step = trained.state, int(trained.state.global_step)
    window = max(1, min(5, len(rows_log) // 4))
    steps_run, seconds = _steps_and_seconds(trained)
    flat = curve.plateau()
    resumed = trained.scan.complete is not None
    summary = {
        "model": job.model,
        "recipe": job.recipe,
        "kind": job.kind,
        "template": job.template,
        "dataset": job.dataset,
        "settings": asdict(settings),
        "method": {"train_target": job.train_target, "train_answer_cut": job.train_answer_cut},
        "recipe_epochs": job.recipe_epochs,
        "answers_cut": trained.answers_cut,
        "device": job.device,
        "dtype": job.dtype,
        "bf16_autocast": run.bf16,
        "loop": {
            "batches": TRAIN_LOOP["batches"],
            "lm_head": TRAIN_LOOP["causal_lm_head"] if trained.trainer.answer_only else "every position",
        },
        "steps": final_step,
        "epochs_done": float(state.epoch or 0.0),
        "train_rows": len(run.rows),
        "effective_batch": settings.batch_size * settings.grad_accum,
        "steps_this_run": int(steps_run),
        "resumed_from_step": trained.resumed_from,
        "checkpoints_rejected": list(trained.scan.rejected),
        "fresh_start_reason": None if resumed else run.fresh_start_reason,
        "first_logged_step_this_run": trained.first_step[0] if trained.first_step else None,
        "seconds_per_step": seconds / steps_run if steps_run > 0 else float("nan"),
        "train_runtime_s": float(trained.result.metrics.get("train_runtime", float("nan"))),
        "loss_window": window,
        "first_loss": sum(r["loss"] for r in rows_log[:window]) / window,
        "last_loss": sum(r["loss"] for r in rows_log[-window:]) / window,
        "first_step_loss": rows_log[0]["loss"],
        "last_step_loss": rows_log[-1]["loss"],
        "heldout_rows": len(run.heldout),
        "heldout_max_new_tokens": job.max_new_tokens,
        "heldout_token_f1_before": float(before["f1"]),
        "heldout_token_f1_after": f1_after,
        "heldout_curve": [
            {"step": int(p["step"]), "f1": None if math.isnan(p["f1"]) else float(p["f1"])}
            for p in curve.points
        ],
        "stopped_early": curve.stopped is not None,
        "stop_reason": stop_reason(
            curve, settings, final_step, job.steps_of if job.stop_at_step == final_step else None
        ),
        "steps_of": None if job.steps_of is None else {"run": job.steps_of, "steps": job.stop_at_step},
        "plateau_step": flat.best_step,
        "plateau_heldout_f1": flat.best_f1,
        **trained.meter.summary(model, "bfloat16" if run.bf16 else "float32"),
        "base_fingerprint": run.base_fp["sha256"],
        "fingerprint": fingerprint["sha256"],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}


def train_model(
    job: TrainJob,
    base_dir: str | os.PathLike,
    train_path: str | os.PathLike,
    heldout_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    extra_callbacks: Sequence[Any] = (),
    keep_checkpoints: bool = False,
) -> dict[str, Any]:
    """Fine-tune the model in `base_dir` on `train_path` into the run folder `out_dir`; return the summary."""
    from transformers import set_seed

    run = start_run(job, base_dir, train_path, heldout_path, out_dir)
    set_seed(run.settings.seed)
    model, tokenizer = load_lm(base_dir, run.job.kind, device=run.job.device, dtype="float32")
    before = heldout_before(run, model, tokenizer)
    trained = train_or_resume(run, model, tokenizer, before, extra_callbacks, keep_checkpoints)
    f1_after, fingerprint = write_outputs(run, trained, model, tokenizer, before, base_dir)
    summary = run_summary(run, trained, model, before, f1_after, fingerprint)
    make_readable(run.out)
    write_json(run.out / SUMMARY, summary)
    if not keep_checkpoints:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(run.ckpt_dir)
    return summary
