"""Promotion (SPEC §3.5): score challenger and champion on the same frozen evaluation set,
move the alias only if the gate passes, record every decision on the model version and in
an append-only history table, and roll back in one call. Promotions of one model are
serialised by a per-model file lock.

The gate (`gate`, pure: predictions and a PromoteConfig in, a Decision out) passes only if
every check holds:

  macro_f1     the challenger's macro-F1 >= the champion's + margin (the point estimate), and
  significance the gain is not chance, by a paired test over the evaluation series:
                 bootstrap: resample the series (the same draw for both models) `resamples`
                   times; the alpha-quantile of the macro-F1 gain, a one-sided (1 - alpha)
                   lower confidence bound, must exceed margin. p_value = the share of resamples
                   whose gain does not exceed margin.
                 mcnemar: exact one-sided binomial test on the discordant series (challenger
                   right and champion wrong vs the reverse): p_value < alpha.
                 none: the point estimate alone.
               A challenger predicting the champion's label on every series has no gain to test:
               it takes over when margin <= 0 and promote_identical (a nightly retrain of
               unchanged data), else it is refused.
  recall       no class's recall falls by more than max_recall_drop;
  cost         parameter count and measured predict seconds per series <= max_cost_ratio x the
               champion's (times below cost_floor_ms count as cost_floor_ms: timer noise).
With no champion the first version is promoted.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient

from lstmpipe.lib.config import PromoteConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.registry.mlflow_store import ModelRef
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.training.bundle import ModelBundle
from lstmpipe.lib.training.experiment import load_sequences
from lstmpipe.lib.training.loop import predict_proba
from lstmpipe.lib.training.metrics import classification_metrics

TESTS = ("bootstrap", "mcnemar", "none")
# Predict passes timed per model, the two models alternating so that both meet the same load; each model's
# fastest pass counts (the slower ones met a busy machine, not a costlier model).
TIMING_ROUNDS = 5
BOOTSTRAP_CHUNK = 64  # resamples counted at once: bounds memory at 64 x series x classes^2 ints


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    checks: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # check -> {"passed": bool, ...values}


@dataclass(frozen=True)
class Predictions:
    """One model's labels for the evaluation series, by class name, and what predicting them cost."""

    series_ids: list[str]
    y_true: list[str]
    y_pred: list[str]
    parameters: int
    seconds_per_series: float


def decide(
    challenger: dict[str, float], champion: dict[str, float] | None, margin: float
) -> Decision:
    """The point-estimate check: no champion, or the challenger's macro-F1 >= the champion's + margin.

    Both metric dicts must come from the same frozen evaluation set.
    """
    new = challenger["macro_f1"]
    if champion is None:
        return Decision(True, f"no champion yet; challenger macro-F1 {new:.3f}")
    old = champion["macro_f1"]
    if new >= old + margin:
        return Decision(
            True, f"challenger macro-F1 {new:.3f} >= champion {old:.3f} + margin {margin:.3f}"
        )
    return Decision(
        False, f"challenger macro-F1 {new:.3f} < champion {old:.3f} + margin {margin:.3f}"
    )


# -- scoring ------------------------------------------------------------------------------------------


def predictions(
    bundles: dict[str, ModelBundle], cache: FeatureCache, eval_set: list[SeriesRef]
) -> dict[str, Predictions]:
    """Predict every evaluation series with each model (features made by its own recipe), and time each."""
    loaded = {}
    for role, bundle in bundles.items():
        names = sorted({r.label for r in eval_set if r.label is not None} | set(bundle.labels))
        data = load_sequences(cache, bundle.recipe.recipe_id, eval_set, names)
        if len(data) < len(eval_set):
            raise LookupError(
                f"{len(eval_set) - len(data)} evaluation series lack features for recipe "
                f"{bundle.recipe.recipe_id}; extract them first"
            )
        probs = predict_proba(
            bundle.module, data.features
        )  # (N, C) in bundle.labels order; also the warm-up
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


def metrics_of(p: Predictions, labels: list[str]) -> dict[str, Any]:
    index = {name: i for i, name in enumerate(labels)}
    return classification_metrics(
        np.array([index[y] for y in p.y_true]), np.array([index[y] for y in p.y_pred]), labels
    )


# -- the paired tests ---------------------------------------------------------------------------------


