"""`lstmpipe plan`: what extraction would compute, what is cached, and why.

A series is computed when its (content hash, recipe) is not cached: either its
bytes are new, or they are cached only under other recipes, in which case the
plan names the fields of the recipe that changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from lstmpipe.lib.config import Config
from lstmpipe.lib.features.build import load_backbone
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.discover import discover_root, require_series
from lstmpipe.lib.state.places import StatePlaces


class PlanAction(StrEnum):
    CACHED = "cached"  # cached under the recipe: nothing to do
    COMPUTE = "compute"  # decoded and through the backbone when extract runs
    FAIL = "fail"  # refused at discovery: extract would record it failed


@dataclass(frozen=True)
class PlannedSeries:
    series_id: str
    action: PlanAction
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"series_id": self.series_id, "action": self.action.value, "reason": self.reason}


@dataclass(frozen=True)
class Plan:
    """What extract would do under `recipe_id`: one row per series, cached ones and those to
    compute by series id, then those discovery refused."""

    recipe_id: str
    per_series: tuple[PlannedSeries, ...]

    def count(self, action: PlanAction) -> int:
        return sum(row.action is action for row in self.per_series)

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe_id": self.recipe_id,
            "series": self.count(PlanAction.CACHED) + self.count(PlanAction.COMPUTE),
            "cached": self.count(PlanAction.CACHED),
            "compute": self.count(PlanAction.COMPUTE),
            "per_series": [row.to_json() for row in self.per_series],
            "failed": self.count(PlanAction.FAIL),
        }


def plan(refs: list[SeriesRef], recipe: FeatureRecipe, cache: FeatureCache) -> Plan:
    """One row per series: `cached`, or `compute` with the reason."""
    recipe_id = recipe.recipe_id
    cached = cache.present([(r.content_hash, recipe_id) for r in refs])
    todo = [r for r in refs if (r.content_hash, recipe_id) not in cached]
    elsewhere = cache.recipes_of([r.content_hash for r in todo])
    reasons: dict[str | None, str] = {}  # one text per earlier recipe, not per series
    rows = [
        PlannedSeries(r.series_id, PlanAction.CACHED, f"cached under recipe {recipe_id}")
        for r in refs
        if (r.content_hash, recipe_id) in cached
    ]
    for r in todo:
        latest = elsewhere[r.content_hash][-1] if r.content_hash in elsewhere else None
        if latest not in reasons:
            reasons[latest] = _why(latest, recipe, cache)
        rows.append(PlannedSeries(r.series_id, PlanAction.COMPUTE, reasons[latest]))
    return Plan(recipe_id, tuple(sorted(rows, key=lambda row: row.series_id)))


def _why(latest_id: str | None, recipe: FeatureRecipe, cache: FeatureCache) -> str:
    """Why a series is computed, given the recipe it was last cached under (None: never)."""
    if latest_id is None:
        return "new content: these bytes were never extracted"
    latest = cache.recipe(latest_id)
    if latest is None:
        return f"recipe changed: cached under {latest_id} only"
    wanted, had = recipe.to_dict(), latest.to_dict()
    changed = [k for k, v in wanted.items() if k != "recipe_id" and had.get(k) != v]
    return f"recipe changed: cached under {latest_id}, which differs in {', '.join(changed)}"


def plan_source(
    source: str | Path,
    manifest: str | Path | None,
    config: Config,
    torch_hub_dir: Path,
    state: StatePlaces,
    device: str,
) -> Plan:
    """Discover `source` (a folder, file or archive, or a bucket prefix) and plan it under the
    recipe `config` makes on `device`; nothing is extracted. A source without series is
    NoSeries, before the backbone loads: there is nothing to plan."""
    found = require_series(source, discover_root(source, state, manifest, sources=config.sources))
    _, recipe = load_backbone(
        config.sampling, config.backbone, torch_hub_dir, device, config.sources
    )
    planned = plan(found.refs, recipe, FeatureCache.at(state))
    refused = [
        PlannedSeries(f.series_id, PlanAction.FAIL, f"[{f.stage}] {f.reason}")
        for f in found.failures
    ]
    return dataclasses.replace(planned, per_series=planned.per_series + tuple(refused))
