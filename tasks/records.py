"""Prefect task that records a run's failures in the failures table."""

from __future__ import annotations

from prefect import task

from lstmpipe.lib.ops.failures import record_failures
from lstmpipe.lib.ops.summary import ExtractionSummary
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.tasks.retry import transient_only


@task(name="record-failures", retries=2, retry_condition_fn=transient_only)
def record_run_failures(state: StatePlaces, run_id: str, summary: ExtractionSummary) -> str | None:
    """The URI of the object written (in the outputs store), None when nothing failed."""
    store = state.outputs_store()
    written = record_failures(store, run_id, summary.failures())
    return store.uri(written) if written else None
