"""Confidence intervals of every score and paired comparisons of two runs: a half-sample bootstrap over
items, centred on the estimate, plus a t component over seeds.

Items. Replicate b keeps each item with probability 1/2 and scores the statistic on the kept half
(equivalently: weights 0 or 2, mean 1 and variance 1, as the multinomial bootstrap's; Praestgaard &
Wellner 1993). A kept item appears once, so the statistic of a replicate is the statistic of a real
sample: no duplicated texts, which inflate V-measure under the multinomial bootstrap. Whether an item
is kept depends only on its identity (`item_id`: the text, the triplet, the pair) and the replicate,
never on the run or the view: the two views of one item set, both directions of a triplet and both
instructions of a pair, and every run of a task, are resampled together, item by item.

Centring. A statistic on half the items has its own small-sample bias (V-measure's plug-in entropies
grow with fewer items); the replicates are centred on their median and moved to the estimate, so the
interval says how far the score moves between samples of the task's size, around the score itself.
Each interval therefore covers the expected score at the task's size (for means and correlations the
population value; for V-measure the value a fresh sample of the same size gives on average, which is
what every published V-measure at that size estimates). The centring is applied last, to the final
statistic (a harmonic mean of views, a mean over tasks, a difference of two runs), never to parts.

Seeds. Where a score exists for several seeds (training seeds; k-means seeds within one fine-tune),
the score is their mean, its items part is the mean of the seeds' item replicates (seeds and items are
crossed), and the spread between seeds at the outermost level with more than one seed adds a
component of variance s^2 / k. Training seeds: a normal component, and since few seeds estimate s
poorly the replicates are widened by t(nu) / z, nu the Welch-Satterthwaite degrees of freedom of the
two variances (items: infinite; k seeds: k - 1); with 3 seeds and the seeds dominating, the 95%
interval is 4.30 / 1.96 = 2.2x wider than a normal one, where resampling 3 seeds gives far too narrow
a range. K-means restarts (the k-means seeds of one fine-tune): a Student t component with k - 1 df,
added to the items' (the conservative convolution: restarts that fall into bad local optima make
their spread skewed, and Welch's normal theory then covers ~93%). Seeds are paired across the modes
and tasks of one fine-tune (the same training seeds produced both), independent across fine-tunes.

Why these choices are valid is shown by simulation: tests/test_coverage.py draws data sets from
processes whose value is known and checks that the 95% intervals cover it 93-97% of the time.

Outcomes against a threshold t: `supported` when the interval of the difference lies above t,
`contradicted` when below, `inconclusive` when it spans t; a claim's comparisons are corrected for
multiplicity by Holm's step-down rule on their bootstrap p-values (`holm`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
from scipy.special import stdtrit

N_BOOT = 1000  # replicates per interval
LEVEL = 0.95  # coverage of every interval
BOOT_SEED = 0  # base seed of every replicate
MIN_ITEMS = 20  # fewer items than this: the interval is flagged as unreliable
POWER = 0.80  # the power at which the minimum detectable effect is reported
FAMILY_ALPHA = 0.05  # family-wise error rate of each claim (Holm)

STATISTICS = ("mean", "spearman", "v_measure")
RANGES = {"spearman": (-1.0, 1.0), "v_measure": (0.0, 1.0)}  # a mean's range is that of its item values

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class BootstrapError(ValueError):
    """Data that cannot be bootstrapped; the message names the score and what is wrong."""


# ----------------------------------------------------------------------------------------------------------
# which items each replicate keeps


def item_hash(item_id: str) -> int:
    """A 64-bit hash of an item's identity (its text, triplet or pair)."""
    return int.from_bytes(hashlib.sha256(str(item_id).encode("utf-8")).digest()[:8], "little")


