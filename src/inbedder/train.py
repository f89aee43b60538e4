"""Fine-tuning with the paper's objectives, through transformers' Trainer.

The examples and their labels per model kind are built in `inbedder.train_data`; which checkpoint
a rerun resumes from, in `inbedder.checkpoints`. Checkpoints go to `<out>/checkpoints/` every
`save_steps`; a rerun resumes from the newest complete one when the run key (settings, base weights,
training data) is unchanged, and when it starts over although checkpoints existed, the log and
`train_summary.json` (`fresh_start_reason`, `checkpoints_rejected`) say why. The final model is
moved into `<out>` from a temporary folder, then `train_log.csv`, `loss.png`,
`heldout_answers.jsonl`, `heldout_f1.png`, `fingerprint.json`, and last `train_summary.json` (the
completion marker) are written.

The held-out check, its curve over training and the plateau stop (`train.heldout_every`,
`train.stop_when_flat`) are in `inbedder.heldout`; the model saved after a stop is the model at that
stopping step, which gets no checkpoint, so a rerun after a kill replays up to it and stops there again.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from inbedder.checkpoints import RUN_SETTINGS, mark_checkpoint_complete, prepare_checkpoints, scan_checkpoints
from inbedder.fidelity import method_settings
from inbedder.files import read_jsonl, sha256_file, sha256_json, write_json, write_jsonl, write_text
from inbedder.heldout import (
    BEFORE_FILE,
    CURVE,
    HeldoutCurve,
    StopWhenFlat,
    check_heldout_keys,
    curve_callback,
    curve_until,
    heldout_f1,
    plot_heldout,
    read_curve,
    save_step_plot,
    stop_reason,
    training_untouched,
    write_curve,
)
from inbedder.models import (
    TRAINABLE_KINDS,
    check_kind,
    load_lm,
    make_readable,
    read_fingerprint,
    write_fingerprint,
)
from inbedder.train_data import (
    Collator,
    EncodedDataset,
    check_train_method,
    encode_example,
    eos_id,
    read_rows,
)
from inbedder.train_loop import TRAIN_LOOP, StepMeter, make_trainer
from inbedder.vocabulary import UNTRAINED_RECIPES

CHECKPOINTS = "checkpoints"
SUMMARY = "train_summary.json"
# keys of a model's train block that say which runs there are, not how one trains (inbedder.rule_params)
RUN_KEYS = ("seeds", "steps_of")
log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class TrainSettings:
    """Hyper-parameters of one fine-tune (config `models.<name>.train`)."""

    learning_rate: float = 2e-5
    epochs: float = 1.0
    max_steps: int | None = None
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 4
    grad_accum: int = 16
    max_length: int = 512
    save_steps: int = 200
    seed: int = 42
    heldout_rows: int | None = None  # None = config limits.heldout_rows
    heldout_max_new_tokens: int | None = None  # None = the model's max_new_tokens
    heldout_every: int | None = None  # None = held-out F1 before and after training only
    stop_when_flat: StopWhenFlat | None = None  # None = train to max_steps / epochs

    def __post_init__(self) -> None:
        stop = check_heldout_keys(self.heldout_every, self.stop_when_flat, "train")
        # a mapping (from a config, or an asdict round trip) becomes a StopWhenFlat
        object.__setattr__(self, "stop_when_flat", stop)

    @classmethod
    def from_config(cls, values: Mapping[str, Any], where: str = "train") -> TrainSettings:
        """Build from a config mapping; unknown keys and bad values are errors naming the key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")
        values = dict(values)
        stop = check_heldout_keys(values.get("heldout_every"), values.get("stop_when_flat"), where)
        if "stop_when_flat" in values:
            values["stop_when_flat"] = stop
        settings = cls(**values)
        for key in ("batch_size", "grad_accum", "max_length", "save_steps"):
            if int(getattr(settings, key)) < 1:
                raise ValueError(f"{where}.{key}: must be >= 1, got {getattr(settings, key)!r}")
        if settings.max_steps is not None and int(settings.max_steps) < 1:
            raise ValueError(f"{where}.max_steps: must be >= 1 or null, got {settings.max_steps!r}")
        if settings.max_steps is None and float(settings.epochs) <= 0:
            raise ValueError(f"{where}.epochs: must be > 0 when max_steps is null, got {settings.epochs!r}")
        if not 0 <= float(settings.warmup_ratio) < 1:
            raise ValueError(f"{where}.warmup_ratio: must be in [0, 1), got {settings.warmup_ratio!r}")
        return settings


