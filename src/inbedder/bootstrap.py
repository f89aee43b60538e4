"""Percentile bootstrap confidence intervals of every score, and paired comparisons of two runs.

What is resampled: the *items* of a task (triplets, sentence pairs, the texts of a cluster set, the
queries of a reranking task) and, where a score exists for several seeds (k-means seeds; fine-tuning
seeds), the seeds too, hierarchically: seeds first, then items. Items and seeds are crossed (every
seed scores the same items), so one replicate draws the seeds with replacement, draws one resample of
the items, scores every drawn seed on those items and averages.

The resample of a task's items is a function of the task, subset, cluster set and item count only
(`resample_key`), never of the run: replicate b of every run scores the same items. A paired
comparison of two runs is then the difference of their replicates (items resampled jointly), and an
average over tasks is the average of the tasks' replicates.

Per-item data (what evaluate keeps beside each score table, `ITEM_COLUMNS`), by statistic:
- `mean`: one number per item whose mean is the score (triplet correctness 0/1; a query's average
  precision);
- `spearman`: the item's cosine similarity (`value`) and gold score (`gold`);
- `v_measure`: the text's cluster id (`value`) and gold label (`label`); the V-measure of that fixed
  assignment is scored on each resample of the texts (k-means is not rerun).
`group` names a stratum inside one score (an mteb cluster set): items are resampled within their
group, the statistic is computed per group and averaged over groups with equal weights (as mteb
averages its cluster sets).

Outcomes of a comparison against a threshold t (0, or minus the allowed margin): `supported` when the
whole CI of the difference lies above t, `contradicted` when it lies below, `inconclusive` when it
spans t. A CI computed from fewer than `MIN_ITEMS` items is flagged (`few_items`) and the report says so.

All replicate arithmetic is vectorised over the B resamples: a resample is a row of an index matrix
drawn once; sums are bincounts; ranks come from one sort per matrix.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

N_BOOT = 1000  # resamples per interval
LEVEL = 0.95  # coverage of every interval
BOOT_SEED = 0  # base seed of every resample
MIN_ITEMS = 20  # fewer items than this: the interval is flagged as unreliable

STATISTICS = ("mean", "spearman", "v_measure")
OUTCOMES = ("supported", "contradicted", "inconclusive")
ITEM_COLUMNS = ("model", "recipe", "task", "mode", "layer", "subset", "metric", "seed", "train_seed", "group",
                "item", "statistic", "value", "gold", "label")
NO_SEED = -1
SEED_KEYS = ("train_seed", "seed")  # the seed levels, outermost first


class BootstrapError(ValueError):
    """Per-item data that cannot be bootstrapped; the message names the score and what is wrong."""


# ----------------------------------------------------------------------------------------------------------
# resamples


def _rng(key: str, seed: int) -> np.random.Generator:
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, digest]))


def resample_key(task: str, subset: str, group: str = "") -> str:
    """The key a score's item resample is drawn from: the same for every run of the task."""
    return f"{task}\x1f{subset}\x1f{group}"


