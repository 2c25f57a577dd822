"""`lstmpipe plan`: what extraction would compute, what is cached, and why.

A series is computed when its (content hash, recipe) is not cached: either its
bytes are new, or they are cached only under other recipes, in which case the
plan names the fields of the recipe that changed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from lstmpipe.lib.config import Config
from lstmpipe.lib.features.build import load_backbone
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.hashing import HashMemo


def plan(refs: list[SeriesRef], recipe: FeatureRecipe, cache: FeatureCache) -> dict[str, Any]:
    """One row per series: `cached`, or `compute` with the reason."""
    recipe_id = recipe.recipe_id
    cached = cache.present([(r.content_hash, recipe_id) for r in refs])
    todo = [r for r in refs if (r.content_hash, recipe_id) not in cached]
    elsewhere = cache.recipes_of([r.content_hash for r in todo])
    reasons: dict[str | None, str] = {}  # one text per earlier recipe, not per series
    rows = [
        {"series_id": r.series_id, "action": "cached", "reason": f"cached under recipe {recipe_id}"}
        for r in refs
        if (r.content_hash, recipe_id) in cached
    ]
    for r in todo:
        latest = elsewhere[r.content_hash][-1] if r.content_hash in elsewhere else None
        if latest not in reasons:
            reasons[latest] = _why(latest, recipe, cache)
        rows.append({"series_id": r.series_id, "action": "compute", "reason": reasons[latest]})
    counts = Counter(row["action"] for row in rows)
    return {
        "recipe_id": recipe.recipe_id,
        "series": len(rows),
        "cached": counts["cached"],
        "compute": counts["compute"],
        "per_series": sorted(rows, key=lambda row: row["series_id"]),
    }


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
    source: Path,
    manifest: Path | None,
    config: Config,
    torch_hub_dir: Path,
    cache_root: Path,
    memo: Path,
    device: str,
) -> dict[str, Any]:
    """Discover `source` and plan it under the recipe `config` makes on `device`; nothing is extracted."""
    found = discover(source, manifest, HashMemo(memo), sources=config.sources)
    _, recipe = load_backbone(
        config.sampling, config.backbone, torch_hub_dir, device, config.sources
    )
    result = plan(found.refs, recipe, FeatureCache(cache_root))
    result["per_series"] += [
        {"series_id": f.series_id, "action": "fail", "reason": f"[{f.stage}] {f.reason}"}
        for f in found.failures
    ]
    result["failed"] = len(found.failures)
    return result
