"""Deterministic, stratified train/val/test splits keyed on series ids, not on row order.

How a split is made, per class:
  1. order the class' series by blake2b(f"{seed}:{series_id}") (ties, never seen in
     practice, by series_id);
  2. cut that order at c1 and c2 (`_cuts`): ranks [0, c1) are test, [c1, c2) val,
     [c2, n) train.

What holds (the tests check each):
  - A series' split depends only on the seed, its id, and the set of ids in its class:
    not on input order, not on other classes, not on the machine.
  - Every split is non-empty for every class of >= 3 series (when its fraction is > 0).
    A class of 2 gives one to val and one to train; a class of 1 goes to train.
  - Stability: c1 and c2 never shrink and grow by at most 1 when a class gains one
    series, and existing series keep their relative order. So adding one series to a
    class moves at most one existing series across each cut: at most 2 moves, each
    between neighbours in hash order (test<->val or val<->train). Adding m series moves
    at most m existing series across each cut. Other classes never move. Removing
    series is the same statement read backwards.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict

SPLITS = ("train", "val", "test")


def stratified_split(
    series_ids: list[str],
    labels: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, list[str]]:
    """{"train", "val", "test"} -> sorted series ids, stratified by label; see the module docstring."""
    _check(series_ids, labels, val_fraction, test_fraction)
    by_class: dict[str, list[str]] = defaultdict(list)
    for series_id, label in zip(series_ids, labels):
        by_class[label].append(series_id)
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for members in by_class.values():
        ordered = sorted(members, key=lambda series_id: (_rank_key(seed, series_id), series_id))
        c1, c2 = _cuts(len(ordered), test_fraction, val_fraction)
        splits["test"] += ordered[:c1]
        splits["val"] += ordered[c1:c2]
        splits["train"] += ordered[c2:]
    return {name: sorted(ids) for name, ids in splits.items()}


def split_hash(splits: dict[str, list[str]]) -> str:
    """A short fingerprint of who is in which split, to log beside a model and compare runs."""
    canonical = json.dumps({name: sorted(ids) for name, ids in splits.items()}, sort_keys=True)
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


def _rank_key(seed: int, series_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{series_id}".encode(), digest_size=16).digest()


def _cuts(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int]:
    """Cut points (c1, c2) for a class of n series; both non-decreasing in n with steps of 0 or 1.

    That monotonicity is the whole stability guarantee, so each bound is a min/max of
    such step functions: round-half-up(n * f), small constants, and n - 1.
    """
    want_test, want_val = int(test_fraction > 0), int(val_fraction > 0)
    c2 = min(max(_round(n * (test_fraction + val_fraction)), want_test + want_val), n - 1)  # train keeps >= 1
    c1 = min(max(_round(n * test_fraction), want_test), c2 - want_val)  # val keeps >= 1 when wanted
    return max(c1, 0), max(c2, 0)


def _round(x: float) -> int:
    """Half up, the rule people check by hand (round() rounds half to even)."""
    return math.floor(x + 0.5)


def _check(series_ids: list[str], labels: list[str], val_fraction: float, test_fraction: float) -> None:
    if len(series_ids) != len(labels):
        raise ValueError(f"stratified_split: {len(series_ids)} series ids but {len(labels)} labels")
    duplicates = sorted(series_id for series_id, count in Counter(series_ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"stratified_split: series ids {duplicates[:5]} appear more than once; ids must be unique")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"stratified_split: val_fraction={val_fraction} and test_fraction={test_fraction} must each be in "
            "[0, 1) and sum to less than 1, so that training keeps some series"
        )
