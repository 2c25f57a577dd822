"""Flows `promote` and `rollback`: gate a challenger on the frozen evaluation set; move the alias back."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.extract import extract_refs
from flows.runtime import load_runtime
from tasks.promote import promote_challenger, promotion_candidates
from tasks.promote import rollback as rollback_task


@flow(name="promote")
def promote(model: str, version: str | None = None, config_file: str | None = None,
            overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    rt = load_runtime(config_file, overrides)
    alias = rt.config.promote.alias
    plan = promotion_candidates(rt.tracking_uri, model, version, alias)
    for recipe in plan["recipes"].values():  # each model scores on features made by its own recipe
        extract_refs(rt, plan["eval_set"], recipe)
    return promote_challenger(plan, rt.tracking_uri, rt.cache_root, rt.config.promote.margin, alias,
                              rt.promote_lock)


@flow(name="rollback")
def rollback_flow(model: str, config_file: str | None = None,
                  overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    rt = load_runtime(config_file, overrides)
    return rollback_task(rt.tracking_uri, model, rt.config.promote.alias, rt.promote_lock)
