"""Extraction summaries: counts and per-series outcomes that the CLI prints and `--json` emits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.outcomes import SeriesOutcome, SeriesStatus
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.discover import Ignored, no_series


@dataclass(frozen=True)
class Compute:
    """The extraction work itself: frames through the backbone, and the wall time of decoding,
    CNN and cache writes (start-up excluded)."""

    frames: int
    seconds: float


@dataclass(frozen=True)
class ExtractionSummary:
    """Counts by status over every series a run saw, and each series' outcome (by series id).

    recipe_id, failures_file and skipped are what the flows add once they know them: the recipe
    extracted with, the URI of the failures table's object written (a file under home, or
    s3://... in team mode; None when nothing failed), the series left
    out before decoding (already predicted, at inference). `ignored` lists the files discovery
    read no series from, each with its reason: nothing is dropped without a word.
    """

    series: int
    cached: int
    extracted: int
    failed: int
    frames: int
    compute: Compute
    per_series: tuple[SeriesOutcome, ...]
    recipe_id: str | None = None
    failures_file: str | None = None
    skipped: int = 0
    ignored: tuple[Ignored, ...] = ()

    def failures(self) -> list[Failure]:
        return [row.failure for row in self.per_series if row.failure is not None]

    def usable(self, refs: Iterable[SeriesRef]) -> list[SeriesRef]:
        """The refs whose features are in the cache after extraction."""
        ok = {row.series_id for row in self.per_series if row.usable}
        return [ref for ref in refs if ref.series_id in ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "series": self.series,
            "cached": self.cached,
            "extracted": self.extracted,
            "failed": self.failed,
            "frames": self.frames,
            "compute": {"frames": self.compute.frames, "seconds": self.compute.seconds},
            "per_series": [row.to_json() for row in self.per_series],
            "failures_file": self.failures_file,
            "recipe_id": self.recipe_id,
            "skipped": self.skipped,
            "ignored": len(self.ignored),
            "ignored_files": [entry.to_json() for entry in self.ignored],
        }


def extraction_summary(
    outcomes: Iterable[SeriesOutcome],
    discovery_failures: Iterable[Failure] = (),
    compute_seconds: float = 0.0,
    ignored: Iterable[Ignored] = (),
) -> ExtractionSummary:
    """The summary of a run's outcomes, series refused at discovery counted as failed, and the
    files discovery ignored."""
    rows = [*outcomes, *(SeriesOutcome.failed(f) for f in discovery_failures)]
    counts = Counter(row.status for row in rows)
    return ExtractionSummary(
        series=len(rows),
        cached=counts[SeriesStatus.CACHED],
        extracted=counts[SeriesStatus.EXTRACTED],
        failed=counts[SeriesStatus.FAILED],
        frames=sum(row.frames for row in rows),
        compute=Compute(
            sum(row.frames for row in rows if row.status is SeriesStatus.EXTRACTED),
            round(compute_seconds, 2),
        ),
        per_series=tuple(sorted(rows, key=lambda row: row.series_id)),
        ignored=tuple(ignored),
    )


def quiet(source: str, summary: ExtractionSummary) -> str | None:
    """Why a run over `source` had nothing to do when the source held no series at all, none
    left out as done before either: infer's quiet night, said in its summary (extract, train,
    tune and plan stop on it instead, lib/sources/discover.py `require_series`)."""
    if summary.series or summary.skipped:
        return None
    return no_series(source, summary.ignored)
