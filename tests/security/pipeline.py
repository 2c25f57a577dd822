"""The lib chain a run uses, shrunk: discover -> decode -> features -> cache + failures table.

A stand-in embedding (mean colour per frame) replaces the CNN: hostile input is about decoding
and bookkeeping, and the backbone would only add seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.cache import FeatureCache, SeriesFeatures
from lstmpipe.lib.features.extract import extract_many
from lstmpipe.lib.ops.failures import read_failures, record_failures
from lstmpipe.lib.sources.archives import ArchiveLimits
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.hashing import HashMemo
from lstmpipe.lib.state.store import LocalStore
from tests.security.conftest import SMALL


def mean_colour(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3) float32."""
    return frames.reshape(len(frames), -1, 3).mean(axis=1).astype(np.float32)


@dataclass(frozen=True)
class Outcome:
    features: dict[str, SeriesFeatures]  # by series id
    failures: pa.Table  # the recorded failures table, read back


def run(
    source: Path, home: Path, limits: ArchiveLimits = ArchiveLimits(), manifest: Path | None = None
) -> Outcome:
    """Extract every series of `source` into `home`'s cache
    and record its failures, as `lstmpipe extract` does."""
    found = discover(
        source, manifest=manifest, memo=HashMemo(home / "cache" / "hashes.sqlite"), limits=limits
    )
    results = list(extract_many(found.refs, SMALL, mean_colour, 16, home / "tmp"))
    done = [r for r in results if isinstance(r, SeriesFeatures)]
    FeatureCache.local(home / "cache").write("test-recipe", done)
    record_failures(
        LocalStore(home), "run", found.failures + [r for r in results if isinstance(r, Failure)]
    )
    assert list((home / "tmp").iterdir()) == [] if (home / "tmp").exists() else True, (
        "a temp copy outlived its series"
    )
    return Outcome({r.series_id: r for r in done}, read_failures(LocalStore(home)))


def reasons(outcome: Outcome) -> dict[str, str]:
    """{series id: reason} of the recorded failures."""
    return dict(
        zip(
            outcome.failures["series_id"].to_pylist(),
            outcome.failures["reason"].to_pylist(),
            strict=False,
        )
    )
