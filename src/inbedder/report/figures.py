"""Figures (matplotlib, Agg): each returns a Figure record, with the reason when it cannot be drawn."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from inbedder.report.aggregate import SuiteScores, clustering_tasks, headline_runs
from inbedder.report.claims import filter_pairs
from inbedder.report.suites import (
    ANSWER_MODES,
    GEN_AVG,
    IA_AVG,
    PROMPT_MODE,
    RECIPE_NAMES,
    SCALE,
    Cell,
    Run,
    mode_rank,
    num,
    runs_of,
)
from inbedder.train_curves import draw_heldout, draw_loss
from inbedder.vocabulary import GOLD_MODE, ROBUSTNESS_GROUPS

PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999999", "#000000"]
RECIPE_COLOURS = {"inbedder": "#0072B2", "released": "#56B4E9", "alpaca": "#E69F00", "none": "#8C8C8C"}
ENCODER_COLOURS = ["#009E73", "#CC79A7", "#D55E00", "#000000"]
MPL_STYLE = {
    "font.family": "serif", "font.serif": ["DejaVu Serif"], "font.size": 8.5, "axes.titlesize": 9,
    "axes.labelsize": 8.5, "legend.fontsize": 7.5, "xtick.labelsize": 7.5, "ytick.labelsize": 7.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "axes.grid.axis": "y",
    "grid.alpha": 0.35, "grid.linestyle": ":", "axes.axisbelow": True, "legend.frameon": False,
    "savefig.dpi": 160, "figure.dpi": 100,
}


@dataclass
class Figure:
    """A rendered figure (PNG bytes) or the reason it could not be drawn."""

    name: str
    title: str
    caption: str
    png: bytes | None = None
    reason: str = ""

    @property
    def b64(self) -> str:
        """The PNG as base64 for a data URI."""
        return base64.b64encode(self.png).decode("ascii") if self.png else ""

    @property
    def width_px(self) -> int:
        """Display width in CSS pixels: the figure's size in inches at 100 px per inch."""
        if not self.png or self.png[:8] != b"\x89PNG\r\n\x1a\n":
            return 0
        return round(int.from_bytes(self.png[16:20], "big") * 100 / MPL_STYLE["savefig.dpi"])


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    _plt().close(fig)
    return buf.getvalue()


def run_colour(run: Run, encoders: Sequence[str]) -> str:
    """Colour by recipe for language models, by model for sentence encoders."""
    if run.encoder:
        idx = list(encoders).index(run.model) if run.model in encoders else 0
        return ENCODER_COLOURS[idx % len(ENCODER_COLOURS)]
    return RECIPE_COLOURS.get(run.recipe, PALETTE[-1])


def encoder_models(runs: Sequence[Run]) -> list[str]:
    """The sentence-encoder models among runs, sorted (they take the encoder colours in this order)."""
    return sorted({r.model for r in runs if r.encoder})


def ci_errors(cells: Sequence[Any]) -> np.ndarray:
    """[2, n] error-bar lengths below and above each cell's value: its 95% interval (the tables' own), 0 where
    a cell has none."""
    out = np.zeros((2, len(cells)))
    for i, c in enumerate(cells):
        est = getattr(c, "est", None)
        if isinstance(c, Cell) and c.ok and est is not None:
            out[:, i] = max(c.value - est.low, 0.0), max(est.high - c.value, 0.0)
    return out


def _grouped_bars(ax, groups: Sequence[str], series: Sequence[tuple[str, str, list, np.ndarray]],
                  width: float = 0.8, hatches: Sequence[str | None] | None = None):
    """Draw grouped bars; series = (label, colour, values, [2, n] interval errors) with None for missing values."""
    n = max(len(series), 1)
    w = width / n
    x = np.arange(len(groups))
    for i, (label, colour, vals, errs) in enumerate(series):
        xs = x - width / 2 + w * (i + 0.5)
        v = np.array([np.nan if a is None else a for a in vals], dtype=float)
        e = np.where(np.isnan(v)[None, :], 0.0, np.asarray(errs, dtype=float))
        hatch = hatches[i] if hatches else None
        ax.bar(xs, np.nan_to_num(v), w * 0.92, color=colour, label=label, yerr=e,
               error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "#333333"}, hatch=hatch,
               edgecolor="white" if not hatch else "#333333", linewidth=0.4)
        for xi, vi in zip(xs, v, strict=True):
            if np.isnan(vi):
                ax.text(xi, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color="#888888")
    ax.set_xticks(x)
    ax.set_xticklabels(groups)
    ax.axhline(0, color="#444444", linewidth=0.6)