def _splitmix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, element-wise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def kept(hashes: Sequence[int] | np.ndarray, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
    """[n_boot, n] bool: whether replicate b keeps item i, each with probability 1/2, a function of the item's
    hash, b and the seed only (so every score of the same items draws the same halves)."""
    h = np.asarray(hashes, dtype=np.uint64)
    streams = _splitmix(np.arange(n_boot, dtype=np.uint64) + np.uint64(seed) * np.uint64(1 << 32))
    return (_splitmix(h[None, :] ^ streams[:, None]) >> np.uint64(63)).astype(bool)


def _counts(codes: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """[B, k] the weight of each code (0..k-1 per item) in each row of a [B, n] weight matrix."""
    b = weights.shape[0]
    flat = (np.arange(b)[:, None] * k + codes[None, :]).ravel()
    return np.bincount(flat, weights=weights.ravel(), minlength=b * k).reshape(b, k)


# ----------------------------------------------------------------------------------------------------------
# statistics on the kept items: [U, n] per-unit item values and a [B, n] mask -> [B, U]


def mean_replicates(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of each unit's values over the kept items (NaN where a replicate keeps none)."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    m = mask.sum(axis=1, keepdims=True).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (mask.astype(float) @ values.T) / m


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


def _masked_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    m = w.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = (a - (w * a).sum(axis=-1, keepdims=True) / m) * w
        b = (b - (w * b).sum(axis=-1, keepdims=True) / m) * w
        den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
        r = (a * b).sum(axis=-1) / den
    r = np.where(den > 0, r, 0.0)  # no variation, no ranking: 0, as metrics.pair_spearman
    return np.where(m[..., 0] >= 3, r, np.nan)


def spearman_replicates(values: np.ndarray, gold: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Spearman of each unit's similarities with the gold scores over the kept items (excluded items are
    ranked after every kept one, so the kept items' ranks are their ranks among themselves)."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    w = mask.astype(float)
    gold_ranks = _ranks(np.where(mask, np.asarray(gold, dtype=float)[None, :], np.inf))
    return np.stack([_masked_pearson(_ranks(np.where(mask, v[None, :], np.inf)), gold_ranks, w) for v in values],
                    axis=1)


def _entropies(codes: np.ndarray, w: np.ndarray, m: np.ndarray) -> np.ndarray:
    """[B]: entropy (natural log) of the codes of the kept items of each replicate."""
    counts = _counts(codes, w, int(codes.max()) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        c_log_c = np.where(counts > 0, counts * np.log(np.where(counts > 0, counts, 1.0)), 0.0).sum(axis=1)
        h = np.log(m) - c_log_c / m
    return np.where(h > 1e-9, h, 0.0)  # one code: 0, not the rounding of log m - m log m / m


def v_measure_replicates(clusters: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """V-measure of each unit's fixed cluster assignment against the labels over the kept items (sklearn's
    definition: harmonic mean of homogeneity and completeness, natural-log entropies)."""
    clusters = np.atleast_2d(np.asarray(clusters))
    w = mask.astype(float)
    m = w.sum(axis=1)
    _, lab = np.unique(np.asarray(labels), return_inverse=True)
    h_c = _entropies(lab, w, m)
    out = np.empty((w.shape[0], clusters.shape[0]))
    for u, assignment in enumerate(clusters):
        _, clu = np.unique(assignment, return_inverse=True)
        _, pair = np.unique(lab * (int(clu.max()) + 1) + clu, return_inverse=True)
        h_k, h_joint = _entropies(clu, w, m), _entropies(pair, w, m)
        homogeneity = np.where(h_c > 0, 1.0 - (h_joint - h_k) / np.where(h_c > 0, h_c, 1.0), 1.0)
        completeness = np.where(h_k > 0, 1.0 - (h_joint - h_c) / np.where(h_k > 0, h_k, 1.0), 1.0)
        s = homogeneity + completeness
        out[:, u] = np.where(s > 0, 2.0 * homogeneity * completeness / np.where(s > 0, s, 1.0), 0.0)
    out[m < 1] = np.nan
    return out


REPLICATES = {"mean": lambda values, mask, gold, labels: mean_replicates(values, mask),
              "spearman": lambda values, mask, gold, labels: spearman_replicates(values, gold, mask),
              "v_measure": lambda values, mask, gold, labels: v_measure_replicates(values, labels, mask)}


def hmean_replicates(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise harmonic mean of replicate arrays (0 where any part is <= 0), as subsets combine."""
    stack = np.stack([np.asarray(p, dtype=float) for p in parts])
    with np.errstate(divide="ignore", invalid="ignore"):
        out = len(stack) / np.sum(1.0 / np.where(stack > 0, stack, np.inf), axis=0)
    out = np.where(np.all(stack > 0, axis=0), out, 0.0)
    return np.where(np.isnan(stack).any(axis=0), np.nan, out)


# ----------------------------------------------------------------------------------------------------------
# seeds


TRAINING_SEEDS = "train_seed"  # seed levels by name (the per-item columns); the rest are k-means restarts


def seed_deviations(values: Mapping, identity: str, levels: Sequence[str] = ("train_seed", "seed"),
                    ) -> dict[str, dict]:
    """The seed structure of a score: {identity and level: {seed: value - mean}} over the seeds of its outermost
    seed level with more than one seed (empty when there is none). `values` maps seed units (tuples, one value
    per level of `levels`, outermost first) to the score of that unit."""
    units = {tuple(u): float(v) for u, v in values.items()}
    level = 0
    while units and len({u[0] for u in units}) == 1 and len(next(iter(units))) > 1:
        units, level = {u[1:]: v for u, v in units.items()}, level + 1
    top: dict = {}
    for u, v in units.items():
        top.setdefault(u[0], []).append(v)
    if len(top) < 2:
        return {}
    means = {k: float(np.mean(v)) for k, v in top.items()}
    centre = float(np.mean(list(means.values())))
    return {f"{identity}\x1f{levels[level]}": {k: v - centre for k, v in means.items()}}


def _rng(key: str, seed: int) -> np.random.Generator:
    digest = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([seed, digest]))


def _is_training(key: str) -> bool:
    return key.rsplit("\x1f", 1)[-1] == TRAINING_SEEDS


def seed_variances(seeds: Mapping[str, Mapping], training: bool | None = None) -> list[tuple[float, int]]:
    """Per identity with at least two seeds (only training seeds, or only k-means restarts, when `training`
    says so): (s^2 / k, k), the variance its seeds add to the mean of k seeds."""
    out = []
    for key in sorted(seeds):
        dev = np.array(list(seeds[key].values()), dtype=float)
        if dev.size >= 2 and (training is None or _is_training(key) == training):
            out.append((float((dev**2).sum()) / (dev.size - 1) / dev.size, int(dev.size)))
    return out


def seed_draws(seeds: Mapping[str, Mapping], training: bool, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
               ) -> np.ndarray:
    """[B] the seeds' component, summed over identities: training seeds a normal draw of variance s^2 / k (the
    interval is then widened by `t_inflation`); k-means restarts, whose spread is skewed by bad local optima,
    s / sqrt(k) x a Student t draw with k - 1 df (a conservative rule)."""
    out = np.zeros(n_boot)
    for key in sorted(seeds):
        k = len(seeds[key])
        if k < 2 or _is_training(key) != training:
            continue
        (var, _), = seed_variances({key: seeds[key]})
        rng = _rng(f"seeds\x1f{key}\x1f{k}", seed)
        out += math.sqrt(var) * (rng.standard_normal(n_boot) if training else rng.standard_t(k - 1, n_boot))
    return out


def t_inflation(item_var: float, seed_vars: Sequence[tuple[float, int]], level: float = LEVEL) -> float:
    """How much wider than normal the interval must be for few training seeds: t(nu) / z at the level, nu the
    Welch-Satterthwaite degrees of freedom of item variance (infinite df) plus the seeds' (k - 1 df each)."""
    seed_var = sum(v for v, _ in seed_vars)
    if seed_var <= 0:
        return 1.0
    nu = (item_var + seed_var) ** 2 / sum(v**2 / (k - 1) for v, k in seed_vars)
    q = 0.5 + level / 2.0
    return float(stdtrit(nu, q)) / NormalDist().inv_cdf(q)


def _add_seeds(parts: Sequence[tuple[float, Mapping[str, Mapping]]]) -> dict[str, dict]:
    """sum of coefficient x seed structure; seeds of one identity pair up by name."""
    out: dict[str, dict] = {}
    for coef, seeds in parts:
        for identity, devs in seeds.items():
            mine = out.setdefault(identity, {})
            if mine and set(mine) != set(devs):
                raise BootstrapError(f"{identity}: scored under different seeds ({sorted(mine)} vs {sorted(devs)})")
            for k, v in devs.items():
                mine[k] = mine.get(k, 0.0) + coef * v
    return out


# ----------------------------------------------------------------------------------------------------------
# estimates and comparisons


def centred(value: float, item: np.ndarray) -> np.ndarray:
    """The item replicates moved so that their median is the estimate."""
    item = np.asarray(item, dtype=float)
    if item.size == 0 or np.isfinite(item).sum() < 0.9 * item.size:
        raise BootstrapError("too few finite replicates (too few items to resample)")
    return value + (item - np.nanmedian(item))


def percentile_ci(reps: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of replicates (NaN replicates, from an empty half, left out)."""
    reps = np.asarray(reps, dtype=float)
    if reps.size == 0 or np.isfinite(reps).sum() < 0.9 * reps.size:
        raise BootstrapError("percentile_ci: needs finite replicates")
    alpha = (1.0 - level) / 2.0
    low, high = np.nanquantile(reps, [alpha, 1.0 - alpha])
    return float(low), float(high)


def clip(low: float, high: float, value: float, bounds: tuple[float, float]) -> tuple[float, float]:
    """An interval clipped to the range its statistic can take, and holding its own value whatever the rounding
    (a V-measure of 1 may come out a rounding error above 1)."""
    return min(max(low, bounds[0]), value), max(min(high, bounds[1]), value)


@dataclass
class Estimate:
    """A score (the point estimate), its interval and what it rests on. `item` holds the raw (uncentred) item
    replicates and `seeds` the seed structure, so that differences and means of estimates are exact."""

    value: float
    item: np.ndarray = field(repr=False)
    n_items: int
    n_seeds: int = 1
    seeds: dict[str, dict] = field(default_factory=dict, repr=False)
    level: float = LEVEL
    seed: int = BOOT_SEED
    bounds: tuple[float, float] | None = None  # the statistic's range: the interval is clipped to it

    def __post_init__(self) -> None:
        self.item = np.asarray(self.item, dtype=float)
        items = centred(0.0, self.item)
        item_var = float(np.nanvar(items))
        seed_var = sum(v for v, _ in seed_variances(self.seeds))
        self.seed_share = seed_var / (item_var + seed_var) if item_var + seed_var > 0 else 0.0
        inflation = t_inflation(item_var, seed_variances(self.seeds, training=True), self.level)
        b = self.item.size
        self.replicates = (self.value + inflation * (items + seed_draws(self.seeds, True, b, self.seed))
                           + seed_draws(self.seeds, False, b, self.seed))
        self.low, self.high = percentile_ci(self.replicates, self.level)
        if self.bounds is not None:
            self.low, self.high = clip(self.low, self.high, self.value, self.bounds)

    @property
    def few_items(self) -> bool:
        """Whether the interval rests on fewer than MIN_ITEMS items (and must say so)."""
        return self.n_items < MIN_ITEMS

    @property
    def half_width(self) -> float:
        """Half the width of the interval."""
        return (self.high - self.low) / 2.0

    def scaled(self, factor: float) -> Estimate:
        """The same estimate in other units (fractions -> points)."""
        out = linear([(factor, self)])
        if self.bounds is not None:
            out.bounds = tuple(sorted(b * factor for b in self.bounds))
            out.low, out.high = clip(out.low, out.high, out.value, out.bounds)
        return out


def linear(parts: Sequence[tuple[float, Estimate]]) -> Estimate:
    """sum of coefficient x estimate, the items of every part resampled jointly (differences, means)."""
    if not parts:
        raise BootstrapError("nothing to combine")
    shapes = {e.item.shape for _, e in parts}
    if len(shapes) != 1:
        raise BootstrapError(f"replicates of shapes {sorted(shapes)}; the parts need the same resamples")
    first = parts[0][1]
    return Estimate(float(sum(c * e.value for c, e in parts)), sum(c * e.item for c, e in parts),
                    min(e.n_items for _, e in parts), max(e.n_seeds for _, e in parts),
                    _add_seeds([(c, e.seeds) for c, e in parts]), first.level, first.seed)


def estimate(value: float, item: np.ndarray, n_items: int, n_seeds: int = 1, seeds: Mapping | None = None,
             level: float = LEVEL, bounds: tuple[float, float] | None = None) -> Estimate:
    """An Estimate of `value` from its raw item replicates and seed structure (clipped to `bounds`)."""
    return Estimate(float(value), np.asarray(item, dtype=float), int(n_items), int(n_seeds), dict(seeds or {}),
                    level, bounds=bounds)


def combine_mean(parts: Sequence[Estimate]) -> Estimate:
    """The mean of several scores (an average over tasks)."""
    if not parts:
        raise BootstrapError("combine_mean: nothing to average")
    return linear([(1.0 / len(parts), p) for p in parts])


def outcome(low: float, high: float, threshold: float = 0.0) -> str:
    """supported (interval above the threshold), contradicted (below it) or inconclusive (it spans it)."""
    if low > threshold:
        return "supported"
    if high < threshold:
        return "contradicted"
    return "inconclusive"


def _z(p: float) -> float:
    return NormalDist().inv_cdf(p)


@dataclass
class Comparison:
    """Run a minus run b on the same items: the difference, its interval, its p-value against the threshold, and
    the outcome after the claim's multiplicity correction (`family`, `adjusted_p`, set by `holm`)."""

    diff: float
    low: float
    high: float
    threshold: float
    n_items: int
    n_seeds: int = 1
    p_value: float = 1.0
    seed_share: float = 0.0  # share of the difference's variance from the seeds
    family: int = 1  # comparisons in the claim's family
    adjusted_p: float | None = None  # Holm-adjusted p (None: not corrected)

    @property
    def outcome(self) -> str:
        """supported / contradicted / inconclusive: the side of the threshold where the difference lies, when its
        (Holm-adjusted) p-value is below the family-wise level; else inconclusive."""
        if self.adjusted_p is None:
            return outcome(self.low, self.high, self.threshold)
        if self.adjusted_p >= FAMILY_ALPHA:
            return "inconclusive"
        return "supported" if self.diff > self.threshold else "contradicted"

    @property
    def standard_error(self) -> float:
        """The interval's half-width in standard errors (normal approximation)."""
        return (self.high - self.low) / (2.0 * _z(0.5 + LEVEL / 2.0))

    @property
    def detectable(self) -> float:
        """The minimum detectable effect: the true difference this comparison finds with probability POWER at
        the claim's family-wise level (Bonferroni over its `family` comparisons, Holm's first step)."""
        return (_z(1.0 - FAMILY_ALPHA / (2.0 * self.family)) + _z(POWER)) * self.standard_error

    @property
    def few_items(self) -> bool:
        """Whether the comparison rests on fewer than MIN_ITEMS items."""
        return self.n_items < MIN_ITEMS


def p_value(reps: np.ndarray, threshold: float) -> float:
    """Two-sided bootstrap p-value of `threshold`: twice the smaller share of replicates on either side of it
    (the level at which the percentile interval would just touch the threshold), at least 1 / B."""
    reps = np.asarray(reps, dtype=float)
    reps = reps[np.isfinite(reps)]
    below, above = float(np.mean(reps <= threshold)), float(np.mean(reps >= threshold))
    return float(min(1.0, max(2.0 * min(below, above), 1.0 / reps.size)))


def paired_difference(a: Estimate, b: Estimate, threshold: float = 0.0) -> Comparison:
    """a - b with the interval of the difference (items resampled jointly, shared seeds paired)."""
    d = linear([(1.0, a), (-1.0, b)])
    return _comparison(d, threshold)


def mean_difference(pairs: Sequence[tuple[Estimate, Estimate]], threshold: float = 0.0) -> Comparison:
    """The mean of several paired differences (e.g. the mean gain of filtering over every pair)."""
    if not pairs:
        raise BootstrapError("mean_difference: no pairs")
    k = len(pairs)
    d = linear([part for a, b in pairs for part in ((1.0 / k, a), (-1.0 / k, b))])
    return _comparison(d, threshold)


def _comparison(d: Estimate, threshold: float) -> Comparison:
    return Comparison(d.value, d.low, d.high, threshold, d.n_items, d.n_seeds, p_value(d.replicates, threshold),
                      d.seed_share)


def holm(comparisons: Sequence[Comparison | None], alpha: float = FAMILY_ALPHA) -> None:
    """Holm's step-down adjustment over one claim's comparisons (None entries skipped): sets each comparison's
    `family` and `adjusted_p` (its outcome then controls the family-wise error at `alpha`)."""
    present = [c for c in comparisons if c is not None]
    m = len(present)
    running = 0.0
    for rank, c in enumerate(sorted(present, key=lambda c: c.p_value)):
        running = max(running, min(1.0, (m - rank) * c.p_value))
        c.family, c.adjusted_p = m, running
