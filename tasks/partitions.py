"""Prefect tasks for partitions: what is left to do, the record of a finished one, whether to
retrain."""

from __future__ import annotations

import datetime as dt

from prefect import task

from lstmpipe.lib.ops import partitions
from lstmpipe.lib.ops.partitions import NightlyPlan, Partition, PartitionRecords, Record, ToDo
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.tasks.retry import transient_only


@task(name="partitions-to-do", retries=2, retry_condition_fn=transient_only)
def partitions_to_do(
    root: str,
    state: StatePlaces,
    recipe_id: str,
    start: dt.date | None,
    end: dt.date | None,
    every: bool,
) -> ToDo:
    return partitions.to_do(root, PartitionRecords.at(state), recipe_id, start, end, every)


@task(name="mark-partition-done", retries=2, retry_condition_fn=transient_only)
def mark_partition_done(
    state: StatePlaces,
    root: str,
    partition: Partition,
    recipe_id: str,
    series: int,
    failed: int,
    run_id: str,
) -> Record:
    return PartitionRecords.at(state).mark_done(root, partition, recipe_id, series, failed, run_id)


@task(name="nightly-plan", retries=2, retry_condition_fn=transient_only)
def nightly_plan(
    tracking_uri: str, model: str, state: StatePlaces, root: str, recipe_id: str
) -> NightlyPlan:
    """Whether nightly trains, and which version it promotes without training, judged against
    the newest version of `model` in the registry."""
    newest = partitions.newest_version(registry.connect(tracking_uri), model)
    records = PartitionRecords.at(state).records(root, recipe_id)
    return partitions.plan_night(records, newest)
