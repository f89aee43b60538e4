"""train_summary.json of a fine-tune: settings, losses, held-out checks, the model kept, throughput."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from inbedder.heldout import stop_reason
from inbedder.train_loop import TRAIN_LOOP


def _none_if_nan(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def heldout_fields(run: Any, trained: Any, before: Mapping[str, Any], kept: Any) -> dict[str, Any]:
    """The summary's held-out keys: before and after (the kept model), the curve, the stop, the kept step."""
    job, settings, curve = run.job, run.settings, trained.curve
    final_step = int(trained.state.global_step)
    flat = curve.plateau()
    at = {int(p["step"]): p for p in curve.points}
    return {
        "heldout_rows": len(run.heldout),
        "heldout_max_new_tokens": job.max_new_tokens,
        "heldout_metric": kept.metric,
        "heldout_token_f1_before": float(before["f1"]),
        "heldout_token_f1_after": float(at[kept.step]["f1"]),
        "heldout_loss_before": _none_if_nan(float(before.get("loss", math.nan))),
        "heldout_loss_after": _none_if_nan(float(at[kept.step].get("loss", math.nan))),
        "heldout_curve": [
            {"step": int(p["step"]), "f1": _none_if_nan(p["f1"]), "loss": _none_if_nan(p.get("loss"))}
            for p in curve.points
        ],
        "kept_step": kept.step,
        "kept_metric": _none_if_nan(kept.value),
        "stopped_early": curve.stopped is not None,
        "stop_reason": stop_reason(
            curve, settings, final_step, job.steps_of if job.stop_at_step == final_step else None
        ),
        "steps_of": None if job.steps_of is None else {"run": job.steps_of, "steps": job.stop_at_step},
        "plateau_step": flat.best_step,
        "plateau_heldout_f1": float(at[flat.best_step]["f1"]),
    }


def _steps_and_seconds(trained: Any) -> tuple[int, float]:
    """The optimizer steps of this run and their seconds, less the held-out checks between them."""
    state, timing = trained.state, trained.timing
    end = timing.get("end_step", state.global_step)
    seconds = timing["t1"] - timing["t0"] if "t0" in timing and "t1" in timing else float("nan")
    seconds -= sum(s for step, s in trained.curve.checks if step < end)
    return int(end - timing.get("start_step", 0)), seconds


def run_summary(
    run: Any,
    trained: Any,
    model,
    before: Mapping[str, Any],
    kept: Any,
    fingerprint: Mapping[str, Any],
) -> dict[str, Any]:
    """train_summary.json: settings, losses, held-out checks, the kept model, start and end, throughput."""
    import torch
    import transformers

    job, settings, rows_log = run.job, run.settings, trained.rows_log
    state, final_step = trained.state, int(trained.state.global_step)
    window = max(1, min(5, len(rows_log) // 4))
    steps_run, seconds = _steps_and_seconds(trained)
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
        **heldout_fields(run, trained, before, kept),
        **trained.meter.summary(model, "bfloat16" if run.bf16 else "float32"),
        "base_fingerprint": run.base_fp["sha256"],
        "fingerprint": fingerprint["sha256"],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