def macro_f1_rows(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of each row of (R, N) label arrays, as lib.metrics computes it (absent classes left out)."""
    rows = y_true.shape[0]
    flat = (np.arange(rows)[:, None] * num_classes + y_true) * num_classes + y_pred  # (R, N)
    cm = np.bincount(flat.ravel(), minlength=rows * num_classes**2).reshape(
        rows, num_classes, num_classes
    )
    hits = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)  # (R, C)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)  # (R, C) each
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(
            support + predicted > 0, 2 * hits / (support + predicted), 0.0
        )  # = 2PR / (P + R)
    seen = (support + predicted) > 0
    return np.where(
        seen.any(axis=1), (f1 * seen).sum(axis=1) / np.maximum(seen.sum(axis=1), 1), 0.0
    )


def paired_bootstrap(
    y_true: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    num_classes: int,
    margin: float,
    alpha: float,
    resamples: int,
    seed: int,
) -> dict[str, float]:
    """Macro-F1 gain (challenger - champion) over `resamples` draws of the series, both models on each draw.

    ci_low is the one-sided (1 - alpha) lower bound, ci_high the matching upper one (together a
    1 - 2 alpha interval); p_value is the share of draws whose gain does not exceed `margin`.
    """
    n = len(y_true)
    rng = np.random.default_rng(seed)
    gains = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        rows = rng.integers(
            0, n, size=(min(BOOTSTRAP_CHUNK, resamples - start), n)
        )  # (R, N) series drawn
        gains.append(
            macro_f1_rows(y_true[rows], challenger[rows], num_classes)
            - macro_f1_rows(y_true[rows], champion[rows], num_classes)
        )
    gain = np.concatenate(gains)
    return {
        "ci_low": float(np.quantile(gain, alpha)),
        "ci_high": float(np.quantile(gain, 1 - alpha)),
        "p_value": float(np.mean(gain <= margin + 1e-12)),
    }


def mcnemar(challenger_right: np.ndarray, champion_right: np.ndarray) -> dict[str, float]:
    """Exact one-sided McNemar: P(at least b of the b + c discordant series favour the challenger | no difference)."""
    b = int(np.sum(challenger_right & ~champion_right))
    c = int(np.sum(champion_right & ~challenger_right))
    return {"challenger_only": b, "champion_only": c, "p_value": _binomial_tail(b, b + c)}


def _binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), summed in log space (exact enough for any n)."""
    if k <= 0:
        return 1.0
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
        for i in range(k, n + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


# -- the gate -----------------------------------------------------------------------------------------


def gate(challenger: Predictions, champion: Predictions | None, config: PromoteConfig) -> Decision:
    """Every check of the module docstring; the reason names each failed check with its values."""
    if config.test not in TESTS:
        raise ConfigError(f"promote.test: {config.test!r}; expected one of {', '.join(TESTS)}")
    labels = sorted(
        set(challenger.y_true) | set(challenger.y_pred) | set(champion.y_pred if champion else ())
    )
    new = metrics_of(challenger, labels)
    if champion is None:
        return Decision(
            True,
            decide(new, None, config.margin).reason,
            {"macro_f1": {"passed": True, "challenger": new["macro_f1"]}},
        )
    if champion.series_ids != challenger.series_ids:
        raise ValueError(
            "challenger and champion were scored on different evaluation series; score both on one set"
        )
    old = metrics_of(champion, labels)
    index = {name: i for i, name in enumerate(labels)}
    y_true, y_new, y_old = (
        np.array([index[y] for y in ys])
        for ys in (challenger.y_true, challenger.y_pred, champion.y_pred)
    )
    checks = {
        "macro_f1": {
            "passed": decide(new, old, config.margin).promote,
            "challenger": new["macro_f1"],
            "champion": old["macro_f1"],
            "margin": config.margin,
        },
        "significance": _significance(y_true, y_new, y_old, len(labels), config),
        "recall": _recall(new, old, labels, config.max_recall_drop),
        "cost": _cost(challenger, champion, config),
    }
    failed = {name: check for name, check in checks.items() if not check["passed"]}
    if not failed:
        return Decision(
            True,
            "passed: " + "; ".join(check["why"] for check in _described(checks).values()),
            checks,
        )
    return Decision(
        False,
        "refused: " + "; ".join(check["why"] for check in _described(failed).values()),
        checks,
    )


def _significance(
    y_true: np.ndarray,
    y_new: np.ndarray,
    y_old: np.ndarray,
    num_classes: int,
    config: PromoteConfig,
) -> dict[str, Any]:
    if np.array_equal(y_new, y_old):
        passed = config.promote_identical and config.margin <= 0
        return {
            "passed": passed,
            "test": "identical",
            "p_value": None,
            "why": f"predictions identical to the champion's on all {len(y_true)} series"
            + ("" if passed else " (promote_identical is off or margin > 0)"),
        }
    if config.test == "none":
        return {
            "passed": True,
            "test": "none",
            "p_value": None,
            "why": "no significance test (promote.test=none)",
        }
    if config.test == "mcnemar":
        result = mcnemar(y_new == y_true, y_old == y_true)
        passed = result["p_value"] < config.alpha
        return {
            "passed": passed,
            "test": "mcnemar",
            **result,
            "why": f"McNemar exact p={result['p_value']:.4f} {'<' if passed else '>='} alpha {config.alpha} "
            f"({result['challenger_only']} series only the challenger gets right, "
            f"{result['champion_only']} only the champion)",
        }
    result = paired_bootstrap(
        y_true,
        y_new,
        y_old,
        num_classes,
        config.margin,
        config.alpha,
        config.resamples,
        config.seed,
    )
    passed = result["ci_low"] > config.margin
    return {
        "passed": passed,
        "test": "bootstrap",
        "resamples": config.resamples,
        **result,
        "why": f"bootstrap macro-F1 gain lower bound {result['ci_low']:+.3f} "
        f"{'>' if passed else '<='} margin {config.margin:.3f} "
        f"({1 - config.alpha:.0%} one-sided, {config.resamples} resamples, p={result['p_value']:.3f})",
    }


def _recall(
    new: dict[str, Any], old: dict[str, Any], labels: list[str], max_drop: float | None
) -> dict[str, Any]:
    drops = {
        name: old[f"recall/{name}"] - new[f"recall/{name}"]
        for name in labels
        if old[f"support/{name}"] > 0
    }
    worst = max(drops, key=drops.get) if drops else None
    drop = drops[worst] if worst else 0.0
    passed = max_drop is None or drop <= max_drop + 1e-12
    return {
        "passed": passed,
        "worst_class": worst,
        "drop": drop,
        "max_drop": max_drop,
        "why": "recall unchecked"
        if max_drop is None
        else f"largest recall drop {drop:+.3f} ({worst}) {'<=' if passed else '>'} {max_drop:.3f}",
    }


def _cost(new: Predictions, old: Predictions, config: PromoteConfig) -> dict[str, Any]:
    floor = config.cost_floor_ms / 1000
    ratios = {
        "parameters": new.parameters / max(old.parameters, 1),
        "seconds": max(new.seconds_per_series, floor) / max(old.seconds_per_series, floor),
    }
    limit = config.max_cost_ratio
    passed = limit is None or all(r <= limit for r in ratios.values())
    return {
        "passed": passed,
        "parameters": [new.parameters, old.parameters],
        "ms_per_series": [
            round(new.seconds_per_series * 1000, 4),
            round(old.seconds_per_series * 1000, 4),
        ],
        "ratios": ratios,
        "max_ratio": limit,
        "why": "cost unchecked"
        if limit is None
        else f"cost x{ratios['parameters']:.2f} parameters, x{ratios['seconds']:.2f} time "
        f"{'<=' if passed else '>'} x{limit:.2f}",
    }


def _described(checks: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, check in checks.items():
        if name == "macro_f1":
            rel = ">=" if check["passed"] else "<"
            check = {
                **check,
                "why": f"macro-F1 {check['challenger']:.3f} {rel} champion {check['champion']:.3f} "
                f"+ margin {check['margin']:.3f}",
            }
        out[name] = check
    return out


# -- the registry side ----------------------------------------------------------------------------------


def candidates(
    client: MlflowClient, model_name: str, version: str | None, alias: str
) -> dict[str, Any]:
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
        "recipes": {
            role: registry.recipe_of(ref).to_dict()
            for role, ref in (("challenger", challenger), ("champion", champion))
            if ref
        },
    }


def lock_path(locks_dir: Path, model_name: str) -> Path:
    """One lock file per model: promotions of one model queue, other models' go on."""
    return Path(locks_dir) / f"promote-{re.sub(r'[^A-Za-z0-9_.-]', '_', model_name)}.lock"


def promote(
    client: MlflowClient,
    cache: FeatureCache,
    plan: dict[str, Any],
    margin: float,
    alias: str,
    lock_file: Path,
    rules: PromoteConfig | None = None,
    history_file: Path | None = None,
    run_id: str = "",
) -> dict[str, Any]:
    """Gate the challenger of `plan` (from `candidates`) against the current champion.

    `margin` and `alias` as given; `rules` supplies the rest of the gate (default PromoteConfig()).
    The decision is tagged on the challenger and, with `history_file`, appended to the history.
    """
    config = dataclasses.replace(rules or PromoteConfig(), margin=margin, alias=alias)
    eval_set = [SeriesRef.from_dict(r) for r in plan["eval_set"]]
    challenger = ModelRef(**plan["challenger"])
    with exclusive(lock_file):
        registry.check_complete(
            client, challenger
        )  # the alias never points at a half-registered version
        champion = registry.alias_version(client, challenger.name, alias)  # re-read under the lock
        again = champion is not None and champion.version == challenger.version
        bundles = {"challenger": registry.load_bundle(challenger)}
        if champion is not None and not again:
            bundles["champion"] = registry.load_bundle(champion)
        scored = predictions(bundles, cache, eval_set)
        if again:
            decision = Decision(True, f"version {challenger.version} is already @{alias}")
        else:
            decision = gate(scored["challenger"], scored.get("champion"), config)
        labels = sorted({y for p in scored.values() for y in p.y_true + p.y_pred})
        scores = {role: metrics_of(p, labels) for role, p in scored.items()}
        _record(client, challenger, champion, decision, scores, alias, run_id)
        summary = {
            "model": challenger.name,
            "alias": alias,
            "challenger": challenger.version,
            "challenger_run_id": challenger.run_id,
            "champion_before": champion.version if champion else None,
            "promoted": decision.promote,
            "reason": decision.reason,
            "scores": {
                role: {k: round(float(s[k]), 4) for k in ("accuracy", "macro_f1")}
                for role, s in scores.items()
            },
            "test": _test_summary(decision),
            "checks": decision.checks,
            "eval_series": len(eval_set),
        }
        if history_file is not None:
            append_history(history_file, history_row(summary, run_id))
            summary["history_file"] = str(history_file)
    return summary


def rollback(
    client: MlflowClient,
    model_name: str,
    alias: str,
    lock_file: Path,
    history_file: Path | None = None,
    run_id: str = "",
) -> dict[str, Any]:
    """Point the alias back at the champion the current one replaced; recorded like a promotion."""
    with exclusive(lock_file):
        current = registry.alias_version(client, model_name, alias)
        if current is None:
            raise LookupError(f"model {model_name}: no @{alias} to roll back")
        previous = registry.version_tags(client, current).get("promotion.previous_champion", "")
        if not previous:
            raise LookupError(
                f"model {model_name}: version {current.version} replaced no earlier champion"
            )
        client.set_registered_model_alias(model_name, alias, previous)
        registry.tag_version(client, current, {"promotion.rolled_back": registry.now_iso()})
        if history_file is not None:
            append_history(
                history_file,
                {
                    "model": model_name,
                    "action": "rollback",
                    "decision": "rolled_back",
                    "challenger_version": previous,
                    "champion_version": current.version,
                    "champion_after": previous,
                    "reason": f"rollback: @{alias} v{current.version} -> v{previous}",
                    "run_id": run_id,
                    "challenger_run_id": current.run_id,
                },
            )
    return {"model": model_name, "from": current.version, "to": previous}


def _test_summary(decision: Decision) -> dict[str, Any]:
    test = decision.checks.get("significance", {})
    return {k: test[k] for k in ("test", "p_value", "ci_low", "ci_high") if k in test}


def _record(
    client: MlflowClient,
    challenger: ModelRef,
    champion: ModelRef | None,
    decision: Decision,
    scores: dict[str, dict[str, Any]],
    alias: str,
    run_id: str,
) -> None:
    """Every decision is written on the challenger's version, promote or not; the alias moves before the
    decision tag is written, so a version never reads "promoted" while the alias failed to move."""
    if (
        champion is not None and champion.version == challenger.version
    ):  # re-promoted: keep whom it replaced
        previous = registry.version_tags(client, challenger).get("promotion.previous_champion", "")
    else:
        previous = champion.version if champion else ""
    test = _test_summary(decision)
    registry.tag_version(
        client,
        challenger,
        {
            "promotion.reason": decision.reason,
            "promotion.time": registry.now_iso(),
            "promotion.previous_champion": previous,
            "promotion.challenger_macro_f1": f"{scores['challenger']['macro_f1']:.4f}",
            "promotion.champion_macro_f1": f"{scores['champion']['macro_f1']:.4f}"
            if "champion" in scores
            else "",
            "promotion.test": test.get("test", ""),
            "promotion.p_value": "" if test.get("p_value") is None else f"{test['p_value']:.4g}",
            "promotion.ci": f"[{test['ci_low']:.4f}, {test['ci_high']:.4f}]"
            if "ci_low" in test
            else "",
            "promotion.checks": json.dumps(decision.checks, sort_keys=True, default=float),
            "promotion.run_id": run_id,
        },
    )
    if decision.promote:
        client.set_registered_model_alias(challenger.name, alias, challenger.version)
    registry.tag_version(
        client, challenger, {"promotion.decision": "promoted" if decision.promote else "rejected"}
    )


# -- history ----------------------------------------------------------------------------------------------

HISTORY_COLUMNS = {  # column -> SQLite type; one row per decision, never updated or deleted
    "time": "TEXT",
    "model": "TEXT",
    "action": "TEXT",
    "decision": "TEXT",
    "challenger_version": "TEXT",
    "champion_version": "TEXT",
    "champion_after": "TEXT",
    "reason": "TEXT",
    "challenger_macro_f1": "REAL",
    "champion_macro_f1": "REAL",
    "test": "TEXT",
    "p_value": "REAL",
    "ci_low": "REAL",
    "ci_high": "REAL",
    "run_id": "TEXT",
    "challenger_run_id": "TEXT",
    "checks": "TEXT",
}


def history_row(summary: dict[str, Any], run_id: str) -> dict[str, Any]:
    """A promotion summary (from `promote`) as one history row."""
    test, scores = summary["test"], summary["scores"]
    return {
        "model": summary["model"],
        "action": "promote",
        "decision": "promoted" if summary["promoted"] else "rejected",
        "challenger_version": summary["challenger"],
        "champion_version": summary["champion_before"],
        "champion_after": summary["challenger"]
        if summary["promoted"]
        else summary["champion_before"],
        "reason": summary["reason"],
        "challenger_macro_f1": scores["challenger"]["macro_f1"],
        "champion_macro_f1": scores.get("champion", {}).get("macro_f1"),
        "test": test.get("test"),
        "p_value": test.get("p_value"),
        "ci_low": test.get("ci_low"),
        "ci_high": test.get("ci_high"),
        "run_id": run_id,
        "challenger_run_id": summary["challenger_run_id"],
        "checks": json.dumps(summary["checks"], sort_keys=True, default=float),
    }


def append_history(path: Path, row: dict[str, Any]) -> None:
    """Append one decision (SQLite: atomic appends from concurrent processes, readable while written)."""
    values = {"time": registry.now_iso(), **{k: v for k, v in row.items() if k in HISTORY_COLUMNS}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=30)) as db, db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            + ", ".join(f"{name} {kind}" for name, kind in HISTORY_COLUMNS.items())
            + ")"
        )
        db.execute(
            f"INSERT INTO decisions ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            [None if v is None else v for v in values.values()],
        )


def read_history(path: Path, model: str | None = None) -> list[dict[str, Any]]:
    """Every recorded decision (of `model`), oldest first; [] when nothing was recorded yet."""
    if not Path(path).is_file():
        return []
    with closing(sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True, timeout=30)) as db:
        db.row_factory = sqlite3.Row
        query = "SELECT * FROM decisions" + (" WHERE model = ?" if model else "") + " ORDER BY id"
        return [dict(row) for row in db.execute(query, (model,) if model else ())]


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Serialise promotions: one holder of the lock at a time, others wait (flock: per open file, so
    threads of one process exclude each other too)."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
