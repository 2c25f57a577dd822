"""Prefect task that records a run's failures in the failures table."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from lstmpipe.lib.failures import record_failures
from lstmpipe.lib.ops.summary import ExtractionSummary
from lstmpipe.tasks.retry import transient_only


@task(name="record-failures", retries=2, retry_condition_fn=transient_only)
def record_run_failures(failures_dir: str, run_id: str, summary: ExtractionSummary) -> str | None:
    written = record_failures(Path(failures_dir), run_id, summary.failures())
    return str(written) if written else None
