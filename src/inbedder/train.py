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
`train.stop_when_flat`) are in `inbedder.heldout`; the stopping step gets no checkpoint, so a rerun after a
kill replays up to it and stops there again. The model saved is the best checked one by the recipe's
held-out metric, whether training stopped early or ran to its budget (`inbedder.train_best`); the summary
is written by `inbedder.train_summary`.
"""

from __future__ import annotations

import contextlib
import logging
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
    heldout_loss,
    read_curve,
    training_untouched,
    write_curve,
)
from inbedder.loading import load_lm
from inbedder.model_kinds import kind_of
from inbedder.models import check_kind, make_readable, read_fingerprint, write_fingerprint
from inbedder.train_best import BestKeeper, Kept, best_callback
from inbedder.train_callbacks import no_checkpoint_at_the_end, progress_callbacks, stop_at
from inbedder.train_curves import loss_rows, plot_heldout, plot_loss, write_log_csv
from inbedder.train_data import Collator, EncodedDataset, encode_example, eos_id, read_rows
from inbedder.train_loop import TRAIN_LOOP, StepMeter, make_trainer
from inbedder.train_settings import TrainJob, TrainSettings
from inbedder.train_summary import run_summary
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
    keeper: BestKeeper

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
    key["job"].pop("heldout_metric")  # picks the model kept, not the weights (in the settings where it stops)
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


def run_heldout_loss(run: _Run, model, tokenizer) -> float:
    """The held-out answer loss of the model as it is now (`inbedder.heldout.heldout_loss`)."""
    return heldout_loss(model, tokenizer, run.job, run.heldout, run.autocast, run.settings.max_length)


def heldout_before(run: _Run, model, tokenizer) -> dict[str, Any]:
    """The held-out F1 and loss before training, cached beside the checkpoints for a resume."""
    before_file = run.ckpt_dir / BEFORE_FILE
    before = read_jsonl(before_file)[0] if before_file.exists() else None
    if before is None:
        started = time.perf_counter()
        f1, answers = heldout_f1(model, tokenizer, run.job, run.heldout, run.autocast)
        before = {"f1": f1, "answers": answers, "seconds": time.perf_counter() - started}
    if "loss" not in before:  # also a cache written before the loss was checked
        before["loss"] = run_heldout_loss(run, model, tokenizer)
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

    def check() -> tuple[float, list[str], float]:
        with training_untouched(model):
            f1, answers = heldout_f1(model, tokenizer, job, run.heldout, run.autocast)
            return f1, answers, run_heldout_loss(run, model, tokenizer)

    # The curve is kept beside the checkpoints while training: Snakemake deletes the outputs of a job
    # that did not finish (out/heldout_curve.csv among them), and a resume needs the points it made.
    curve = HeldoutCurve(
        run.ckpt_dir / CURVE, settings.heldout_every, settings.stop_when_flat, check, job.heldout_metric
    )
    keeper = BestKeeper(run.ckpt_dir, curve, model)
    curve.on_check = keeper.on_check
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
    trainer.add_callback(best_callback(keeper))  # after the checkpoint's marker
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
    curve.start(kept, {"step": 0, "f1": float(before["f1"]), "seconds": before.get("seconds"),
                       "loss": float(before["loss"])})
    keeper.start(resumed_from)
    model.train()
    result = trainer.train(resume_from_checkpoint=str(scan.complete) if scan.complete else None)
    rows_log = loss_rows(trainer.state.log_history)
    if not rows_log:
        raise RuntimeError(f"training {run.name} logged no loss")
    return _Trained(
        trainer, result, rows_log, curve, meter, answers_cut, first_step, timing, scan, resumed_from, keeper
    )


def write_outputs(
    run: _Run, trained: _Trained, model, tokenizer, before: Mapping[str, Any], base_dir: str | os.PathLike
) -> tuple[Kept, dict[str, Any]]:
    """Write the run folder but its summary, the best checked model; return that (`Kept`), the fingerprint."""
    out, job, curve = run.out, run.job, trained.curve
    final_step = int(trained.state.global_step)
    if final_step not in curve.answers:  # not checked at its last step (as a flat stop is)
        model.eval()
        curve.check(final_step)
    kept = trained.keeper.keep(final_step)  # loads the best check's weights when it beats the final step
    # the kept model: saved in a temporary folder, then moved into place file by file
    with tempfile.TemporaryDirectory(prefix=".final-", dir=out) as tmp:
        trained.trainer.save_model(tmp)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "training_args.bin").unlink(missing_ok=True)  # a pickle; the summary holds the settings
        for entry in Path(tmp).iterdir():
            target = out / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
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
            for r, b, a in zip(run.heldout, before["answers"], kept.answers)
        ],
    )
    write_curve(out / CURVE, curve.points)
    write_log_csv(out / "train_log.csv", trained.rows_log)
    plot_loss(out / "loss.png", trained.rows_log, f"{run.name}: {final_step} steps")
    plot_heldout(out / "heldout_f1.png", curve, f"{run.name}: held-out answer token F1 and loss", kept.step)
    fingerprint = write_fingerprint(
        out, run.name, job.kind, {"base": run.base_fp["sha256"], "recipe": job.recipe}
    )
    if (Path(base_dir) / "licence").is_dir():  # a derivative keeps its base model's terms (Gemma)
        shutil.copytree(Path(base_dir) / "licence", out / "licence", dirs_exist_ok=True)
    return kept, fingerprint


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
    kept, fingerprint = write_outputs(run, trained, model, tokenizer, before, base_dir)
    summary = run_summary(run, trained, model, before, kept, fingerprint)
    make_readable(run.out)
    write_json(run.out / SUMMARY, summary)
    if not keep_checkpoints:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(run.ckpt_dir)
    return summary