def figure_scores(book: SuiteScores, claim_mode: Callable[[str, str], str | None] | None = None) -> Figure:
    """Scores per task and model (each model and recipe at its claim mode)."""
    suite = book.suite
    name = f"scores_{suite.name}"
    title = f"Scores per task and model ({suite.title})"
    caption = ("Each bar is one model and recipe at the mode the claims compare it at (claim_modes); error bars "
               "are the 95% intervals of the tables (items resampled, seeds' spread added). A sentence encoder's "
               "plain bars are the instruction-blind floor, its gold bars (cross-hatched) the ceiling: the "
               "gold label's words embedded under each instruction. IA Avg = mean of the "
               "instruction-awareness tasks; Gen Avg = mean of the generic tasks.")
    runs = headline_runs(book, claim_mode)
    if not runs:
        return Figure(name, title, caption, reason=f"no scores on the {suite.title} in this run")
    labels = [c.label for c in suite.ia] + ["IA Avg"] + [c.label for c in suite.generic] + ["Gen Avg"]
    keys = [c.label for c in suite.ia] + [IA_AVG] + [c.label for c in suite.generic] + [GEN_AVG]
    encoders = encoder_models(runs)
    plt = _plt()
    with plt.rc_context(MPL_STYLE):
        fig, ax = plt.subplots(figsize=(7.6, 2.9))
        series = []
        for run in runs:
            cells = [book.get(run, k) for k in keys]
            series.append((run.label, run_colour(run, encoders),
                           [c.value if c.ok else None for c in cells], ci_errors(cells)))
        hatches = [{"released": "///"}.get(r[1]) or {"prefixed": "...", GOLD_MODE: "xxx"}.get(r[2]) for r in runs]
        _grouped_bars(ax, labels, series, hatches=hatches)
        ax.axvline(len(suite.ia) + 0.5, color="#999999", linewidth=0.6, linestyle="--")
        ax.set_ylabel("score (x100)")
        ax.legend(ncol=min(3, len(series)), loc="upper center", bbox_to_anchor=(0.5, -0.12))
        return Figure(name, title, caption, _png(fig))


def figure_modes(book: SuiteScores, paper: pd.DataFrame) -> Figure:
    """Mode ablation: IA average per embedding mode for each language-model run, beside the authors' runs."""
    name, title = f"modes_{book.suite.name}", f"Mode ablation: answer vs prompt hidden states ({book.suite.title})"
    caption = (f"Instruction-awareness average per embedding mode. Answer modes ({', '.join(ANSWER_MODES)}) are "
               f"solid, the prompt mode ({PROMPT_MODE}) hatched. Right: the same ablation in the authors' released "
               "runs (paper_numbers.csv, table `modes`). Claim 2.")
    runs = [r for r in book.runs if not r.encoder and "+filter" not in r.mode  # also `+filter=words`
            and book.get(r, IA_AVG).ok]
    pmodes = paper[paper["table"] == "modes"]
    if not runs and pmodes.empty:
        return Figure(name, title, caption, reason="no language-model run with an instruction-awareness average")
    plt = _plt()
    with plt.rc_context(MPL_STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(7.6, 2.7), gridspec_kw={"width_ratios": [1, 1.15]})
        for ax, source in zip(axes, ("ours", "paper"), strict=True):
            if source == "ours":
                pairs = sorted({(m, r) for m, r, _ in runs}, key=lambda p: Run(*p, "").sort_key)
                modes = sorted({r[2] for r in runs}, key=mode_rank)
                vals = {(m, r, mo): book.get((m, r, mo), IA_AVG) for m, r in pairs for mo in modes}
                ax.set_title("this run")
            else:
                pairs = list(dict.fromkeys(zip(pmodes["model"], pmodes["recipe"], strict=True)))
                modes = sorted(set(pmodes["mode"]), key=mode_rank)
                vals = {(m, r, mo): Cell() for m, r in pairs for mo in modes}
                for row in pmodes.itertuples(index=False):
                    vals[(row.model, row.recipe, row.mode)] = Cell(value=float(row.value))
                ax.set_title("authors' released runs")
            if not pairs:
                ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes, color="#888888")
                ax.set_axis_off()
                continue
            x = np.arange(len(pairs))
            w = 0.8 / max(len(modes), 1)
            for j, mode in enumerate(modes):
                colour = plt.get_cmap("tab10")(j % 10)
                v = [vals[(m, r, mode)].value if vals[(m, r, mode)].ok else np.nan for m, r in pairs]
                e = ci_errors([vals[(m, r, mode)] for m, r in pairs])
                ax.bar(x - 0.4 + w * (j + 0.5), np.nan_to_num(v), w * 0.92, yerr=e, label=mode, color=colour,
                       hatch="///" if mode == PROMPT_MODE else None, edgecolor="#333333" if mode == PROMPT_MODE
                       else "white", linewidth=0.4, error_kw={"elinewidth": 0.7, "capsize": 1.2})
            labels, common = _pair_labels(pairs)
            ax.set_xticks(x)
            ax.set_xticklabels(labels, fontsize=7 if common else 6.5)
            if common:
                ax.set_title(f"{ax.get_title()} ({common})")
            ax.axhline(0, color="#444444", linewidth=0.6)
            ax.set_ylabel("IA average (x100)")
            ax.legend(ncol=min(len(modes), 6), fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.3),
                      handlelength=1.2, columnspacing=0.8)
        fig.tight_layout()
        return Figure(name, title, caption, _png(fig))


