"""The numpy steps that turn a table into the tabular splits: one-hot, seeded splits, the PC1 gap,
standardisation on training rows and the noisy copy of the test rows. Pure functions of arrays and seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def one_hot(features: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """``features`` (N, F) with each column in ``columns`` replaced by one indicator column per value.

    The other columns keep their order and come first; the indicators follow, column by column, one per
    distinct value in increasing order. The values are taken from every row: they are the column's
    schema, not a statistic, so a value seen only in the test rows still gets its (training-constant) column.
    """
    categorical = sorted({c % features.shape[1] for c in columns})
    kept = [c for c in range(features.shape[1]) if c not in categorical]
    blocks = [features[:, kept]]
    for c in categorical:
        values = np.unique(features[:, c])
        blocks.append((features[:, c, None] == values[None, :]).astype(np.float64))  # (N, values)
    return np.concatenate(blocks, axis=1)


def seeded_split(n: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rest, chosen): ``count`` of the ``n`` positions drawn by a permutation seeded with ``seed``, and the others,
    each sorted."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[count:]), np.sort(order[:count])


def standardise_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation (population, ddof 0) of ``x`` (N, F); a constant column
    gets std 1, so it stays constant (0) instead of dividing by zero."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def first_component(x: np.ndarray) -> np.ndarray:
    """The first principal direction (F,) of the rows of ``x`` (N, F), each column standardised first, so
    that no feature dominates by its unit. The sign is fixed: the largest loading (by absolute value) is
    positive, so "the top" of the direction does not depend on the SVD routine."""
    mean, std = standardise_stats(x)
    _, _, vt = np.linalg.svd((x - mean) / std, full_matrices=False)
    direction = vt[0]
    return direction * np.sign(direction[np.argmax(np.abs(direction))])


def gap_rows(x: np.ndarray, fraction: float) -> np.ndarray:
    """Positions (sorted) of the ``round(fraction · N)`` rows of ``x`` (N, F) that lie furthest along its
    first principal direction (:func:`first_component`): the top of the projection, ties broken by position."""
    mean, std = standardise_stats(x)
    scores = ((x - mean) / std) @ first_component(x)  # (N,)
    count = int(round(fraction * len(x)))
    # stable sort of the negated scores: highest first, and equal scores in row order
    return np.sort(np.argsort(-scores, kind="stable")[:count])


def noisy_copy(x: np.ndarray, scale: float, seed: int) -> np.ndarray:
    """``x`` plus Gaussian noise of standard deviation ``scale`` in every cell, seeded."""
    return x + scale * np.random.default_rng(seed).standard_normal(x.shape)
