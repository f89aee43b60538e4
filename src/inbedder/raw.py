"""Reading fetched source files, with errors that name the file, the column and the row.

Shared by the dataset builders (`inbedder.datasets`, `inbedder.analogs`): bytes that are not UTF-8
become surrogates that `check_records` reports by column; all randomness is seeded (`SEED`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SEED = 0


class DataError(ValueError):
    """Input data does not have the expected shape; the message names the file, column and row."""



def decode(data: bytes) -> str:
    """Decode UTF-8; bytes that are not UTF-8 become surrogates that `_check_records` reports by column."""
    return data.decode("utf-8", errors="surrogateescape")


def is_bad_text(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def check_records(
    records: list[dict], required: Iterable[str], label: str, text: Iterable[str] = ()
) -> None:
    """Raise DataError naming `label` if the table is empty, lacks a column, or has non-UTF-8 text."""
    required = list(required)
    if not records:
        raise DataError(f"{label}: empty dataset (no rows)")
    for i, row in enumerate(records):
        if not isinstance(row, dict):
            raise DataError(f"{label}: row {i} is not an object")
        for col in required:
            if col not in row:
                raise DataError(f"{label}: column {col!r} missing (row {i} has {sorted(row)})")
    for col in list(required) + [c for c in text if c not in required]:
        for i, row in enumerate(records):
            value = row.get(col)
            if isinstance(value, str) and is_bad_text(value):
                raise DataError(f"{label}: column {col!r}, row {i}: text is not valid UTF-8")


def read_json_lines(data: bytes, label: str) -> list[dict]:
    records = []
    for lineno, line in enumerate(decode(data).split("\n"), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"{label}:{lineno}: not valid JSON ({err.msg})") from err
    return records


def read_json(data: bytes, label: str) -> Any:
    try:
        return json.loads(decode(data))
    except json.JSONDecodeError as err:
        raise DataError(f"{label}: not valid JSON ({err.msg}, line {err.lineno})") from err


def read_parquet(path: Path, required: Iterable[str]) -> pd.DataFrame:
    if not path.is_file():
        siblings = sorted(str(p.relative_to(path.parents[1])) for p in path.parents[1].glob("*/*.parquet"))
        raise FileNotFoundError(f"{path} is missing (this source has: {siblings})")
    table = pd.read_parquet(path)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{path}: column {missing[0]!r} missing (has {list(table.columns)})")
    if table.empty:
        raise DataError(f"{path}: empty dataset (no rows)")
    return table


def sample_order(n: int, k: int, seed: int) -> np.ndarray:
    """k distinct indices of range(n) in a seeded random order."""
    return np.random.default_rng(seed).permutation(n)[:k]