def figure_filtering(book: SuiteScores, paper: pd.DataFrame) -> Figure:
    """Filtering ablation: <mode> vs <mode>+filter, ours and the paper's."""
    name, title = f"filtering_{book.suite.name}", f"Filtering ablation ({book.suite.title})"
    caption = ("Instruction-awareness average without and with filtering of uninformative generation steps "
               "(stopwords, instruction tokens, 'Based on', 'Sure!'). Right: the paper's filtering table. Claim 3.")
    pairs = sorted(filter_pairs(book), key=lambda p: p[1].sort_key)
    pf = paper[paper["table"] == "filtering"]
    if not pairs and pf.empty:
        return Figure(name, title, caption, reason="no <mode>+filter run beside its unfiltered mode")
    plt = _plt()
    with plt.rc_context(MPL_STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(8.4, 2.6), gridspec_kw={"width_ratios": [1, 1.5]})
        paper_pairs: list[tuple[str, Any, Any]] = []
        for (model, mode_base), _ in pf.assign(base=pf["mode"].str.replace("+filter", "", regex=False)).groupby(
                ["model", "base"], sort=False):
            get = {m: float(v) for m, v in zip(pf[pf["model"] == model]["mode"], pf[pf["model"] == model]["value"],
                                                strict=True)}
            paper_pairs.append((f"{model.replace('llama-2-', 'llama-')}\n{mode_base}", get.get(mode_base),
                                get.get(mode_base + "+filter")))
        labels, common = _pair_labels([(b[0], b[1]) for b, _ in pairs])
        ours_pairs = [(f"{lab}\n{b[2]}", book.get(b, IA_AVG), book.get(f, IA_AVG))
                      for lab, (b, f) in zip(labels, pairs, strict=True)]
        ours_title = f"this run ({common})" if common else "this run"
        for ax, items, ttl in ((axes[0], ours_pairs, ours_title), (axes[1], paper_pairs, "paper")):
            ax.set_title(ttl)
            if not items:
                ax.text(0.5, 0.5, "no filter pairs", ha="center", va="center", transform=ax.transAxes,
                        color="#888888")
                ax.set_axis_off()
                continue
            x = np.arange(len(items))
            for k, (lab, colour, hatch) in enumerate((("without filter", "#B0B0B0", None),
                                                       ("with filter", "#0072B2", None))):
                v = [(c.value if c.ok else np.nan) if isinstance(c, Cell) else (np.nan if c is None else c)
                     for c in (it[1 + k] for it in items)]
                e = ci_errors([it[1 + k] for it in items])
                ax.bar(x - 0.2 + 0.4 * k, np.nan_to_num(v), 0.38, yerr=e, color=colour, label=lab, hatch=hatch,
                       error_kw={"elinewidth": 0.7, "capsize": 1.2})
            ax.set_xticks(x)
            ax.set_xticklabels([it[0] for it in items], fontsize=6.5)
            ax.set_ylabel("IA average (x100)")
            ax.axhline(0, color="#444444", linewidth=0.6)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
        fig.tight_layout()
        return Figure(name, title, caption, _png(fig))


