"""Run summaries: counts and per-series rows that the CLI prints and `--json` emits."""

from __future__ import annotations

from collections import Counter
from typing import Any

from lstmpipe.lib.failures import Failure


def extraction_summary(
    statuses: list[dict[str, Any]],
    discovery_failures: list[dict[str, Any]],
    compute_seconds: float = 0.0,
) -> dict[str, Any]:
    """Counts by status (cached, extracted, failed) over every series the run saw.

    `compute` is the extraction work itself: frames that went through the backbone
    and the wall time of decoding, CNN and cache writes (start-up excluded).
    """
    rows = statuses + [
        {
            "series_id": f["series_id"],
            "status": "failed",
            "frames": 0,
            "stage": f["stage"],
            "reason": f["reason"],
            "path": f["path"],
        }
        for f in discovery_failures
    ]
    counts = Counter(row["status"] for row in rows)
    return {
        "series": len(rows),
        "cached": counts["cached"],
        "extracted": counts["extracted"],
        "failed": counts["failed"],
        "frames": sum(row["frames"] for row in rows),
        "compute": {
            "frames": sum(row["frames"] for row in rows if row["status"] == "extracted"),
            "seconds": round(compute_seconds, 2),
        },
        "per_series": sorted(rows, key=lambda row: row["series_id"]),
    }


def failures_of(summary: dict[str, Any]) -> list[Failure]:
    return [
        Failure(row["series_id"], row.get("path", ""), row.get("stage", "extract"), row["reason"])
        for row in summary["per_series"]
        if row["status"] == "failed"
    ]


def usable(refs: list[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The refs whose features are in the cache after extraction."""
    ok = {
        row["series_id"]
        for row in summary["per_series"]
        if row["status"] in {"cached", "extracted"}
    }
    return [ref for ref in refs if ref["series_id"] in ok]
