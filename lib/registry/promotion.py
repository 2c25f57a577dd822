"""Promotion (SPEC §3.5), the MLflow side: find the candidates, score challenger and champion on
the same frozen evaluation set, let the gate (gate.py) decide, move the alias only if it passes,
record every decision (record.py: on the model version and in the history table) and roll back
in one call. Promotions of one model are serialised by a lock of the state database (locks.py),
which holds the history too.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from mlflow.tracking import MlflowClient

from lstmpipe.lib.config import PromoteConfig
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.registry.gate import Decision, Predictions, gate, metrics_of
from lstmpipe.lib.registry.history import PromotionHistory
from lstmpipe.lib.registry.locks import promotion_lock
from lstmpipe.lib.registry.mlflow_store import ModelRef
from lstmpipe.lib.registry.record import DECISION_TAG, PromotionRecord, RollbackRecord, Score
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.training.bundle import ModelBundle
from lstmpipe.lib.training.experiment import load_sequences
from lstmpipe.lib.training.loop import predict_proba

# Predict passes timed per model, the two models alternating so that both meet the same load;
# each model's fastest pass counts (the slower ones met a busy machine, not a costlier model).
TIMING_ROUNDS = 5


@dataclass(frozen=True)
class Candidates:
    """What a promotion gates: the challenger against the champion of the moment, on the
    challenger's frozen evaluation set, each model scored on features of its own recipe."""

    challenger: ModelRef
    champion: ModelRef | None
    eval_set: list[SeriesRef]
    recipes: dict[str, FeatureRecipe]  # role -> recipe; "champion" only when there is one


def candidates(
    client: MlflowClient, model_name: str, version: str | None, alias: str
) -> Candidates:
    """Challenger (given, else the latest version), champion, the challenger's evaluation set
    and both recipes."""
    if version is None:
        versions = client.search_model_versions(f"name = {registry.filter_value(model_name)}")
        if not versions:
            raise LookupError(f"model {model_name}: no registered versions; train one first")
        version = str(max(int(v.version) for v in versions))
    challenger = registry.resolve(client, f"models:/{model_name}/{version}")
    champion = registry.alias_version(client, model_name, alias)
    roles = {"challenger": challenger, "champion": champion}
    return Candidates(
        challenger=challenger,
        champion=champion,
        eval_set=[
            SeriesRef.from_dict(r)
            for r in registry.load_run_json(challenger.run_id, "eval_set.json")
        ],
        recipes={role: registry.recipe_of(ref) for role, ref in roles.items() if ref},
    )


def predictions(
    bundles: dict[str, ModelBundle], cache: FeatureCache, eval_set: list[SeriesRef]
) -> dict[str, Predictions]:
    """Predict every evaluation series with each model (features made by its own recipe), and
    time each."""
    loaded = {}
    for role, bundle in bundles.items():
        names = sorted({r.label for r in eval_set if r.label is not None} | set(bundle.labels))
        data = load_sequences(cache, bundle.recipe.recipe_id, eval_set, names)
        if len(data) < len(eval_set):
            raise LookupError(
                f"{len(eval_set) - len(data)} evaluation series lack features for recipe "
                f"{bundle.recipe.recipe_id}; extract them first"
            )
        # (N, C) in bundle.labels order; also the warm-up
        probs = predict_proba(bundle.module, data.features)
        loaded[role] = (names, data, probs)
    seconds = dict.fromkeys(bundles, math.inf)
    for _ in range(TIMING_ROUNDS):
        for role, bundle in bundles.items():
            started = time.perf_counter()
            predict_proba(bundle.module, loaded[role][1].features)
            seconds[role] = min(seconds[role], time.perf_counter() - started)
    return {
        role: Predictions(
            series_ids=list(data.series_ids),
            y_true=[names[i] for i in data.labels],
            y_pred=[bundles[role].labels[i] for i in probs.argmax(axis=1)],
            parameters=sum(p.numel() for p in bundles[role].module.parameters()),
            seconds_per_series=seconds[role] / max(len(data), 1),
        )
        for role, (names, data, probs) in loaded.items()
    }


def promote(
    client: MlflowClient,
    cache: FeatureCache,
    plan: Candidates,
    rules: PromoteConfig,
    history: PromotionHistory,
    run_id: str = "",
) -> PromotionRecord:
    """Gate the challenger of `plan` against the champion of rules.alias, read again under the
    model's promotion lock. The decision is tagged on the challenger and appended to the
    history."""
    alias, challenger = rules.alias, plan.challenger
    with promotion_lock(history.db, challenger.name):
        # the alias never points at a half-registered version
        registry.check_complete(client, challenger)
        champion = registry.alias_version(client, challenger.name, alias)
        again = champion is not None and champion.version == challenger.version
        bundles = {"challenger": registry.load_bundle(challenger)}
        if champion is not None and not again:
            bundles["champion"] = registry.load_bundle(champion)
        scored = predictions(bundles, cache, plan.eval_set)
        if again:
            decision = Decision(True, f"version {challenger.version} is already @{alias}")
        else:
            decision = gate(scored["challenger"], scored.get("champion"), rules)
        labels = sorted({y for p in scored.values() for y in p.y_true + p.y_pred})
        scores = {role: Score.of(metrics_of(p, labels)) for role, p in scored.items()}
        if again:  # re-promoted: keep whom it replaced
            previous = registry.version_tags(client, challenger).get(
                "promotion.previous_champion", ""
            )
        else:
            previous = champion.version if champion else ""
        record = PromotionRecord(
            model=challenger.name,
            alias=alias,
            challenger=challenger,
            champion_before=champion.version if champion else None,
            previous_champion=previous,
            decision=decision,
            challenger_score=scores["challenger"],
            champion_score=scores.get("champion"),
            eval_series=len(plan.eval_set),
            run_id=run_id,
            time=registry.now_iso(),
            history_file=history.db.where,
        )
        _record(client, record)
        history.append(record.history_row())
    return record


def _record(client: MlflowClient, record: PromotionRecord) -> None:
    """Every decision is written on the challenger's version, promote or not; the alias moves
    before the decision tag is written, so a version never reads "promoted" while the alias
    failed to move."""
    tags = record.tags()
    decided = {DECISION_TAG: tags.pop(DECISION_TAG)}
    registry.tag_version(client, record.challenger, tags)
    if record.decision.promote:
        client.set_registered_model_alias(record.model, record.alias, record.challenger.version)
    registry.tag_version(client, record.challenger, decided)


def rollback(
    client: MlflowClient,
    model_name: str,
    alias: str,
    history: PromotionHistory,
    run_id: str = "",
) -> RollbackRecord:
    """Point the alias back at the champion the current one replaced; recorded like a
    promotion."""
    with promotion_lock(history.db, model_name):
        current = registry.alias_version(client, model_name, alias)
        if current is None:
            raise LookupError(f"model {model_name}: no @{alias} to roll back")
        previous = registry.version_tags(client, current).get("promotion.previous_champion", "")
        if not previous:
            raise LookupError(
                f"model {model_name}: version {current.version} replaced no earlier champion"
            )
        record = RollbackRecord(model_name, alias, current, previous, run_id, registry.now_iso())
        client.set_registered_model_alias(model_name, alias, previous)
        registry.tag_version(client, current, record.tags())
        history.append(record.history_row())
    return record