def _pair_labels(pairs: Sequence[tuple[str, str]]) -> tuple[list[str], str]:
    """Tick labels for (model, recipe) pairs: the recipe alone when every pair has the same model."""
    models = {m for m, _ in pairs}
    if len(models) == 1:
        return [RECIPE_NAMES.get(r, r) for _, r in pairs], next(iter(models))
    return [f"{_wrap(m)}\n{RECIPE_NAMES.get(r, r)}" for m, r in pairs], ""


def _wrap(name: str, width: int = 10) -> str:
    """A long model name broken at its first hyphen past a few characters, so neighbouring tick labels keep apart."""
    cut = name.find("-", 3)
    return f"{name[:cut]}-\n{name[cut + 1:]}" if len(name) > width and cut > 0 else name


SEED_LINESTYLES = ["-", "--", ":", "-."]


def _fine_tune_panels(plt, runs: Sequence[dict], ylabel: str):
    """One panel per base model (shared y axis): (figure, {model: axis}, {run name: (colour, linestyle)}).
    Colour = recipe; line style = training seed within a model and recipe."""
    models = list(dict.fromkeys(t["model"] for t in runs))
    fig, axes = plt.subplots(1, len(models), figsize=(max(5.2, 3.4 * len(models)), 2.6), sharey=True, squeeze=False)
    panels = dict(zip(models, axes[0], strict=True))
    for model, ax in panels.items():
        ax.set_title(model)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel(ylabel)
    seed = {t["name"]: ((t.get("summary") or {}).get("settings") or {}).get("seed") or 0 for t in runs}
    styles = {}
    for i, t in enumerate(runs):
        seeds = sorted({seed[u["name"]] for u in runs if (u["model"], u["recipe"]) == (t["model"], t["recipe"])})
        styles[t["name"]] = (RECIPE_COLOURS.get(t["recipe"], PALETTE[i % len(PALETTE)]),
                             SEED_LINESTYLES[seeds.index(seed[t["name"]]) % len(SEED_LINESTYLES)])
    return fig, panels, styles


def figure_loss(training: Sequence[dict]) -> Figure:
    """Training loss curves of every fine-tuned model (raw and smoothed), a panel per base model."""
    name, title = "training_loss", "Training loss"
    caption = ("Loss per optimisation step, a panel per base model (light: raw; dark: exponential moving average, "
               "alpha 0.2; colour = recipe, line style = training seed). Legend: held-out answer token F1 before "
               "-> after training.")
    logs = [t for t in training if t.get("log") is not None and len(t["log"])]
    if not logs:
        return Figure(name, title, caption, reason="no train_log.csv in this run (no model was fine-tuned)")
    plt = _plt()
    with plt.rc_context(MPL_STYLE):
        fig, panels, styles = _fine_tune_panels(plt, logs, "loss")
        for t in logs:
            log, ax = t["log"], panels[t["model"]]
            colour, linestyle = styles[t["name"]]
            f1 = ""
            s = t.get("summary") or {}
            if num(s.get("heldout_token_f1_before")) is not None and num(s.get("heldout_token_f1_after")) is not None:
                f1 = f"  (F1 {_f1(s['heldout_token_f1_before'])} -> {_f1(s['heldout_token_f1_after'])})"
            label = f"{t['name']}{f1}"
            draw_loss(ax, log["step"], log["loss"], label=label, color=colour, linestyle=linestyle)
        for ax in panels.values():
            ax.legend(fontsize=6)
        return Figure(name, title, caption, _png(fig))


