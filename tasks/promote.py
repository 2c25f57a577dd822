"""Prefect tasks for promotion and rollback; the logic lives in lib/promote.py."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from lib import promote, registry
from lib.cache import FeatureCache
from tasks.retry import transient_only


@task(name="promotion-candidates", retries=2, retry_condition_fn=transient_only)
def promotion_candidates(tracking_uri: str, model_name: str, version: str | None, alias: str) -> dict:
    return promote.candidates(registry.connect(tracking_uri), model_name, version, alias)


@task(name="promote", tags=["promote"], retries=2, retry_condition_fn=transient_only)
def promote_challenger(plan: dict, tracking_uri: str, cache_root: str, margin: float, alias: str,
                       lock_file: str) -> dict:
    return promote.promote(registry.connect(tracking_uri), FeatureCache(Path(cache_root)), plan, margin, alias,
                           Path(lock_file))


@task(name="rollback", tags=["promote"], retries=2, retry_condition_fn=transient_only)
def rollback(tracking_uri: str, model_name: str, alias: str, lock_file: str) -> dict:
    return promote.rollback(registry.connect(tracking_uri), model_name, alias, Path(lock_file))
