"""Flow `backfill`: extract a date range of a root's partitions (or all of them), a few at a
time.

Each partition is recorded done (lib/ops/partitions.py) as soon as its series are in the
cache and its failures recorded, so a killed backfill, run again, skips the partitions
it finished, and inside the one it was killed in, the series already cached. Running
beside a nightly run is safe: cache entries are keyed by content and recipe (the first
writer's index row wins), records by partition and recipe.
"""

from __future__ import annotations

import contextvars
import datetime as dt
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePosixPath
from typing import Any

from prefect import flow

from lstmpipe.flows.artifacts import publish_summary
from lstmpipe.flows.extract import configured_recipe, extract_refs
from lstmpipe.flows.runtime import Runtime, load_runtime, run_id_of
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.ops.partitions import (
    Partition,
    by_partition,
    date_range,
    markdown_table,
    partition_of,
)
from lstmpipe.lib.ops.results import PartitionDone, PartitionsRun
from lstmpipe.lib.ops.summary import extraction_summary
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.discover import Ignored
from lstmpipe.tasks.extract import discover_source
from lstmpipe.tasks.partitions import mark_partition_done, partitions_to_do
from lstmpipe.tasks.records import record_run_failures


def extract_partitions(
    rt: Runtime,
    root: str,
    recipe: FeatureRecipe,
    run_id: str,
    start: dt.date | None = None,
    end: dt.date | None = None,
    every: bool = True,
) -> PartitionsRun:
    """Extract the selected partitions of `root` not yet done under `recipe`; what was done."""
    plan = partitions_to_do(root, rt.state, recipe.recipe_id, start, end, every)
    done: list[PartitionDone] = []
    outside: list[Ignored] = []
    if plan.pending:
        # once: the memo makes it cheap
        found = discover_source(root, None, rt.state, rt.config.sources)
        refs, failures = by_partition(found.refs), by_partition(found.failures)
        ignored, outside = _ignored_by_partition(found.ignored)

        def one(part: Partition) -> PartitionDone:
            return _extract_partition(
                rt,
                root,
                part,
                refs.get(part.name, []),
                failures.get(part.name, []),
                ignored.get(part.name, []),
                recipe,
                run_id,
            )

        # Threads in the flow's context (copied per partition), so their task runs belong to this
        # flow run.
        with ThreadPoolExecutor(max_workers=rt.config.runtime.partition_concurrency) as pool:
            futures = [
                pool.submit(contextvars.copy_context().run, one, part) for part in plan.pending
            ]
            done = [future.result() for future in futures]
    return PartitionsRun(
        root=root,
        recipe_id=recipe.recipe_id,
        selected=len(plan.selected),
        already_done=len(plan.selected) - len(plan.pending),
        done=tuple(done),
        ignored_outside=tuple(outside),
        series_before=plan.series_before,
        missing=tuple(plan.missing),
    )


def _ignored_by_partition(entries: list[Ignored]) -> tuple[dict[str, list[Ignored]], list[Ignored]]:
    """The ignored files by partition, and those at the root's top level, in none."""
    inside: defaultdict[str, list[Ignored]] = defaultdict(list)
    outside: list[Ignored] = []
    for entry in entries:
        if len(PurePosixPath(entry.path).parts) > 1:
            inside[partition_of(entry.path)].append(entry)
        else:
            outside.append(entry)
    return dict(inside), outside


def _extract_partition(
    rt: Runtime,
    root: str,
    part: Partition,
    refs: list[SeriesRef],
    failures: list[Failure],
    ignored: list[Ignored],
    recipe: FeatureRecipe,
    run_id: str,
) -> PartitionDone:
    """Extract one partition, record its failures, then (only then) record it done."""
    outcomes, seconds = extract_refs(rt, refs, recipe)
    summary = extraction_summary(outcomes, failures, seconds, ignored)
    record_run_failures(rt.state, run_id, summary)
    mark_partition_done(
        rt.state,
        root,
        part,
        recipe.recipe_id,
        summary.series,
        summary.failed,
        run_id,
    )
    return PartitionDone(part.name, summary, seconds)


def partitions_markdown(title: str, run: PartitionsRun) -> str:
    """The Markdown artifact of a run's partitions: one row per partition done."""
    head = (
        f"## {title}\n\n`{run.root}`, recipe `{run.recipe_id}`: {len(run.done)} of "
        f"{run.selected} partitions done now ({run.already_done} were done before); "
        f"{run.series} series, {run.extracted} extracted, {run.failed} failed, "
        f"{len(run.ignored)} files ignored."
        + "".join(
            f" **Missing**: {m.partition} (done {m.done_at}, first found gone {m.noticed_at})."
            for m in run.missing
        )
        + "\n\n"
    )
    return head + markdown_table(
        [p.to_json() for p in run.done],
        ["partition", "series", "cached", "extracted", "failed", "ignored", "frames", "seconds"],
    )


@flow(name="backfill")
def backfill(
    root: str,
    start: str | None = None,
    end: str | None = None,
    every: bool = False,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> PartitionsRun:
    """Extract the partitions of `root` dated within [start, end] (or `every` one, undated too)
    not yet done."""
    first, last = date_range(start, end, every)
    rt = load_runtime(config_file, overrides)
    run_id = run_id_of(run_id)
    recipe = configured_recipe(rt)
    summary = extract_partitions(rt, root, recipe, run_id, first, last, every)
    publish_summary("backfill-summary", partitions_markdown(f"backfill {run_id}", summary))
    return summary