def figure_heldout(training: Sequence[dict]) -> Figure:
    """Held-out answer token F1 over the training steps of every fine-tune (train.heldout_every)."""
    name, title = "heldout_f1", "Held-out answer F1 during fine-tuning"
    caption = ("Answer token F1 (x100) on the recipe's held-out questions at each check (train.heldout_every), a "
               "panel per base model: step 0 = before training, last point = the model kept; ring = the best "
               "check; a cross marks a run stopped because the F1 had stopped rising (train.stop_when_flat). "
               "Colour = recipe, line style = training seed.")
    curves = [t for t in training if len((t.get("summary") or {}).get("heldout_curve") or []) >= 2]
    if not curves:
        return Figure(name, title, caption, reason="no held-out F1 curve in this run (no model was fine-tuned)")
    plt = _plt()
    with plt.rc_context(MPL_STYLE):
        fig, panels, styles = _fine_tune_panels(plt, curves, "held-out F1")
        for t in curves:
            s, ax = t["summary"], panels[t["model"]]
            colour, linestyle = styles[t["name"]]
            points = [p for p in s["heldout_curve"] if num(p.get("f1")) is not None]
            steps = [int(p["step"]) for p in points]
            f1 = [100 * float(p["f1"]) for p in points]
            if not f1:
                continue
            draw_heldout(ax, steps, f1, label=t["name"], color=colour, linestyle=linestyle,
                         stopped=bool(s.get("stopped_early")))
        for ax in panels.values():
            ax.legend(fontsize=6)
        return Figure(name, title, caption, _png(fig))


def _f1(x: Any) -> str:
    v = num(x)
    if v is None:
        return "n/a"
    return f"{v * 100:.1f}" if v <= 1.0 else f"{v:.1f}"