@dataclass(frozen=True)
class TrainJob:
    """Everything one training run needs besides the data: which model, recipe, and how.

    `train_target` and `train_answer_cut` are the config's `method` switches (the authors' values by
    default, see `inbedder.train_data`); `recipe_epochs` is the recipe's `epochs`, which replaces
    `settings.epochs` when `settings.max_steps` is null (`effective_settings`).
    """

    model: str
    recipe: str
    kind: str
    template: str
    dataset: str
    settings: TrainSettings
    device: str = "cpu"
    dtype: str = "float32"
    max_new_tokens: int = 8
    heldout_rows: int | None = None
    train_rows: int | None = None
    train_target: str = "authors"
    train_answer_cut: str = "authors"
    recipe_epochs: float | None = None
    # config `train.steps_of`: this run ends at the step another recipe's run ended at
    steps_of: str | None = None  # that run's folder name (`<model>-<recipe>[@<seed>]`), beside this run's
    stop_at_step: int | None = None  # read from its train_summary.json when training starts

    def __post_init__(self) -> None:
        check_train_method(self.train_target, self.train_answer_cut)
        check_recipe_epochs(self.recipe, self.recipe_epochs)
        if self.stop_at_step is not None and (not isinstance(self.stop_at_step, int) or self.stop_at_step < 1):
            raise ValueError(f"{self.model}-{self.recipe}: stop_at_step must be an integer >= 1, got "
                             f"{self.stop_at_step!r}")

    def effective_settings(self) -> TrainSettings:
        """The settings trained with: the recipe's epochs replace the model's when no step budget is
        set; `stop_when_flat` is dropped for a recipe it does not list."""
        settings = self.settings
        if settings.stop_when_flat is not None and not settings.stop_when_flat.applies_to(self.recipe):
            settings = replace(settings, stop_when_flat=None)
        if self.recipe_epochs is None or settings.max_steps is not None:
            return settings
        return replace(settings, epochs=float(self.recipe_epochs))

    def run_key_settings(self) -> dict[str, Any]:
        """The settings in the run key of the checkpoints: those that change the weights.

        `heldout_every` only adds checks (they leave the training untouched), so it is left out, and
        checkpoints stay valid when it changes, unless `stop_when_flat` applies: then it decides where
        training stops, as does the rule itself (its `recipes` list aside). Left out when null, the two
        keys keep the run key of checkpoints made before they existed.
        """
        settings = asdict(self.settings)
        settings.pop("heldout_every")
        settings.pop("stop_when_flat")
        stop = self.effective_settings().stop_when_flat
        if stop is not None:
            settings["heldout_every"] = self.settings.heldout_every
            settings["stop_when_flat"] = {"patience": stop.patience, "min_delta": stop.min_delta}
        if self.stop_at_step is not None:
            settings["stop_at_step"] = self.stop_at_step
        return settings

    def following(self, leader_summary: str | os.PathLike) -> TrainJob:
        """This job ending at the step the run of `leader_summary` (its train_summary.json) ended at
        (config `train.steps_of`): the same step budget and schedule, cut at that step."""
        path = Path(leader_summary)
        summary = json.loads(path.read_text(encoding="utf-8"))
        steps = summary.get("steps")
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{path}: no positive 'steps' (the run {self.model}-{self.recipe} is to end at its step)")
        return replace(self, steps_of=path.parent.name, stop_at_step=steps)


def check_recipe_epochs(recipe: str, epochs: Any) -> None:
    """A ValueError naming `recipes.<recipe>.epochs` unless it is absent (None) or a number > 0."""
    if epochs is None:
        return
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not epochs > 0:
        raise ValueError(f"recipes.{recipe}.epochs: must be a number > 0 (or left out), got {epochs!r}")


