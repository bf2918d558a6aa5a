"""Stratified splits: held-out sets and cross-validation folds that keep class balance."""

from __future__ import annotations

import numpy as np


def stratified_split(
    labels: np.ndarray, share: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held) index arrays; ``held`` takes ``share`` of every class (at least one)."""
    rng = np.random.default_rng(seed)
    keep: list[np.ndarray] = []
    held: list[np.ndarray] = []
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        n_held = max(1, round(share * len(members)))
        held.append(members[:n_held])
        keep.append(members[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def stratified_folds(labels: np.ndarray, folds: int, seed: int = 0) -> list[np.ndarray]:
    """``folds`` disjoint index arrays that cover every sample, each with the overall class mix."""
    rng = np.random.default_rng(seed)
    buckets: list[list[np.ndarray]] = [[] for _ in range(folds)]
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        for i, part in enumerate(np.array_split(members, folds)):
            buckets[(i + int(k)) % folds].append(part)
    return [np.sort(np.concatenate(parts)) for parts in buckets]
