"""UCI-style tables and the data protocol of the MILE and SMILE papers' UCI experiments.

A table is whitespace-separated numbers, one row per example, the target in the last column.
The protocol standardises the columns with the whole table's mean and standard deviation
(features, and the target for regression), shuffles the rows with a seed and splits them
70 / 10 / 20 into training, validation and test sets.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

__all__ = ["Split", "load_table", "split_standardize"]


class Split(NamedTuple):
    """Training, validation and test sets, each ``(X (n, p), y (n,))``."""

    train: tuple[np.ndarray, np.ndarray]
    valid: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def load_table(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` from a whitespace-separated table whose last column is the target."""
    table = np.loadtxt(path, dtype=np.float64, ndmin=2)
    if table.shape[1] < 2:
        raise ValueError(f"{path}: need at least one feature column and a target column.")
    return table[:, :-1], table[:, -1]


def split_standardize(
    X: np.ndarray,
    y: np.ndarray,
    seed: int,
    *,
    classification: bool = False,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    dtype: type = np.float32,
) -> Split:
    """Standardise, shuffle with ``seed`` and split (the MILE/SMILE protocol).

    Columns with zero variance are centred only. For classification the target is left as
    integer labels.
    """
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must sum to 1, got {fractions}.")
    X = np.asarray(X, np.float64)
    X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    if classification:
        y = np.asarray(y).astype(np.int32)
    else:
        y = np.asarray(y, np.float64)
        y = ((y - y.mean()) / (y.std() or 1.0)).astype(dtype)
    order = np.random.default_rng(seed).permutation(len(y))
    n_train = round(fractions[0] * len(y))
    n_valid = round(fractions[1] * len(y))
    parts = np.split(order, [n_train, n_train + n_valid])
    X = X.astype(dtype)
    return Split(*[(X[idx], y[idx]) for idx in parts])
