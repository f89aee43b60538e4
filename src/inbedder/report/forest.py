"""The forest plot of each claim: every comparison's paired difference and its 95% interval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from inbedder.report.figures import MPL_STYLE, Figure, _plt, _png

OUTCOME_COLOURS = {"supported": "#1B7F3B", "contradicted": "#BE2828", "inconclusive": "#B8860B"}


def figure_forest(number: int, title: str, results: Sequence[Any], margin: float | None = None) -> Figure:
    """Forest plot of one claim: each comparison's paired difference and 95% interval, the zero line, and the
    margin beside the rows it applies to."""
    name = f"forest_claim{number}"
    fig_title = f"Claim {number}: {title} — paired differences"
    caption = ("Each row is one comparison (run minus reference, x100): the dot is the difference, the bar its 95% "
               "interval; colour = outcome after Holm's correction (green supported, red contradicted, amber "
               "inconclusive); pale rows are shown beside the deciding ones and decide nothing. Hollow diamonds: "
               "the paper's own numbers, which have no CI. Solid line: zero"
               + (f"; dashed segments: the {margin:.1f}-point margin of 'competitive', on the generic rows it "
                  "applies to." if margin is not None else "."))
    rows = [(res.scope, e) for res in results for e in res.evidence if e.diff is not None]
    if not rows:
        return Figure(name, fig_title, caption, reason="no comparison could be made in this run")
    plt = _plt()
    with plt.rc_context(MPL_STYLE):
        fig, ax = plt.subplots(figsize=(7.0, 0.9 + 0.28 * len(rows)))
        ys = np.arange(len(rows))[::-1]
        labels = []
        for y, (scope, e) in zip(ys, rows, strict=True):
            colour = OUTCOME_COLOURS.get(e.outcome or "", "#777777")
            alpha = 1.0 if e.decisive else 0.4
            short = e.detail.split(",")[0].split(" (")[0]
            labels.append(f"{scope}: {e.label} vs {e.reference_label}" + (f" [{short}]" if number == 4 else ""))
            if e.comparison is not None:
                ax.errorbar(e.diff, y, xerr=[[e.diff - e.low], [e.high - e.diff]], fmt="o", color=colour,
                            markersize=4, elinewidth=1.2, capsize=2, alpha=alpha)
            else:
                ax.plot(e.diff, y, "D", markerfacecolor="white", markeredgecolor=colour, markersize=5, alpha=alpha)
            if margin is not None and e.threshold == -margin:
                ax.plot([-margin, -margin], [y - 0.4, y + 0.4], color="#333333", linewidth=0.9, linestyle="--")
        ax.axvline(0, color="#333333", linewidth=0.8)
        ax.set_yticks(ys)
        ax.set_yticklabels(labels, fontsize=6.5)
        ax.set_xlabel("difference (x100)")
        ax.grid(axis="x", alpha=0.35, linestyle=":")
        ax.grid(axis="y", visible=False)
        return Figure(name, fig_title, caption, _png(fig))
