"""Promotion (SPEC §3.5): score challenger and champion on the same frozen evaluation set,
move the alias only if the gate passes, record every decision on the model version,
and roll back in one call. Promotions on one machine are serialised by a file lock.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from lib import registry
from lib.cache import FeatureCache
from lib.experiment import score
from lib.registry import ModelRef
from lib.series import SeriesRef


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(challenger: dict[str, float], champion: dict[str, float] | None, margin: float) -> Decision:
    """Promote when there is no champion, or the challenger's macro-F1 >= the champion's + margin.

    Both metric dicts must come from the same frozen evaluation set.
    """
    new = challenger["macro_f1"]
    if champion is None:
        return Decision(True, f"no champion yet; challenger macro-F1 {new:.3f}")
    old = champion["macro_f1"]
    if new >= old + margin:
        return Decision(True, f"challenger macro-F1 {new:.3f} >= champion {old:.3f} + margin {margin:.3f}")
    return Decision(False, f"challenger macro-F1 {new:.3f} < champion {old:.3f} + margin {margin:.3f}")


def candidates(client: MlflowClient, model_name: str, version: str | None, alias: str) -> dict[str, Any]:
    """Challenger (given, else the latest version), champion, the challenger's evaluation set and both recipes."""
    if version is None:
        versions = client.search_model_versions(f"name = '{model_name}'")
        if not versions:
            raise LookupError(f"model {model_name}: no registered versions; train one first")
        version = str(max(int(v.version) for v in versions))
    challenger = registry.resolve(client, f"models:/{model_name}/{version}")
    champion = registry.alias_version(client, model_name, alias)
    return {
        "challenger": challenger.__dict__,
        "champion": champion.__dict__ if champion else None,
        "eval_set": registry.load_run_json(challenger.run_id, "eval_set.json"),
        "recipes": {role: registry.recipe_of(ref).to_dict()
                    for role, ref in (("challenger", challenger), ("champion", champion)) if ref},
    }


def promote(client: MlflowClient, cache: FeatureCache, plan: dict[str, Any], margin: float, alias: str,
            lock_file: Path) -> dict[str, Any]:
    """Gate the challenger of `plan` (from `candidates`) against the current champion."""
    eval_set = [SeriesRef.from_dict(r) for r in plan["eval_set"]]
    challenger = ModelRef(**plan["challenger"])
    with exclusive(lock_file):
        champion = registry.alias_version(client, challenger.name, alias)  # re-read under the lock
        scores = {"challenger": score(registry.load_bundle(challenger), cache, eval_set)}
        if champion is not None and champion.version == challenger.version:
            decision = Decision(True, f"version {challenger.version} is already @{alias}")
        else:
            if champion is not None:
                scores["champion"] = score(registry.load_bundle(champion), cache, eval_set)
            decision = decide(scores["challenger"], scores.get("champion"), margin)
        _record(client, challenger, champion, decision, scores, alias)
    return {
        "model": challenger.name,
        "alias": alias,
        "challenger": challenger.version,
        "champion_before": champion.version if champion else None,
        "promoted": decision.promote,
        "reason": decision.reason,
        "scores": {role: {k: round(float(s[k]), 4) for k in ("accuracy", "macro_f1")} for role, s in scores.items()},
        "eval_series": len(eval_set),
    }


def rollback(client: MlflowClient, model_name: str, alias: str, lock_file: Path) -> dict[str, Any]:
    """Point the alias back at the champion the current one replaced."""
    with exclusive(lock_file):
        current = registry.alias_version(client, model_name, alias)
        if current is None:
            raise LookupError(f"model {model_name}: no @{alias} to roll back")
        previous = registry.version_tags(client, current).get("promotion.previous_champion", "")
        if not previous:
            raise LookupError(f"model {model_name}: version {current.version} replaced no earlier champion")
        client.set_registered_model_alias(model_name, alias, previous)
        registry.tag_version(client, current, {"promotion.rolled_back": registry.now_iso()})
    return {"model": model_name, "from": current.version, "to": previous}


def _record(client: MlflowClient, challenger: ModelRef, champion: ModelRef | None, decision: Decision,
            scores: dict[str, dict[str, Any]], alias: str) -> None:
    """Every decision is written on the challenger's version, promote or not; then the alias moves."""
    if champion is not None and champion.version == challenger.version:  # re-promoted: keep whom it replaced
        previous = registry.version_tags(client, challenger).get("promotion.previous_champion", "")
    else:
        previous = champion.version if champion else ""
    registry.tag_version(client, challenger, {
        "promotion.decision": "promoted" if decision.promote else "rejected",
        "promotion.reason": decision.reason,
        "promotion.time": registry.now_iso(),
        "promotion.previous_champion": previous,
        "promotion.challenger_macro_f1": f"{scores['challenger']['macro_f1']:.4f}",
        "promotion.champion_macro_f1": f"{scores['champion']['macro_f1']:.4f}" if "champion" in scores else "",
    })
    if decision.promote:
        client.set_registered_model_alias(challenger.name, alias, challenger.version)


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Serialise promotions on this machine: one holder of the lock at a time, others wait."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