def check_recipe(model: str, recipe: str, recipes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The registry entry of a trainable recipe, or an error naming the recipe."""
    if recipe in UNTRAINED_RECIPES:
        raise ValueError(f"recipe {recipe!r} is never trained (model {model!r}): it uses a model as it is")
    if recipe not in recipes:
        raise KeyError(
            f"recipe {recipe!r} (model {model!r}) is not a key of recipes; known: {sorted(recipes)}"
        )
    spec = dict(recipes[recipe])
    for key in ("dataset", "template"):
        if not spec.get(key):
            raise ValueError(f"recipes.{recipe}.{key}: missing")
    check_recipe_epochs(recipe, spec.get("epochs"))
    return spec


# ----------------------------------------------------------------------------------------------
# checkpoints and logs


def loss_rows(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Rows (step, loss, lr) of a Trainer log history."""
    return [
        {"step": int(h["step"]), "loss": float(h["loss"]), "lr": float(h.get("learning_rate", float("nan")))}
        for h in log_history
        if "loss" in h and "step" in h
    ]


def write_log_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, float]]) -> None:
    """Write train_log.csv (step, loss, lr) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["step", "loss", "lr"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({"step": row["step"], "loss": f"{row['loss']:.6f}", "lr": f"{row['lr']:.6e}"})
    write_text(path, buf.getvalue())


def plot_loss(path: str | os.PathLike, rows: Sequence[Mapping[str, float]], title: str) -> None:
    """Save the training-loss curve as a PNG, atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["loss"] for r in rows], lw=1, alpha=0.5, label="loss per step")
    window = max(1, min(10, len(rows) // 5))
    if window > 1:
        smooth = [
            sum(r["loss"] for r in rows[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
            for i in range(len(rows))
        ]
        ax.plot(steps, smooth, lw=2, label=f"running mean ({window} steps)")
    save_step_plot(plt, fig, ax, path, title, "training loss")



def _callbacks(out_dir: Path, first_step: list[int], timing: dict[str, float]):
    """Trainer callbacks: a tqdm bar with loss and ETA, train_log.csv on every log, step timing."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class ProgressAndLog(TrainerCallback):
        """Progress bar with loss, the CSV log rewritten from the Trainer's history, step timing."""

        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="training",
                unit="step",
                dynamic_ncols=True,
            )
            timing["start_step"] = state.global_step

        def on_step_begin(self, args, state, control, **kwargs):
            timing.setdefault("t0", time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            timing["t1"] = time.perf_counter()
            timing["end_step"] = state.global_step
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                if not first_step:
                    first_step.append(state.global_step)
                if self.bar is not None:
                    self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}")
                write_log_csv(out_dir / "train_log.csv", loss_rows(state.log_history))

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    class MarkCheckpoints(TrainerCallback):
        """Confirms each checkpoint once Trainer has written all of it (on_save runs after the save)."""

        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir():
                mark_checkpoint_complete(path)
                log.info("checkpoint %s complete", path)

    return [ProgressAndLog(), MarkCheckpoints()]


# ----------------------------------------------------------------------------------------------
# the run


def _mixed_precision(device: str, dtype: str) -> bool:
    """Whether to train with bf16 autocast: asked for (dtype) and supported on the device."""
    import torch

    if dtype != "bfloat16":
        return False
    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return True  # CPU autocast supports bfloat16


def _stop_at(step: int):
    """Trainer callback: end training after optimizer step `step` (config `train.steps_of`)."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step:
                control.should_training_stop = True

    return StopAt()


def _no_checkpoint_at_the_end():
    """Trainer callback: no checkpoint of the step training ends at (Trainer writes one by default). The
    final model is saved right after training and the checkpoints are deleted once the outputs are written,
    so it would be ~1.6 GB written (SmolLM2: weights and AdamW state) for a few seconds; a kill in between
    reruns from the checkpoint before. Added last: it sees every other callback's decision to stop."""
    from transformers import TrainerCallback

    class NoCheckpointAtTheEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if control.should_training_stop:
                control.should_save = False

    return NoCheckpointAtTheEnd()


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
    if kind not in TRAINABLE_KINDS:
        raise ValueError(
            f"model {model!r} has kind {kind!r}, which is not trained; trainable kinds: "
            f"{', '.join(TRAINABLE_KINDS)}"
        )
    return kind


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
    """Fine-tune the model in `base_dir` on `train_path`, write the run folder `out_dir`, return the summary."""
    import torch
    import transformers
    from transformers import set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    check_trainable(job.model, {"kind": job.kind})
    if job.recipe in UNTRAINED_RECIPES:
        raise ValueError(f"recipe {job.recipe!r} is never trained (model {job.model!r})")
    out = Path(out_dir)
    if job.steps_of is not None and job.stop_at_step is None:  # the leader's run sits beside this one
        job = job.following(out.parent / job.steps_of / SUMMARY)
    what = f"training data of recipe {job.recipe!r} (dataset {job.dataset!r})"
    rows = read_rows(train_path, what, job.train_rows)
    heldout = read_rows(
        heldout_path, f"held-out data of recipe {job.recipe!r} (dataset {job.dataset!r})", job.heldout_rows
    )
    base_fp = read_fingerprint(base_dir)
    settings = job.effective_settings()
    bf16 = _mixed_precision(job.device, job.dtype)
    autocast = "bfloat16" if bf16 else None

    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY).unlink(missing_ok=True)
    ckpt_dir = out / CHECKPOINTS
    run_key = {
        "job": asdict(job),
        "base": base_fp["sha256"],
        "train": sha256_file(train_path),
        "bf16": bf16,
        "max_new_tokens": job.max_new_tokens,
        "loop": TRAIN_LOOP,
    }
    run_key["job"].pop("device")  # the same run may resume on another device
    run_key["job"]["settings"] = job.run_key_settings()
    key = sha256_json(run_key)
    fresh_start_reason = prepare_checkpoints(ckpt_dir, key, run_key, f"{job.model}-{job.recipe}")
    write_json(ckpt_dir / RUN_SETTINGS, {"key": key, **run_key})

    set_seed(settings.seed)
    model, tokenizer = load_lm(base_dir, job.kind, device=job.device, dtype="float32")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id(tokenizer)

    # held-out F1 before training (cached beside the checkpoints so a resume does not redo it)
    before_file = ckpt_dir / BEFORE_FILE
    if before_file.exists():
        before = read_jsonl(before_file)[0]
    else:
        started = time.perf_counter()
        f1, answers = heldout_f1(model, tokenizer, job, heldout, autocast)
        before = {"f1": f1, "answers": answers, "seconds": time.perf_counter() - started}
        write_jsonl(before_file, [before])

    def check() -> tuple[float, list[str]]:
        with training_untouched(model):
            return heldout_f1(model, tokenizer, job, heldout, autocast)

    # The curve is kept beside the checkpoints while training: Snakemake deletes the outputs of a job
    # that did not finish (out/heldout_curve.csv among them), and a resume needs the points it made.
    curve = HeldoutCurve(ckpt_dir / CURVE, settings.heldout_every, settings.stop_when_flat, check)

    from tqdm.auto import tqdm

    encoded = [
        encode_example(
            tokenizer,
            job.kind,
            job.template,
            r,
            settings.max_length,
            train_target=job.train_target,
            train_answer_cut=job.train_answer_cut,
        )
        for r in tqdm(rows, desc="tokenising", unit="row")
    ]
    answers_cut = sum(e.answer_cut for e in encoded)
    log.info(
        "%s-%s: %d of %d answers cut (train_answer_cut=%s, train_target=%s)",
        job.model,
        job.recipe,
        answers_cut,
        len(encoded),
        job.train_answer_cut,
        job.train_target,
    )
    dataset = EncodedDataset(encoded)
    args = training_arguments(settings, ckpt_dir, bf16=bf16, device=job.device)
    first_step: list[int] = []
    timing: dict[str, float] = {}
    meter = StepMeter()
    trainer = make_trainer(
        meter,
        job.kind,
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=Collator(pad_id),
        processing_class=tokenizer,
        callbacks=[*_callbacks(out, first_step, timing), *extra_callbacks],
    )
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    trainer.add_callback(curve_callback(curve))  # last: after the step meter stops the step's clock
    if job.stop_at_step is not None:
        trainer.add_callback(_stop_at(job.stop_at_step))
    if not keep_checkpoints:
        trainer.add_callback(_no_checkpoint_at_the_end())
    scan = scan_checkpoints(ckpt_dir)
    resume = scan.complete
    for fault in scan.rejected:
        log.warning("%s-%s: not resuming from %s", job.model, job.recipe, fault)
    for stale in ckpt_dir.glob("checkpoint-*"):
        if resume is None or int(stale.name.rsplit("-", 1)[-1]) > int(resume.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale)  # cut-short saves: Trainer would write into them again
    if resume:
        log.info("resuming %s-%s from %s", job.model, job.recipe, resume)
    else:
        if scan.rejected:
            fresh_start_reason = f"no complete checkpoint ({'; '.join(scan.rejected)})"
        if fresh_start_reason:
            log.warning("training %s-%s from step 0: %s", job.model, job.recipe, fresh_start_reason)
        else:
            log.info("training %s-%s from step 0 (no checkpoint yet)", job.model, job.recipe)
    resumed_from = int(resume.name.rsplit("-", 1)[-1]) if resume else 0
    try:
        kept = curve_until(read_curve(ckpt_dir / CURVE), resumed_from)
    except ValueError as err:
        log.warning(
            "%s-%s: held-out curve points before step %d lost: %s", job.model, job.recipe, resumed_from, err
        )
        kept = []
    curve.start(kept, {"step": 0, "f1": float(before["f1"]), "seconds": before.get("seconds")})
    model.train()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    state = trainer.state
    rows_log = loss_rows(state.log_history)
    if not rows_log:
        raise RuntimeError(f"training {job.model}-{job.recipe} logged no loss")

    # final model: saved in a temporary folder, then moved into place file by file
    with tempfile.TemporaryDirectory(prefix=".final-", dir=out) as tmp:
        trainer.save_model(tmp)
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "training_args.bin").unlink(missing_ok=True)  # a pickle; the summary holds the settings
        for entry in Path(tmp).iterdir():
            target = out / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)

    final_step = int(state.global_step)
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
            for r, b, a in zip(heldout, before["answers"], answers_after)
        ],
    )
    write_curve(out / CURVE, curve.points)
    write_log_csv(out / "train_log.csv", rows_log)
    plot_loss(out / "loss.png", rows_log, f"{job.model}-{job.recipe}: {state.global_step} steps")
    plot_heldout(out / "heldout_f1.png", curve, f"{job.model}-{job.recipe}: held-out answer token F1")
    fingerprint = write_fingerprint(
        out, f"{job.model}-{job.recipe}", job.kind, {"base": base_fp["sha256"], "recipe": job.recipe}
    )
    if (Path(base_dir) / "licence").is_dir():  # a derivative keeps its base model's terms (Gemma)
        shutil.copytree(Path(base_dir) / "licence", out / "licence", dirs_exist_ok=True)

    window = max(1, min(5, len(rows_log) // 4))
    steps_run = timing.get("end_step", state.global_step) - timing.get("start_step", 0)
    seconds = timing["t1"] - timing["t0"] if "t0" in timing and "t1" in timing else float("nan")
    # the held-out checks between this run's first and last step are not training time
    seconds -= sum(s for step, s in curve.checks if step < timing.get("end_step", state.global_step))
    flat = curve.plateau()
    summary = {
        "model": job.model,
        "recipe": job.recipe,
        "kind": job.kind,
        "template": job.template,
        "dataset": job.dataset,
        "settings": asdict(settings),
        "method": {"train_target": job.train_target, "train_answer_cut": job.train_answer_cut},
        "recipe_epochs": job.recipe_epochs,
        "answers_cut": answers_cut,
        "device": job.device,
        "dtype": job.dtype,
        "bf16_autocast": bf16,
        "loop": {
            "batches": TRAIN_LOOP["batches"],
            "lm_head": TRAIN_LOOP["causal_lm_head"] if trainer.answer_only else "every position",
        },
        "steps": int(state.global_step),
        "epochs_done": float(state.epoch or 0.0),
        "train_rows": len(rows),
        "effective_batch": settings.batch_size * settings.grad_accum,
        "steps_this_run": int(steps_run),
        "resumed_from_step": resumed_from,
        "checkpoints_rejected": list(scan.rejected),
        "fresh_start_reason": None if resume else fresh_start_reason,
        "first_logged_step_this_run": first_step[0] if first_step else None,
        "seconds_per_step": seconds / steps_run if steps_run > 0 else float("nan"),
        "train_runtime_s": float(result.metrics.get("train_runtime", float("nan"))),
        "loss_window": window,
        "first_loss": sum(r["loss"] for r in rows_log[:window]) / window,
        "last_loss": sum(r["loss"] for r in rows_log[-window:]) / window,
        "first_step_loss": rows_log[0]["loss"],
        "last_step_loss": rows_log[-1]["loss"],
        "heldout_rows": len(heldout),
        "heldout_max_new_tokens": job.max_new_tokens,
        "heldout_token_f1_before": float(before["f1"]),
        "heldout_token_f1_after": float(f1_after),
        "heldout_curve": [
            {"step": int(p["step"]), "f1": None if math.isnan(p["f1"]) else float(p["f1"])}
            for p in curve.points
        ],
        "stopped_early": curve.stopped is not None,
        "stop_reason": stop_reason(curve, settings, final_step, job.steps_of if job.stop_at_step == final_step else None),
        "steps_of": None if job.steps_of is None else {"run": job.steps_of, "steps": job.stop_at_step},
        "plateau_step": flat.best_step,
        "plateau_heldout_f1": flat.best_f1,
        **meter.summary(model, "bfloat16" if bf16 else "float32"),
        "base_fingerprint": base_fp["sha256"],
        "fingerprint": fingerprint["sha256"],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    summary = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
    make_readable(out)
    write_json(out / SUMMARY, summary)
    if not keep_checkpoints:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(ckpt_dir)
    return summary


def train_from_config(
    model: str,
    recipe: str,
    models: Mapping[str, Mapping[str, Any]],
    recipes: Mapping[str, Mapping[str, Any]],
    *,
    train_dir: str | os.PathLike,
    models_dir: str | os.PathLike = "data/models",
    out_dir: str | os.PathLike,
    device: str = "cpu",
    dtype: str = "float32",
    heldout_rows: int | None = None,
    train_rows: int | None = None,
    method: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Resolve a (model, recipe) pair of the config registries and train it (tests, CLI).

    `train_dir` holds `<recipe>.jsonl` and `<recipe>.heldout.jsonl` (results/<run>/train in the workflow);
    `method` is the config's `method` block (left out: the authors' values).
    """
    if model not in models:
        raise KeyError(f"model {model!r} is not a key of models; known: {sorted(models)}")
    spec = models[model]
    kind = check_trainable(model, spec)
    recipe_spec = check_recipe(model, recipe, recipes)
    train = {k: v for k, v in (spec.get("train") or {}).items() if k not in RUN_KEYS}
    settings = TrainSettings.from_config(train, where=f"models.{model}.train")
    switches = method_settings({"method": method})
    job = TrainJob(
        model=model,
        recipe=recipe,
        kind=kind,
        template=recipe_spec["template"],
        dataset=recipe_spec["dataset"],
        settings=settings,
        device=device,
        dtype=dtype,
        max_new_tokens=int(settings.heldout_max_new_tokens or spec["max_new_tokens"]),
        heldout_rows=settings.heldout_rows or heldout_rows,
        train_rows=train_rows,
        train_target=switches["train_target"],
        train_answer_cut=switches["train_answer_cut"],
        recipe_epochs=recipe_spec.get("epochs"),
    )
    tables = Path(train_dir)
    return train_model(
        job,
        Path(models_dir) / model,
        tables / f"{recipe}.jsonl",
        tables / f"{recipe}.heldout.jsonl",
        out_dir,
        **kwargs,
    )


def job_from_params(params: Mapping[str, Any]) -> TrainJob:
    """Build a TrainJob from the `params` of the train_model rule."""
    return TrainJob(
        model=params["model"],
        recipe=params["recipe"],
        kind=params["kind"],
        template=params["template"],
        dataset=params["dataset"],
        settings=TrainSettings.from_config(params["train"], where=f"models.{params['model']}.train"),
        device=params["device"],
        dtype=params["dtype"],
        max_new_tokens=int(params["max_new_tokens"]),
        heldout_rows=params.get("heldout_rows"),
        train_rows=params.get("train_rows"),
        train_target=params["train_target"],
        train_answer_cut=params["train_answer_cut"],
        recipe_epochs=params["recipe_epochs"],
        steps_of=params.get("steps_of"),
    )
