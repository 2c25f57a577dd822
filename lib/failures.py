"""A failure: one series a run skipped, and why. The failures table holds one row per failure
per run (SCHEMA); lib/ops/failures.py writes and reads it in the outputs store.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Failure:
    """Why one series was skipped: the input, the stage that refused it and the reason."""

    series_id: str
    path: str
    stage: str  # discover | decode | extract | predict ...
    reason: str


SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("series_id", pa.string()),
        ("path", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
    ]
)
