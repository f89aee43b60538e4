"""Score tables: results/<run>/scores/<model>-<recipe>/<task>.csv and results/<run>/scores.csv.

One row per score (`SCORE_COLUMNS`), then its bootstrap interval (`CI_COLUMNS`, empty where no CI
was computed). Written by the evaluate stage, read by it (to collect) and by the report.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from inbedder.files import atomic_path
from inbedder.vocabulary import CI_COLUMNS, LATER_SCORE_COLUMNS, SCORE_COLUMNS


def write_scores(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a tidy score table atomically: SCORE_COLUMNS, then ci_low, ci_high (empty where no CI)."""
    frame = frame.copy()
    for col in (*LATER_SCORE_COLUMNS, *CI_COLUMNS):
        if col not in frame.columns:
            frame[col] = np.nan
    with atomic_path(path) as tmp:
        frame.loc[:, list(SCORE_COLUMNS) + list(CI_COLUMNS)].to_csv(tmp, index=False)


def read_scores(path: str | os.PathLike) -> pd.DataFrame:
    """Read a tidy score table, naming the file and any missing column; value, n and the CI are numbers."""
    frame = pd.read_csv(path, dtype={"seed": "Int64", "train_seed": "Int64", "layer": "Int64"}, keep_default_na=True)
    missing = [c for c in SCORE_COLUMNS if c not in frame.columns and c not in LATER_SCORE_COLUMNS]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {list(SCORE_COLUMNS)}")
    for col in (*LATER_SCORE_COLUMNS, *CI_COLUMNS):
        if col not in frame.columns:
            frame[col] = np.nan
    for col in ("value", "n", *CI_COLUMNS):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["train_seed"] = pd.to_numeric(frame["train_seed"], errors="coerce").astype("Int64")
    return frame.loc[:, list(SCORE_COLUMNS) + list(CI_COLUMNS)]
