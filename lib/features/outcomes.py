"""What extraction did with each series: cached already, extracted now, or failed and why.

These words are the one closed set every stage above matches on (summaries, partitions,
the failures table, the console); `to_json` gives the rows `--json` and the run records
have always carried.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from lstmpipe.lib.failures import Failure


class SeriesStatus(StrEnum):
    CACHED = "cached"  # its features were in the cache under the recipe: nothing decoded
    EXTRACTED = "extracted"  # decoded, through the backbone and committed by this run
    FAILED = "failed"  # refused (discovery, decoding, ...): recorded in the failures table


@dataclass(frozen=True)
class SeriesOutcome:
    """One series' status, its frames cached or extracted (0 when failed), and why it failed."""

    series_id: str
    status: SeriesStatus
    frames: int = 0
    failure: Failure | None = None

    @classmethod
    def failed(cls, failure: Failure) -> SeriesOutcome:
        return cls(failure.series_id, SeriesStatus.FAILED, 0, failure)

    @property
    def usable(self) -> bool:
        """Whether the series' features are in the cache now."""
        return self.status is not SeriesStatus.FAILED

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "series_id": self.series_id,
            "status": self.status.value,
            "frames": self.frames,
        }
        if self.failure is not None:
            row |= {
                "stage": self.failure.stage,
                "reason": self.failure.reason,
                "path": self.failure.path,
            }
        return row


@dataclass(frozen=True)
class ShardResult:
    """One extraction shard: an outcome per series, and the seconds spent extracting (0 when all
    were cached)."""

    outcomes: tuple[SeriesOutcome, ...]
    seconds: float