def figure_clustering(scores: pd.DataFrame, runs: Sequence[Run], long: Sequence[Mapping[str, Any]] = ()) -> Figure:
    """V-measure per clustering task and subset: mean over seeds, the tables' 95% interval, seeds as dots."""
    name, title = "clustering_seeds", "Clustering scores over seeds"
    caption = ("V-measure (x100) per clustering task and subset (view), for each model and recipe at its headline "
               "mode: bar = mean over seeds, error bar = the 95% interval of the appendix table (items resampled, "
               "the seeds' spread added), dots = individual seeds.")
    bounds = {(r["task"], r["model"], r["recipe"], r["mode"], r["subset"]): (r["low"], r["high"]) for r in long
              if r["metric"] == "v_measure" and r["low"] is not None}
    tasks = clustering_tasks(scores)
    if not tasks:
        return Figure(name, title, caption, reason="no clustering scores in this run")
    sel = set(runs)
    plt = _plt()
    encoders = encoder_models(runs)
    with plt.rc_context(MPL_STYLE):
        fig, axes = plt.subplots(1, len(tasks), figsize=(max(3.0, 2.6 * len(tasks)), 2.7), squeeze=False)
        handles = {}
        for ax, task in zip(axes[0], tasks, strict=True):
            d = scores[(scores["task"] == task) & (scores["metric"] == "v_measure") & scores["value"].notna()]
            d = d[[run in sel for run in runs_of(d)]]
            subsets = sorted(set(d["subset"]), key=lambda s: (s == "hmean", s))
            task_runs = sorted(set(runs_of(d)), key=lambda r: r.sort_key)
            if not task_runs:
                ax.set_title(task)
                ax.text(0.5, 0.5, "no headline runs", ha="center", va="center", transform=ax.transAxes)
                continue
            x = np.arange(len(subsets))
            w = 0.8 / len(task_runs)
            for i, run in enumerate(task_runs):
                colour = run_colour(run, encoders)
                rd = d[(d["model"] == run[0]) & (d["recipe"] == run[1]) & (d["mode"] == run[2])]
                for j, sub in enumerate(subsets):
                    vals = rd[rd["subset"] == sub].groupby("seed")["value"].mean().to_numpy() * SCALE
                    if vals.size == 0:
                        continue
                    xi = x[j] - 0.4 + w * (i + 0.5)
                    low, high = bounds.get((task, run[0], run[1], run[2], sub), (vals.mean(), vals.mean()))
                    err = [[max(vals.mean() - low, 0.0)], [max(high - vals.mean(), 0.0)]]
                    h = ax.bar(xi, vals.mean(), w * 0.9, yerr=err, color=colour, alpha=0.85,
                               error_kw={"elinewidth": 0.7, "capsize": 1.2})
                    ax.scatter(np.full(vals.size, xi), vals, s=4, color="#222222", zorder=3, linewidths=0)
                    handles[run.label] = h
            ax.set_xticks(x)
            ax.set_xticklabels(subsets)
            ax.set_title(task, fontsize=8)
            ax.set_ylabel("V-measure (x100)")
        fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=min(3, len(handles)),
                   bbox_to_anchor=(0.5, -0.08 - 0.04 * (len(handles) // 3)))
        fig.tight_layout()
        return Figure(name, title, caption, _png(fig))


def figure_robustness(rows: Sequence[dict]) -> Figure:
    """Mean V-measure for correct / implicit / incorrect instructions per robustness task and run."""
    name, title = "robustness", "Robustness to the wording of the instruction"
    caption = ("Mean V-measure (x100) over the correct, implicit and incorrect instructions of each robustness task; "
               "error bars = sd over instructions (and seeds). A robust, instruction-following embedder scores high "
               "on correct and implicit instructions and low on incorrect ones.")
    rows = [r for r in rows if r["groups"]]
    if not rows:
        return Figure(name, title, caption, reason="no robustness scores in this run")
    tasks = sorted({r["task"] for r in rows})
    plt = _plt()
    encoders = encoder_models([r["run"] for r in rows])
    with plt.rc_context(MPL_STYLE):
        fig, axes = plt.subplots(1, len(tasks), figsize=(max(3.2, 3.0 * len(tasks)), 2.6), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            trows = [r for r in rows if r["task"] == task]
            series = [(r["label"], run_colour(r["run"], encoders),
                       [r["groups"].get(g, (None,))[0] for g in ROBUSTNESS_GROUPS],
                       [r["groups"].get(g, (None, 0.0))[1] for g in ROBUSTNESS_GROUPS]) for r in trows]
            _grouped_bars(ax, list(ROBUSTNESS_GROUPS), series)
            ax.set_title(task, fontsize=8)
            ax.set_ylabel("V-measure (x100)")
            ax.legend(fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        fig.tight_layout()
        return Figure(name, title, caption, _png(fig))


def figure_projection(views: Mapping[str, Mapping[str, tuple[np.ndarray, list[str]]]],
                      labels: Mapping[str, Mapping[str, str]], title_suffix: str = "") -> Figure:
    """PCA of one two-view task's embeddings: one panel per (run, instruction, colouring view).

    views: run label -> instruction view -> (embeddings [N, H], texts); labels: view -> text -> label.
    """
    name, title = "projection", "2-D projection of a two-view task under each instruction" + title_suffix
    caption = ("PCA (2 components, fitted per panel on L2-normalised embeddings) of the same utterances embedded "
               "under each instruction; the colours are each view's gold labels. An instruction-following embedder "
               "separates the colours of the view its instruction asks about (the panels framed in blue).")
    if not views:
        return Figure(name, title, caption, reason="no cached embeddings for the projection")
    from sklearn.decomposition import PCA

    colour_views = sorted(labels)
    instr_views = sorted({v for per in views.values() for v in per})
    plt = _plt()
    ncols = len(instr_views) * len(colour_views)
    with plt.rc_context(MPL_STYLE | {"axes.grid": False}):
        fig, axes = plt.subplots(len(views), ncols, figsize=(1.95 * ncols, 1.95 * len(views) + 0.5),
                                 squeeze=False)
        for i, (run, per) in enumerate(views.items()):
            for j, iv in enumerate(instr_views):
                if iv not in per:
                    continue
                X, texts = per[iv]
                X = np.asarray(X, dtype=float)
                X = X / np.clip(np.linalg.norm(X, axis=1, keepdims=True), 1e-12, None)
                xy = PCA(n_components=2, random_state=0).fit_transform(X) if len(X) > 2 else np.zeros((len(X), 2))
                for k, cv in enumerate(colour_views):
                    ax = axes[i][j * len(colour_views) + k]
                    lab = [labels[cv].get(t) for t in texts]
                    cats = sorted({x for x in lab if x is not None})
                    cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
                    idx = {c: n for n, c in enumerate(cats)}
                    colours = [cmap(idx[x] % cmap.N) if x is not None else (0.8, 0.8, 0.8, 1) for x in lab]
                    ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=3, linewidths=0)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    for spine in ax.spines.values():  # the panels where instruction and colouring agree stand out
                        spine.set_visible(True)
                        spine.set_color("#0b4f8a" if iv == cv else "#999999")
                        spine.set_linewidth(1.6 if iv == cv else 0.6)
                    ax.set_title(f"instruction: {iv}\ncolour: {cv} labels", fontsize=6.5)
                    if j == 0 and k == 0:
                        ax.set_ylabel(run, fontsize=7)
        fig.tight_layout()
        return Figure(name, title, caption, _png(fig))
