"""The curves of a fine-tune: its loss log (train_log.csv) and the drawing of the loss and held-out curves.

`draw_loss` and `draw_heldout` draw one run's curve on a matplotlib axis; the train rule's figures
(`loss.png`, `heldout_f1.png`) and the report's fine-tuning figures both draw with them.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from inbedder.files import atomic_path, write_text

LOSS_COLUMNS = ("step", "loss", "lr")
SMOOTHING = 0.2  # alpha of the exponential moving average drawn over the loss


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
    writer = csv.DictWriter(buf, fieldnames=LOSS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({"step": row["step"], "loss": f"{row['loss']:.6f}", "lr": f"{row['lr']:.6e}"})
    write_text(path, buf.getvalue())


def moving_average(values: Sequence[float], alpha: float = SMOOTHING) -> list[float]:
    """Exponential moving average as pandas' `ewm(alpha=alpha).mean()` (a NaN adds nothing)."""
    out, num, den = [], 0.0, 0.0
    for value in values:
        num, den = (1 - alpha) * num, (1 - alpha) * den
        if not math.isnan(value):
            num, den = num + value, den + 1.0
        out.append(num / den if den else float("nan"))
    return out


def draw_loss(
    ax,
    steps: Sequence[int],
    losses: Sequence[float],
    *,
    label: str,
    color: str | None = None,
    linestyle: str = "-",
) -> None:
    """One run's loss per optimizer step, faint, under its labelled moving average (`SMOOTHING`)."""
    losses = [float(x) for x in losses]
    (raw,) = ax.plot(steps, losses, color=color, alpha=0.2, linewidth=0.7, linestyle=linestyle)
    ax.plot(
        steps, moving_average(losses), color=raw.get_color(), linewidth=1.3, linestyle=linestyle, label=label
    )


def draw_heldout(
    ax,
    steps: Sequence[int],
    f1: Sequence[float],
    *,
    label: str,
    color: str | None = None,
    linestyle: str = "-",
    best: int | None = None,
    stopped: bool = False,
) -> None:
    """One run's held-out F1 per check; a ring on check `best` (default: the highest), a cross if stopped."""
    (line,) = ax.plot(
        steps, f1, color=color, linewidth=1.2, linestyle=linestyle, marker="o", markersize=2.5, label=label
    )
    color = line.get_color()
    best = max(range(len(f1)), key=f1.__getitem__) if best is None else best
    ax.plot(steps[best], f1[best], "o", markersize=7, markerfacecolor="none", color=color)
    if stopped:
        ax.plot(steps[-1], f1[-1], "x", markersize=7, color=color)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_step_plot(
    plt, fig, ax, path: str | os.PathLike, title: str, ylabel: str, *, legend: bool = True
) -> None:
    """Label a per-step plot of a fine-tune (x: optimizer step), write it atomically as PNG and close it."""
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def plot_loss(path: str | os.PathLike, rows: Sequence[Mapping[str, float]], title: str) -> None:
    """Save the training-loss curve of one run as a PNG (loss.png), atomically."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    draw_loss(
        ax,
        [r["step"] for r in rows],
        [r["loss"] for r in rows],
        label=f"loss (moving average, alpha {SMOOTHING:g})",
    )
    save_step_plot(plt, fig, ax, path, title, "training loss")


def draw_heldout_loss(
    ax, steps: Sequence[int], loss: Sequence[float], *, label: str, color: str = "tab:red"
) -> None:
    """One run's held-out answer loss per check, on its own axis (a twin of the F1's, or a panel)."""
    ax.plot(steps, loss, color=color, linewidth=1.0, linestyle="--", marker="s", markersize=2.5, label=label)
    ax.set_ylabel("held-out answer loss (nats/token)", color=color)
    ax.tick_params(axis="y", labelcolor=color)


def plot_heldout(path: str | os.PathLike, curve: Any, title: str, kept_step: int | None = None) -> None:
    """Save a run's held-out F1 curve (a `HeldoutCurve`), its loss on a second axis, the kept step: a PNG."""
    points = curve.points
    steps = [p["step"] for p in points]
    flat = curve.plateau()
    label = f"held-out token F1 (ring: best {curve.metric}, step {flat.best_step}"
    if curve.stop is not None:
        label += f"; stop_when_flat: patience {curve.stop.patience}, min_delta {curve.stop.min_delta:g}"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    f1 = [100 * p["f1"] for p in points]
    draw_heldout(
        ax,
        steps,
        f1,
        label=label + ")",
        best=steps.index(flat.best_step) if flat.best_step in steps else None,  # by the run's metric
        stopped=curve.stopped is not None,
    )
    loss = [float(p.get("loss", math.nan)) for p in points]
    handles = []
    if not all(math.isnan(x) for x in loss):
        twin = ax.twinx()
        draw_heldout_loss(twin, steps, loss, label="held-out answer loss (right axis)")
        handles = twin.get_legend_handles_labels()
    if kept_step is not None:
        ax.axvline(
            kept_step, color="grey", linewidth=0.8, linestyle=":", label=f"model kept: step {kept_step}"
        )
    if handles:
        mine = ax.get_legend_handles_labels()
        ax.legend(mine[0] + handles[0], mine[1] + handles[1], fontsize=7)
    save_step_plot(plt, fig, ax, path, title, "held-out answer token F1 (%)", legend=not handles)
