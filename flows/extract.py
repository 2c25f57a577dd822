"""Flow `extract`: discover a source, then decode + CNN features into the cache, shard by shard."""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow

from lstmpipe.flows.runtime import Runtime, load_runtime, run_id_of
from lstmpipe.lib.features.outcomes import SeriesOutcome
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.ops.summary import ExtractionSummary, extraction_summary
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.discover import require_series
from lstmpipe.tasks.extract import discover_source, extract_shard, feature_recipe
from lstmpipe.tasks.records import record_run_failures


def configured_recipe(rt: Runtime) -> FeatureRecipe:
    """The recipe the configuration yields here; the task returns it as the JSON that Prefect
    caches across flow runs (tasks.extract.feature_recipe)."""
    return FeatureRecipe.from_dict(feature_recipe(rt.config, rt.torch_hub_dir))


def extract_refs(
    rt: Runtime, refs: list[SeriesRef], recipe: FeatureRecipe
) -> tuple[list[SeriesOutcome], float]:
    """(per-series outcomes, seconds spent extracting); one Prefect task per shard (never per
    series)."""
    size = rt.config.runtime.shard_size
    outcomes: list[SeriesOutcome] = []
    seconds = 0.0
    for start in range(0, len(refs), size):
        shard = extract_shard(
            refs[start : start + size],
            recipe,
            rt.config,
            rt.state,
            rt.tmp_dir,
            rt.torch_hub_dir,
            rt.ray_address,
        )
        outcomes += shard.outcomes
        seconds += shard.seconds
    return outcomes, seconds


def discover_and_extract(
    rt: Runtime,
    source: str,
    labels: str | None,
    run_id: str,
    recipe: FeatureRecipe | None = None,
    skip_hashes: frozenset[str] = frozenset(),
    quiet_night: bool = False,
) -> tuple[list[SeriesRef], FeatureRecipe, ExtractionSummary]:
    """(refs, recipe, summary) for a source: what every flow that needs features starts with.

    Series whose content hash is in `skip_hashes` (already predicted, at inference) are
    left out before any decoding; the summary counts them as `skipped`. A source holding no
    series stops the run (NoSeries, exit 2) before a backbone loads, unless `quiet_night`
    (inference): then the summary says so.
    """
    found = discover_source(source, labels, rt.state, rt.config.sources)
    if not quiet_night:
        require_series(source, found)
    recipe = recipe or configured_recipe(rt)
    refs = [r for r in found.refs if r.content_hash not in skip_hashes]
    outcomes, seconds = extract_refs(rt, refs, recipe)
    summary = extraction_summary(outcomes, found.failures, seconds, found.ignored)
    summary = dataclasses.replace(
        summary,
        failures_file=record_run_failures(rt.state, run_id, summary),
        recipe_id=recipe.recipe_id,
        skipped=len(found.refs) - len(refs),
    )
    return refs, recipe, summary


@flow(name="extract")
def extract(
    source: str,
    labels: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> ExtractionSummary:
    """Decode every series of `source` and cache its features; cached series are not
    recomputed."""
    rt = load_runtime(config_file, overrides)
    _, _, summary = discover_and_extract(rt, source, labels, run_id_of(run_id))
    return summary
