"""Prefect tasks for promotion, rollback and the run report; the logic lives in
lib/registry/promotion.py and lib/registry/report.py."""

from __future__ import annotations

from prefect import task

from lstmpipe.lib.config import PromoteConfig
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.registry import promotion, report
from lstmpipe.lib.registry.history import PromotionHistory
from lstmpipe.lib.registry.promotion import Candidates
from lstmpipe.lib.registry.record import PromotionRecord, RollbackRecord
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.tasks.retry import transient_only


@task(name="promotion-candidates", retries=2, retry_condition_fn=transient_only)
def promotion_candidates(
    tracking_uri: str, model_name: str, version: str | None, alias: str
) -> Candidates:
    return promotion.candidates(registry.connect(tracking_uri), model_name, version, alias)


@task(name="promote", tags=["promote"], retries=2, retry_condition_fn=transient_only)
def promote_challenger(
    plan: Candidates,
    tracking_uri: str,
    state: StatePlaces,
    rules: PromoteConfig,
    run_id: str,
) -> PromotionRecord:
    return promotion.promote(
        registry.connect(tracking_uri),
        FeatureCache.at(state),
        plan,
        rules,
        PromotionHistory.at(state),
        run_id,
    )


@task(name="rollback", tags=["promote"], retries=2, retry_condition_fn=transient_only)
def rollback(
    tracking_uri: str, model_name: str, alias: str, state: StatePlaces, run_id: str
) -> RollbackRecord:
    return promotion.rollback(
        registry.connect(tracking_uri),
        model_name,
        alias,
        PromotionHistory.at(state),
        run_id,
    )


@task(name="report", retries=2, retry_condition_fn=transient_only)
def run_report(tracking_uri: str, given: str, state: StatePlaces) -> str:
    """The page's URI: reports/<run id>.html in the outputs store (home, or the bucket)."""
    return report.build(
        registry.connect(tracking_uri),
        given,
        state.outputs_store(),
        PromotionHistory.at(state).read(),
    )