def item_indices(key: str, n: int, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """[n_boot, n] indices of n items drawn with replacement, a function of (key, n, n_boot, seed) only."""
    if n < 1:
        raise BootstrapError(f"{key!r}: no items to resample")
    return _rng(f"items\x1f{key}\x1f{n}", seed).integers(0, n, size=(n_boot, n))


def seed_weights(key: str, units: Sequence[tuple], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """[n_boot, U] weights (rows sum to 1) of the seed units of a hierarchical resample.

    `units` are tuples of seeds, outermost level first ((training seed, k-means seed)). Each level is drawn
    with replacement within the drawn value of the level above; a unit's weight is the share of the final
    draws that landed on it. (Within one replicate, a training seed drawn twice shares one draw of its
    k-means seeds: a small simplification of the nested draw.)
    """
    units = [tuple(u) for u in units]
    if not units:
        raise BootstrapError(f"{key!r}: no seed units")
    if len(set(units)) != len(units) or len({len(u) for u in units}) != 1:
        raise BootstrapError(f"{key!r}: seed units must be distinct tuples of one length, got {units}")
    return _level_weights(_rng(f"seeds\x1f{key}\x1f{units}", seed), units, n_boot)


def _level_weights(rng: np.random.Generator, units: list[tuple], n_boot: int) -> np.ndarray:
    if len(units) == 1:
        return np.ones((n_boot, 1))
    tops = list(dict.fromkeys(u[0] for u in units))
    draws = rng.integers(0, len(tops), size=(n_boot, len(tops)))
    share = _row_counts(draws, len(tops)) / len(tops)
    weights = np.zeros((n_boot, len(units)))
    for t, top in enumerate(tops):
        members = [i for i, u in enumerate(units) if u[0] == top]
        inner = _level_weights(rng, [units[i][1:] for i in members], n_boot)
        weights[:, members] = share[:, t : t + 1] * inner
    return weights


def _row_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """[B, n] how often each of n items appears in each row of an index matrix."""
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)


# ----------------------------------------------------------------------------------------------------------
# statistics on a resample: [U, n] per-unit item values -> [B, U] replicates


def mean_replicates(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean of each unit's item values on each resample."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    return _row_counts(idx, values.shape[1]) @ values.T / idx.shape[1]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank), vectorised over the other axes."""
    order = np.argsort(x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, axis=-1)
    n = x.shape[-1]
    pos = np.broadcast_to(np.arange(n, dtype=float), x.shape)
    new = np.ones(x.shape, dtype=bool)
    new[..., 1:] = xs[..., 1:] != xs[..., :-1]
    run_id = np.cumsum(new, axis=-1) - 1  # index of each tie run within its row
    rows = np.arange(int(np.prod(x.shape[:-1]))).reshape(x.shape[:-1] + (1,))
    flat = (rows * n + run_id).ravel()
    total = np.bincount(flat, weights=pos.ravel(), minlength=rows.size * n)
    count = np.bincount(flat, minlength=rows.size * n)
    mean_rank = (total / np.maximum(count, 1))[flat].reshape(x.shape) + 1.0
    ranks = np.empty_like(mean_rank)
    np.put_along_axis(ranks, order, mean_rank, axis=-1)
    return ranks


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=-1) / den
    return np.where(den > 0, r, 0.0)  # no variation, no ranking: 0, as metrics.pair_spearman


def spearman_replicates(values: np.ndarray, gold: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Spearman of each unit's similarities with the gold scores on each resample."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    gold_ranks = _ranks(np.asarray(gold, dtype=float)[idx])
    return np.stack([_pearson_rows(_ranks(v[idx]), gold_ranks) for v in values], axis=1)


def v_measure_replicates(clusters: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """V-measure of each unit's fixed cluster assignment against the labels on each resample (sklearn's
    definition: harmonic mean of homogeneity and completeness, natural-log entropies)."""
    clusters = np.atleast_2d(np.asarray(clusters))
    b, m = idx.shape
    # Every resample holds m items, so the entropy of its counts c is log m - sum(c log c) / m, with
    # c log c looked up for the integers 0..m (a positive entropy of m items is at least ~log(m) / m).
    # The joint counts run over the (label, cluster) pairs the items have, at most n of them, not over
    # every pair of a label and a cluster.
    c_log_c = np.zeros(m + 1)
    c_log_c[1:] = np.arange(1, m + 1) * np.log(np.arange(1, m + 1))

    def entropy(codes: np.ndarray) -> np.ndarray:  # [B]: of codes (0..k-1 per item) on each resample
        counts = _row_counts(codes[idx], int(codes.max()) + 1).astype(np.intp)
        h = np.log(m) - c_log_c[counts].sum(axis=1) / m
        return np.where(h > 1e-9, h, 0.0)  # one code: 0, not the rounding of log m - m log m / m

    _, lab = np.unique(np.asarray(labels), return_inverse=True)
    h_c = entropy(lab)
    out = np.empty((b, clusters.shape[0]))
    for u, assignment in enumerate(clusters):
        _, clu = np.unique(assignment, return_inverse=True)
        _, pair = np.unique(lab * (int(clu.max()) + 1) + clu, return_inverse=True)
        h_k = entropy(clu)
        h_joint = entropy(pair)
        h_ck = h_joint - h_k  # H(C|K) = H(C,K) - H(K)
        h_kc = h_joint - h_c
        homogeneity = np.where(h_c > 0, 1.0 - h_ck / np.where(h_c > 0, h_c, 1.0), 1.0)
        completeness = np.where(h_k > 0, 1.0 - h_kc / np.where(h_k > 0, h_k, 1.0), 1.0)
        s = homogeneity + completeness
        out[:, u] = np.where(s > 0, 2.0 * homogeneity * completeness / np.where(s > 0, s, 1.0), 0.0)
    return out


# ----------------------------------------------------------------------------------------------------------
# one score's per-item data across its seed units


@dataclass
class Series:
    """The per-item data of one score (one task, subset and metric of one run) across its seed units."""

    key: str  # resample key (resample_key): the same for every run of the task
    statistic: str
    units: list[tuple]  # seed units, e.g. [(train_seed, kmeans_seed), ...]
    values: np.ndarray  # [U, n]
    groups: np.ndarray  # [n] stratum of each item ("" everywhere when none)
    gold: np.ndarray | None = None  # [n] (spearman)
    labels: np.ndarray | None = None  # [n] (v_measure)
    items: np.ndarray | None = None  # [n] item ids, for checking that two runs score the same items

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise BootstrapError(f"{self.key!r}: unknown statistic {self.statistic!r}; expected one of {STATISTICS}")
        self.values = np.atleast_2d(np.asarray(self.values, dtype=float))
        if self.values.shape[0] != len(self.units):
            raise BootstrapError(f"{self.key!r}: {self.values.shape[0]} rows of values for {len(self.units)} seeds")
        if self.statistic == "spearman" and self.gold is None:
            raise BootstrapError(f"{self.key!r}: a spearman score needs the gold scores")
        if self.statistic == "v_measure" and self.labels is None:
            raise BootstrapError(f"{self.key!r}: a v_measure score needs the gold labels")

    @property
    def n(self) -> int:
        """Number of items."""
        return int(self.values.shape[1])

    def item_replicates(self, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
        """[B, U]: each seed unit scored on each resample of the items (one resample shared by all units)."""
        return self._by_group(lambda group, n: item_indices(f"{self.key}\x1f{group}", n, n_boot, seed))

    def point(self) -> np.ndarray:
        """[U]: the statistic of each unit on the items as they are."""
        return self._by_group(lambda group, n: np.arange(n)[None, :])[0]

    def _by_group(self, indices) -> np.ndarray:
        """The statistic per group on the index matrices `indices(group, n)`, averaged over groups."""
        out = []
        for group in dict.fromkeys(self.groups.tolist()):
            cols = np.flatnonzero(self.groups == group)
            idx = indices(group, len(cols))
            values = self.values[:, cols]
            if self.statistic == "mean":
                out.append(mean_replicates(values, idx))
            elif self.statistic == "spearman":
                out.append(spearman_replicates(values, self.gold[cols], idx))
            else:
                out.append(v_measure_replicates(values, self.labels[cols], idx))
        return np.mean(out, axis=0)


def replicates(series: Series, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """[B] hierarchical replicates of a score: seeds drawn, then items; drawn seeds averaged."""
    per_unit = series.item_replicates(n_boot, seed)
    weights = seed_weights(series.key, series.units, n_boot, seed)
    return (per_unit * weights).sum(axis=1)


def hmean_replicates(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise harmonic mean of replicate arrays (0 where any part is <= 0), as subsets combine."""
    stack = np.stack([np.asarray(p, dtype=float) for p in parts])
    with np.errstate(divide="ignore"):
        out = len(stack) / np.sum(1.0 / np.where(stack > 0, stack, np.inf), axis=0)
    return np.where(np.all(stack > 0, axis=0), out, 0.0)


# ----------------------------------------------------------------------------------------------------------
# intervals and comparisons


def percentile_ci(reps: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of replicates."""
    reps = np.asarray(reps, dtype=float)
    if reps.size == 0 or not np.all(np.isfinite(reps)):
        raise BootstrapError("percentile_ci: needs finite replicates")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclass
class Estimate:
    """A score (the point estimate), its percentile CI and what it rests on; replicates kept for comparisons."""

    value: float
    low: float
    high: float
    n_items: int
    n_seeds: int = 1
    replicates: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @property
    def few_items(self) -> bool:
        """Whether the interval rests on fewer than MIN_ITEMS items (and must say so)."""
        return self.n_items < MIN_ITEMS

    @property
    def half_width(self) -> float:
        """Half the width of the CI."""
        return (self.high - self.low) / 2.0

    def scaled(self, factor: float) -> Estimate:
        """The same estimate in other units (fractions -> points)."""
        return Estimate(self.value * factor, self.low * factor, self.high * factor, self.n_items, self.n_seeds,
                        self.replicates * factor)


def estimate(value: float, reps: np.ndarray, n_items: int, n_seeds: int = 1, level: float = LEVEL) -> Estimate:
    """An Estimate of `value` with the percentile CI of its replicates."""
    low, high = percentile_ci(reps, level)
    return Estimate(float(value), low, high, int(n_items), int(n_seeds), np.asarray(reps, dtype=float))


def combine_mean(parts: Sequence[Estimate], level: float = LEVEL) -> Estimate:
    """The mean of several scores (an average over tasks): mean of the points and of the replicates."""
    if not parts:
        raise BootstrapError("combine_mean: nothing to average")
    reps = np.mean([p.replicates for p in parts], axis=0)
    return estimate(float(np.mean([p.value for p in parts])), reps, min(p.n_items for p in parts),
                    max(p.n_seeds for p in parts), level)


def outcome(low: float, high: float, threshold: float = 0.0) -> str:
    """supported (CI above the threshold), contradicted (below it) or inconclusive (it spans it)."""
    if low > threshold:
        return "supported"
    if high < threshold:
        return "contradicted"
    return "inconclusive"


@dataclass
class Comparison:
    """Run a minus run b on the same items: the difference, its paired CI and what this run could detect."""

    diff: float
    low: float
    high: float
    threshold: float
    n_items: int
    n_seeds: int = 1

    @property
    def outcome(self) -> str:
        """supported / contradicted / inconclusive against the threshold."""
        return outcome(self.low, self.high, self.threshold)

    @property
    def detectable(self) -> float:
        """The smallest difference this comparison could have detected: the half-width of its CI."""
        return (self.high - self.low) / 2.0

    @property
    def few_items(self) -> bool:
        """Whether the comparison rests on fewer than MIN_ITEMS items."""
        return self.n_items < MIN_ITEMS

    @property
    def scale_needed(self) -> float | None:
        """How many times the items (or seeds) would make an inconclusive comparison decidable; None when decided.

        The CI's half-width w shrinks as 1/sqrt(n) with the number of items n (and likewise with the number
        of seeds where the spread across seeds dominates). At the observed distance d = |diff - threshold|
        of the difference from the threshold, the CI excludes the threshold once w * sqrt(n / n') < d, i.e.
        n' / n > (w / d)^2. Returns (w / d)^2 (infinite when the difference sits on the threshold).
        """
        if self.outcome != "inconclusive":
            return None
        distance = abs(self.diff - self.threshold)
        return math.inf if distance == 0 else (self.detectable / distance) ** 2

    @property
    def items_needed(self) -> float | None:
        """The item count at which the comparison would be decidable at the observed effect (scale_needed x n)."""
        scale = self.scale_needed
        return None if scale is None else (math.inf if math.isinf(scale) else math.ceil(scale * self.n_items))


def paired_difference(a: Estimate, b: Estimate, threshold: float = 0.0, level: float = LEVEL) -> Comparison:
    """a - b with the CI of the difference of their replicates (the same resamples: items drawn jointly)."""
    if a.replicates.shape != b.replicates.shape or a.replicates.size == 0:
        raise BootstrapError(f"paired_difference: replicates of shape {a.replicates.shape} and "
                             f"{b.replicates.shape}; both need the same resamples")
    low, high = percentile_ci(a.replicates - b.replicates, level)
    return Comparison(a.value - b.value, low, high, threshold, min(a.n_items, b.n_items), min(a.n_seeds, b.n_seeds))


def mean_difference(comparisons: Sequence[tuple[Estimate, Estimate]], threshold: float = 0.0,
                    level: float = LEVEL) -> Comparison:
    """The mean of several paired differences (e.g. the mean gain of filtering over every pair)."""
    if not comparisons:
        raise BootstrapError("mean_difference: no pairs")
    diffs = np.mean([a.replicates - b.replicates for a, b in comparisons], axis=0)
    low, high = percentile_ci(diffs, level)
    point = float(np.mean([a.value - b.value for a, b in comparisons]))
    return Comparison(point, low, high, threshold, min(min(a.n_items, b.n_items) for a, b in comparisons),
                      min(min(a.n_seeds, b.n_seeds) for a, b in comparisons))


# ----------------------------------------------------------------------------------------------------------
# per-item tables (what evaluate writes beside each score table)


def item_rows(subset: str, metric: str, seed: int | None, statistic: str, values: Sequence[float], *,
              gold: Sequence[float] | None = None, labels: Sequence | None = None,
              groups: Sequence[str] | None = None) -> list[dict]:
    """Per-item rows of one score of one (mode, layer): item i is the i-th value (numbered within its group)."""
    if statistic not in STATISTICS:
        raise BootstrapError(f"{subset}/{metric}: unknown statistic {statistic!r}; expected one of {STATISTICS}")
    values = np.asarray(values, dtype=float)
    groups = [""] * len(values) if groups is None else [str(g) for g in groups]
    for name, other in (("gold", gold), ("labels", labels), ("groups", groups)):
        if other is not None and len(other) != len(values):
            raise BootstrapError(f"{subset}/{metric}: {len(values)} values but {len(other)} {name}")
    seen: dict[str, int] = {}
    out = []
    for i, value in enumerate(values):
        item = seen.get(groups[i], 0)
        seen[groups[i]] = item + 1
        out.append({"subset": subset, "metric": metric, "seed": NO_SEED if seed is None else int(seed),
                    "group": groups[i], "item": item, "statistic": statistic, "value": float(value),
                    "gold": float(gold[i]) if gold is not None else np.nan,
                    "label": str(labels[i]) if labels is not None else ""})
    return out


def item_frame(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Per-item rows as a typed table with ITEM_COLUMNS (missing gold/label/group filled)."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        frame = pd.DataFrame(columns=list(ITEM_COLUMNS))
    for col, fill in (("group", ""), ("label", ""), ("gold", np.nan), ("train_seed", NO_SEED), ("seed", NO_SEED)):
        if col not in frame.columns:
            frame[col] = fill
    missing = [c for c in ITEM_COLUMNS if c not in frame.columns]
    if missing:
        raise BootstrapError(f"per-item rows lack column(s) {missing}; expected {list(ITEM_COLUMNS)}")
    frame = frame[list(ITEM_COLUMNS)]
    types = {"layer": "int64", "seed": "int64", "train_seed": "int64", "item": "int64", "value": "float64",
             "gold": "float64"}
    frame = frame.astype(types)
    for col in ("model", "recipe", "task", "mode", "subset", "metric", "group", "statistic", "label"):
        frame[col] = frame[col].astype(str)
    return frame


def write_items(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a per-item table atomically (parquet)."""
    from inbedder.files import atomic_path

    with atomic_path(path) as tmp:
        item_frame(frame.to_dict("records")).to_parquet(tmp, index=False)


def read_items(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read and concatenate per-item tables, checking their columns."""
    frames = []
    for path in paths:
        frame = pd.read_parquet(path)
        missing = [c for c in ITEM_COLUMNS if c not in frame.columns]
        if missing:
            raise BootstrapError(f"{path}: missing column(s) {missing}; expected {list(ITEM_COLUMNS)}")
        frames.append(frame[list(ITEM_COLUMNS)])
    return item_frame(pd.concat(frames, ignore_index=True).to_dict("records")) if frames else item_frame([])


SCORE_KEYS = ("model", "recipe", "task", "mode", "layer", "subset", "metric")


def series_of(items: pd.DataFrame, seeds: Sequence[str] = SEED_KEYS) -> dict[tuple, Series]:
    """One Series per score (SCORE_KEYS) of a per-item table, its seed units from the `seeds` columns."""
    out: dict[tuple, Series] = {}
    for key, grp in items.groupby(list(SCORE_KEYS), sort=False):
        key = tuple(key)
        where = "/".join(str(k) for k in key)
        statistic = grp["statistic"].iloc[0]
        if (grp["statistic"] != statistic).any():
            raise BootstrapError(f"{where}: more than one statistic")
        grp = grp.sort_values([*seeds, "group", "item"], kind="stable")
        units = list(dict.fromkeys(zip(*(grp[c] for c in seeds), strict=True)))
        first = grp[(grp[list(seeds)] == pd.Series(dict(zip(seeds, units[0], strict=True)))).all(axis=1)]
        n = len(first)
        if len(grp) != n * len(units):
            raise BootstrapError(f"{where}: the seeds score different numbers of items ({len(grp)} rows, "
                                 f"{len(units)} seeds, {n} items in the first)")
        values = grp["value"].to_numpy(dtype=float).reshape(len(units), n)
        item_ids = grp["item"].to_numpy().reshape(len(units), n)
        group_ids = grp["group"].to_numpy().reshape(len(units), n)
        if not (item_ids == item_ids[0]).all() or not (group_ids == group_ids[0]).all():
            raise BootstrapError(f"{where}: the seeds do not score the same items")
        out[key] = Series(
            key=resample_key(key[2], key[5]), statistic=statistic, units=units, values=values, groups=group_ids[0],
            gold=first["gold"].to_numpy(dtype=float) if statistic == "spearman" else None,
            labels=first["label"].to_numpy() if statistic == "v_measure" else None,
            items=np.array([f"{g}\x1f{i}" for g, i in zip(group_ids[0], item_ids[0], strict=True)]),
        )
    return out


def score_intervals(scores: pd.DataFrame, items: pd.DataFrame, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                    level: float = LEVEL, hmean_subset: str = "hmean") -> pd.DataFrame:
    """scores with `ci_low`, `ci_high` per row: the CI of that row's score (its seed fixed) over its items.

    A row of subset `hmean` takes the harmonic mean of its subsets' replicates; a row without per-item
    data (robustness summaries, silhouette, mteb scores not kept per item) gets empty bounds.
    """
    out = scores.copy()
    out["ci_low"] = np.nan
    out["ci_high"] = np.nan
    if items.empty or scores.empty:
        return out
    cache: dict[tuple, np.ndarray] = {}  # score key -> [B, U] item replicates
    all_series = series_of(items, seeds=("seed",))

    def unit_reps(key: tuple, seed_value: int) -> np.ndarray | None:
        series = all_series.get(key)
        if series is None:
            return None
        if key not in cache:
            cache[key] = series.item_replicates(n_boot, seed)
        unit = (int(seed_value),)
        return cache[key][:, series.units.index(unit)] if unit in series.units else None

    by_score: dict[tuple, list[str]] = {}
    for key in all_series:
        by_score.setdefault(key[:5] + key[6:], []).append(key[5])
    for i, row in enumerate(out.itertuples(index=False)):
        seed_value = NO_SEED if pd.isna(row.seed) else int(row.seed)
        key = (str(row.model), str(row.recipe), str(row.task), str(row.mode), int(row.layer), str(row.subset),
               str(row.metric))
        if key[5] == hmean_subset:
            parts = [unit_reps(key[:5] + (s,) + key[6:], seed_value) for s in by_score.get(key[:5] + key[6:], [])]
            reps = hmean_replicates(parts) if parts and all(p is not None for p in parts) else None
        else:
            reps = unit_reps(key, seed_value)
        if reps is not None:
            out.iloc[i, out.columns.get_loc("ci_low")], out.iloc[i, out.columns.get_loc("ci_high")] = (
                percentile_ci(reps, level))
    return out


class ItemData:
    """A run's per-item data by score key (SCORE_KEYS); each score's item replicates are computed once."""

    def __init__(self, items: pd.DataFrame | None = None, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> None:
        self.series = series_of(items) if items is not None and not items.empty else {}
        self.n_boot, self.seed = n_boot, seed
        self._unit: dict[tuple, np.ndarray] = {}

    def __contains__(self, key: tuple) -> bool:
        return key in self.series

    def __bool__(self) -> bool:
        return bool(self.series)

    def unit_replicates(self, key: tuple) -> np.ndarray:
        """[B, U] item replicates of one score, per seed unit."""
        if key not in self.series:
            raise BootstrapError(f"no per-item data for {'/'.join(str(k) for k in key)}")
        if key not in self._unit:
            self._unit[key] = self.series[key].item_replicates(self.n_boot, self.seed)
        return self._unit[key]

    def combine(self, keys: Sequence[tuple], how: str = "one") -> tuple[np.ndarray, int, int]:
        """[B] replicates of one score (`one`), or of the harmonic mean (`hmean`) or mean (`mean`) of several
        subsets of one task, combined per seed unit before the seeds are resampled; with the item and seed counts."""
        if not keys or (how == "one" and len(keys) != 1):
            raise BootstrapError(f"combine({how!r}): got {len(keys)} score(s)")
        parts = [self.unit_replicates(k) for k in keys]
        units = self.series[keys[0]].units
        if any(self.series[k].units != units for k in keys[1:]):
            raise BootstrapError(f"{keys[0][2]}: the subsets were scored under different seeds")
        if how == "hmean":
            per_unit = hmean_replicates(parts)
        elif how in ("mean", "one"):
            per_unit = np.mean(parts, axis=0)
        else:
            raise BootstrapError(f"combine: unknown way {how!r}; expected one, hmean or mean")
        weights = seed_weights(self.series[keys[0]].key, units, self.n_boot, self.seed)
        return (per_unit * weights).sum(axis=1), min(self.series[k].n for k in keys), len(units)
