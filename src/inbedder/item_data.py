"""Per-item data: what evaluate keeps beside each score table so the report can resample its items.

One row per item of one score (`ITEM_COLUMNS`), by statistic:
- `mean`: one number per item whose mean is the score (triplet correctness 0/1; a query's average
  precision);
- `spearman`: the item's cosine similarity (`value`) and gold score (`gold`);
- `v_measure`: the text's cluster id (`value`) and gold label (`label`); the V-measure of that fixed
  assignment is scored on each half of the texts (k-means is not rerun: its restarts are the k-means
  seeds, a seed level of their own).
`item_id` is the item's identity (a hash of its text, triplet or pair): the same item under two views,
two instructions or in two runs has the same id, so every score of it keeps or drops it together.
`group` names a stratum inside one score (an mteb cluster set): the statistic is computed per group and
averaged over groups with equal weights (as mteb averages its cluster sets).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from inbedder.bootstrap import (
    BOOT_SEED,
    N_BOOT,
    RANGES,
    REPLICATES,
    STATISTICS,
    BootstrapError,
    Estimate,
    centred,
    clip,
    estimate,
    hmean_replicates,
    item_hash,
    kept,
    percentile_ci,
    seed_deviations,
)
from inbedder.files import atomic_path

ITEM_COLUMNS = ("model", "recipe", "task", "mode", "layer", "subset", "metric", "seed", "train_seed", "group",
                "item", "item_id", "statistic", "value", "gold", "label")
NO_SEED = -1
SEED_KEYS = ("train_seed", "seed")  # the seed levels, outermost first
SCORE_KEYS = ("model", "recipe", "task", "mode", "layer", "subset", "metric")


def item_id(*texts: object) -> str:
    """The identity of an item made of these texts (order kept: a triplet's roles matter)."""
    return f"{item_hash(chr(31).join(str(t) for t in texts)):016x}"


def pair_id(text1: object, text2: object) -> str:
    """The identity of an unordered pair of texts (both orders of a pair are one item)."""
    return item_id(*sorted((str(text1), str(text2))))


def item_rows(subset: str, metric: str, seed: int | None, statistic: str, values: Sequence[float], *,
              gold: Sequence[float] | None = None, labels: Sequence | None = None,
              groups: Sequence[str] | None = None, ids: Sequence[str] | None = None) -> list[dict]:
    """Per-item rows of one score of one (mode, layer): item i is the i-th value (numbered within its group).
    Without `ids`, an item's identity is its position in this score (no other score shares it)."""
    if statistic not in STATISTICS:
        raise BootstrapError(f"{subset}/{metric}: unknown statistic {statistic!r}; expected one of {STATISTICS}")
    values = np.asarray(values, dtype=float)
    groups = [""] * len(values) if groups is None else [str(g) for g in groups]
    for name, other in (("gold", gold), ("labels", labels), ("groups", groups), ("ids", ids)):
        if other is not None and len(other) != len(values):
            raise BootstrapError(f"{subset}/{metric}: {len(values)} values but {len(other)} {name}")
    seen: dict[str, int] = {}
    out = []
    for i, value in enumerate(values):
        item = seen.get(groups[i], 0)
        seen[groups[i]] = item + 1
        out.append({"subset": subset, "metric": metric, "seed": NO_SEED if seed is None else int(seed),
                    "group": groups[i], "item": item,
                    "item_id": str(ids[i]) if ids is not None else item_id(subset, groups[i], item),
                    "statistic": statistic, "value": float(value),
                    "gold": float(gold[i]) if gold is not None else np.nan,
                    "label": str(labels[i]) if labels is not None else ""})
    return out


def item_frame(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Per-item rows as a typed table with ITEM_COLUMNS (missing gold/label/group/item_id filled)."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        frame = pd.DataFrame(columns=list(ITEM_COLUMNS))
    for col, fill in (("group", ""), ("label", ""), ("gold", np.nan), ("train_seed", NO_SEED), ("seed", NO_SEED)):
        if col not in frame.columns:
            frame[col] = fill
    if "item_id" not in frame.columns and {"subset", "group", "item"} <= set(frame.columns):
        frame["item_id"] = [item_id(s, g, i) for s, g, i in zip(frame["subset"], frame["group"], frame["item"],
                                                                strict=True)]
    missing = [c for c in ITEM_COLUMNS if c not in frame.columns]
    if missing:
        raise BootstrapError(f"per-item rows lack column(s) {missing}; expected {list(ITEM_COLUMNS)}")
    frame = frame[list(ITEM_COLUMNS)]
    types = {"layer": "int64", "seed": "int64", "train_seed": "int64", "item": "int64", "value": "float64",
             "gold": "float64"}
    frame = frame.astype(types)
    for col in ("model", "recipe", "task", "mode", "subset", "metric", "group", "item_id", "statistic", "label"):
        frame[col] = frame[col].astype(str)
    return frame


def write_items(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a per-item table atomically (parquet)."""
    with atomic_path(path) as tmp:
        item_frame(frame.to_dict("records")).to_parquet(tmp, index=False)


def read_items(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read and concatenate per-item tables, checking their columns (tables written before item ids get
    positional ids)."""
    frames = []
    for path in paths:
        frame = pd.read_parquet(path)
        missing = [c for c in ITEM_COLUMNS if c not in frame.columns and c != "item_id"]
        if missing:
            raise BootstrapError(f"{path}: missing column(s) {missing}; expected {list(ITEM_COLUMNS)}")
        frames.append(frame)
    return item_frame(pd.concat(frames, ignore_index=True).to_dict("records")) if frames else item_frame([])


# ----------------------------------------------------------------------------------------------------------
# one score's per-item data across its seed units


@dataclass
class Series:
    """The per-item data of one score (one task, subset and metric of one run) across its seed units."""

    statistic: str
    units: list[tuple]  # seed units, e.g. [(train_seed, kmeans_seed), ...]
    values: np.ndarray  # [U, n]
    groups: np.ndarray  # [n] stratum of each item ("" everywhere when none)
    ids: np.ndarray  # [n] item identities (item_id)
    gold: np.ndarray | None = None  # [n] (spearman)
    labels: np.ndarray | None = None  # [n] (v_measure)
    where: str = ""

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise BootstrapError(f"{self.where}: unknown statistic {self.statistic!r}; expected one of {STATISTICS}")
        self.values = np.atleast_2d(np.asarray(self.values, dtype=float))
        if self.values.shape[0] != len(self.units):
            raise BootstrapError(f"{self.where}: {self.values.shape[0]} rows of values for {len(self.units)} seeds")
        if self.statistic == "spearman" and self.gold is None:
            raise BootstrapError(f"{self.where}: a spearman score needs the gold scores")
        if self.statistic == "v_measure" and self.labels is None:
            raise BootstrapError(f"{self.where}: a v_measure score needs the gold labels")
        self.hashes = np.array([int(i, 16) for i in self.ids], dtype=np.uint64)

    @property
    def n(self) -> int:
        """Number of items."""
        return int(self.values.shape[1])

    def item_replicates(self, n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> np.ndarray:
        """[B, U]: each seed unit scored on the kept half of the items of each replicate (the same half for all)."""
        return self._by_group(lambda cols: kept(self.hashes[cols], n_boot, seed))

    @property
    def bounds(self) -> tuple[float, float]:
        """The range the statistic can take (a mean: that of its item values)."""
        return RANGES.get(self.statistic) or (float(self.values.min()), float(self.values.max()))

    def point(self) -> np.ndarray:
        """[U]: the statistic of each unit on all the items."""
        return self._by_group(lambda cols: np.ones((1, len(cols)), dtype=bool))[0]

    def _by_group(self, masks) -> np.ndarray:
        out = []
        for group in dict.fromkeys(self.groups.tolist()):
            cols = np.flatnonzero(self.groups == group)
            out.append(REPLICATES[self.statistic](
                self.values[:, cols], masks(cols), None if self.gold is None else self.gold[cols],
                None if self.labels is None else self.labels[cols]))
        return np.mean(out, axis=0)


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
        ids = grp["item_id"].to_numpy().reshape(len(units), n)
        group_ids = grp["group"].to_numpy().reshape(len(units), n)
        if not (ids == ids[0]).all() or not (group_ids == group_ids[0]).all():
            raise BootstrapError(f"{where}: the seeds do not score the same items")
        out[key] = Series(
            statistic=statistic, units=units, values=grp["value"].to_numpy(dtype=float).reshape(len(units), n),
            groups=group_ids[0], ids=ids[0],
            gold=first["gold"].to_numpy(dtype=float) if statistic == "spearman" else None,
            labels=first["label"].to_numpy() if statistic == "v_measure" else None, where=where)
    return out


def score_intervals(scores: pd.DataFrame, items: pd.DataFrame, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                    hmean_subset: str = "hmean") -> pd.DataFrame:
    """scores with `ci_low`, `ci_high` per row: the interval of that row's score (its seeds fixed) over its
    items, centred on the row's value.

    A row of subset `hmean` takes the harmonic mean of its subsets' replicates; a row without per-item data
    (robustness summaries, silhouette, mteb scores not kept per item) gets empty bounds.
    """
    out = scores.copy()
    out["ci_low"] = np.nan
    out["ci_high"] = np.nan
    if items.empty or scores.empty:
        return out
    data = ItemData(items, n_boot, seed, seeds=("seed",))
    by_score: dict[tuple, list[str]] = {}
    for key in data.series:
        by_score.setdefault(key[:5] + key[6:], []).append(key[5])
    for i, row in enumerate(out.itertuples(index=False)):
        unit = (NO_SEED if pd.isna(row.seed) else int(row.seed),)
        key = (str(row.model), str(row.recipe), str(row.task), str(row.mode), int(row.layer), str(row.subset),
               str(row.metric))
        if key[5] == hmean_subset:
            parts = [key[:5] + (s,) + key[6:] for s in by_score.get(key[:5] + key[6:], [])]
            if not parts or not all(data.unit_of(p, unit) is not None for p in parts):
                continue
            raw = hmean_replicates([data.unit_of(p, unit) for p in parts])
        else:
            raw = data.unit_of(key, unit)
            if raw is None:
                continue
        low, high = percentile_ci(centred(float(row.value), raw))
        low, high = clip(low, high, float(row.value), data.series[parts[0] if key[5] == hmean_subset else key].bounds)
        out.iloc[i, out.columns.get_loc("ci_low")], out.iloc[i, out.columns.get_loc("ci_high")] = low, high
    return out


class ItemData:
    """A run's per-item data by score key (SCORE_KEYS); each score's item replicates are computed once."""

    def __init__(self, items: pd.DataFrame | None = None, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                 seeds: Sequence[str] = SEED_KEYS) -> None:
        self.series = series_of(items, seeds) if items is not None and not items.empty else {}
        self.seed_levels = tuple(seeds)
        self.n_boot, self.seed = n_boot, seed
        self._unit: dict[tuple, np.ndarray] = {}

    def __contains__(self, key: tuple) -> bool:
        return key in self.series

    def __bool__(self) -> bool:
        return bool(self.series)

    def unit_replicates(self, key: tuple) -> np.ndarray:
        """[B, U] raw item replicates of one score, per seed unit."""
        if key not in self.series:
            raise BootstrapError(f"no per-item data for {'/'.join(str(k) for k in key)}")
        if key not in self._unit:
            self._unit[key] = self.series[key].item_replicates(self.n_boot, self.seed)
        return self._unit[key]

    def unit_of(self, key: tuple, unit: tuple) -> np.ndarray | None:
        """[B] raw item replicates of one seed unit of one score, or None when absent."""
        series = self.series.get(key)
        if series is None or unit not in series.units:
            return None
        return self.unit_replicates(key)[:, series.units.index(unit)]

    def estimate(self, keys: Sequence[tuple], how: str = "one", value: float | None = None) -> Estimate:
        """The Estimate of one score (`one`), or of the harmonic mean (`hmean`) or mean (`mean`) of several
        subsets of one task, combined per seed unit, then averaged over seeds (their spread a seed component,
        paired by seed across the modes and tasks of one fine-tune). `value` defaults to the mean over seeds."""
        if not keys or (how == "one" and len(keys) != 1):
            raise BootstrapError(f"estimate({how!r}): got {len(keys)} score(s)")
        if how not in ("one", "hmean", "mean"):
            raise BootstrapError(f"estimate: unknown way {how!r}; expected one, hmean or mean")
        units = self.series[keys[0]].units if keys[0] in self.series else None
        if any(k not in self.series for k in keys):
            missing = next(k for k in keys if k not in self.series)
            raise BootstrapError(f"no per-item data for {'/'.join(str(k) for k in missing)}")
        if any(self.series[k].units != units for k in keys[1:]):
            raise BootstrapError(f"{keys[0][2]}: the subsets were scored under different seeds")
        combine = hmean_replicates if how == "hmean" else (lambda parts: np.mean(parts, axis=0))
        per_unit = combine([self.unit_replicates(k) for k in keys])
        points = combine([self.series[k].point()[None, :] for k in keys])[0]
        model, recipe = keys[0][0], keys[0][1]
        seeds = seed_deviations(dict(zip(units, points, strict=True)), f"{model}\x1f{recipe}", self.seed_levels)
        point = float(np.mean(points)) if value is None else float(value)
        ranges = [self.series[k].bounds for k in keys]
        bounds = (min(r[0] for r in ranges), max(r[1] for r in ranges))
        return estimate(point, per_unit.mean(axis=1), min(self.series[k].n for k in keys), len(units), seeds,
                        bounds=bounds)
