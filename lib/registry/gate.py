"""The promotion gate (SPEC §3.5), pure: predictions and a PromoteConfig in, a Decision out.

No MLflow, no files: promotion.py scores the two models and records what this decides.
The gate passes only if every check holds:

  macro_f1     the challenger's macro-F1 >= the champion's + margin (the point estimate), and
  significance the gain is not chance, by a paired test over the evaluation series:
                 bootstrap: resample the series (the same draw for both models) `resamples`
                   times; the alpha-quantile of the macro-F1 gain, a one-sided (1 - alpha)
                   lower confidence bound, must exceed margin. p_value = the share of
                   resamples whose gain does not exceed margin.
                 mcnemar: exact one-sided binomial test on the discordant series (challenger
                   right and champion wrong vs the reverse): p_value < alpha.
                 none: the point estimate alone.
               A challenger predicting the champion's label on every series has no gain to
               test: it takes over when margin <= 0 and promote_identical (a nightly retrain
               of unchanged data), else it is refused.
  recall       no class's recall falls by more than max_recall_drop;
  cost         parameter count and measured predict seconds per series <= max_cost_ratio x
               the champion's (times below cost_floor_ms count as cost_floor_ms: timer noise).
With no champion the first version is promoted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstmpipe.lib.config import PromoteConfig
from lstmpipe.lib.training.metrics import classification_metrics

# resamples counted at once: bounds memory at 64 x series x classes^2 ints
BOOTSTRAP_CHUNK = 64


@dataclass(frozen=True)
class Predictions:
    """One model's labels for the evaluation series, by class name, and what predicting them
    cost."""

    series_ids: list[str]
    y_true: list[str]
    y_pred: list[str]
    parameters: int
    seconds_per_series: float


@dataclass(frozen=True)
class Check:
    """One check of the gate: whether it held and the values behind it, as recorded.

    `why` is the sentence the decision's reason quotes; None where the record carries none
    (the macro-F1 check, whose sentence is built from its values).
    """

    passed: bool
    values: dict[str, Any] = field(default_factory=dict)
    why: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The check as tags, history and `promote --json` carry it."""
        return {"passed": self.passed, **self.values} | (
            {} if self.why is None else {"why": self.why}
        )


@dataclass(frozen=True)
class Significance:
    """The paired test's outcome, as the decision's summary names it."""

    test: str  # bootstrap | mcnemar | none | identical
    p_value: float | None
    ci: tuple[float, float] | None  # the bootstrap's (ci_low, ci_high); None for the other tests

    def to_json(self) -> dict[str, Any]:
        ci = {} if self.ci is None else {"ci_low": self.ci[0], "ci_high": self.ci[1]}
        return {"test": self.test, "p_value": self.p_value, **ci}


@dataclass(frozen=True)
class Decision:
    """Promote or not, the sentence saying why, and every check by name."""

    promote: bool
    reason: str
    checks: dict[str, Check] = field(default_factory=dict)

    @property
    def significance(self) -> Significance | None:
        """The paired test, when one ran (none without a champion, nor for a re-promotion)."""
        check = self.checks.get("significance")
        if check is None:
            return None
        v = check.values
        ci = (v["ci_low"], v["ci_high"]) if "ci_low" in v else None
        return Significance(v["test"], v.get("p_value"), ci)

    def checks_json(self) -> dict[str, dict[str, Any]]:
        return {name: check.to_json() for name, check in self.checks.items()}


def decide(
    challenger: dict[str, float], champion: dict[str, float] | None, margin: float
) -> Decision:
    """The point-estimate check: no champion, or challenger macro-F1 >= champion's + margin.

    Both metric dicts must come from the same frozen evaluation set.
    """
    new = challenger["macro_f1"]
    if champion is None:
        return Decision(True, f"no champion yet; challenger macro-F1 {new:.3f}")
    old = champion["macro_f1"]
    rel = ">=" if new >= old + margin else "<"
    return Decision(
        rel == ">=", f"challenger macro-F1 {new:.3f} {rel} champion {old:.3f} + margin {margin:.3f}"
    )


def metrics_of(p: Predictions, labels: list[str]) -> dict[str, Any]:
    index = {name: i for i, name in enumerate(labels)}
    return classification_metrics(
        np.array([index[y] for y in p.y_true]), np.array([index[y] for y in p.y_pred]), labels
    )


# -- the paired tests -----------------------------------------------------------------------------


def macro_f1_rows(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro-F1 of each row of (R, N) label arrays, as lib.training.metrics computes it (absent
    classes left out)."""
    rows = y_true.shape[0]
    flat = (np.arange(rows)[:, None] * num_classes + y_true) * num_classes + y_pred  # (R, N)
    cm = np.bincount(flat.ravel(), minlength=rows * num_classes**2).reshape(
        rows, num_classes, num_classes
    )
    hits = np.diagonal(cm, axis1=1, axis2=2).astype(np.float64)  # (R, C)
    support, predicted = cm.sum(axis=2), cm.sum(axis=1)  # (R, C) each
    with np.errstate(divide="ignore", invalid="ignore"):
        # = 2PR / (P + R)
        f1 = np.where(support + predicted > 0, 2 * hits / (support + predicted), 0.0)
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
    """Macro-F1 gain (challenger - champion) over `resamples` draws of the series, both models
    on each draw.

    ci_low is the one-sided (1 - alpha) lower bound, ci_high the matching upper one (together a
    1 - 2 alpha interval); p_value is the share of draws whose gain does not exceed `margin`.
    """
    n = len(y_true)
    rng = np.random.default_rng(seed)
    gains = []
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        # (R, N) series drawn
        rows = rng.integers(0, n, size=(min(BOOTSTRAP_CHUNK, resamples - start), n))
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
    """Exact one-sided McNemar: P(at least b of the b + c discordant series favour the
    challenger | no difference)."""
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


# -- the gate -------------------------------------------------------------------------------------


def gate(challenger: Predictions, champion: Predictions | None, config: PromoteConfig) -> Decision:
    """Every check of the module docstring; the reason names each failed check with its values."""
    labels = sorted(
        set(challenger.y_true) | set(challenger.y_pred) | set(champion.y_pred if champion else ())
    )
    new = metrics_of(challenger, labels)
    if champion is None:
        first = decide(new, None, config.margin)
        return Decision(
            True, first.reason, {"macro_f1": Check(True, {"challenger": new["macro_f1"]})}
        )
    if champion.series_ids != challenger.series_ids:
        raise ValueError(
            "challenger and champion were scored on different evaluation series; "
            "score both on one set"
        )
    old = metrics_of(champion, labels)
    index = {name: i for i, name in enumerate(labels)}
    y_true, y_new, y_old = (
        np.array([index[y] for y in ys])
        for ys in (challenger.y_true, challenger.y_pred, champion.y_pred)
    )
    point = decide(new, old, config.margin)
    checks = {
        "macro_f1": Check(
            point.promote,
            {"challenger": new["macro_f1"], "champion": old["macro_f1"], "margin": config.margin},
        ),
        "significance": _significance(y_true, y_new, y_old, len(labels), config),
        "recall": _recall(new, old, labels, config.max_recall_drop),
        "cost": _cost(challenger, champion, config),
    }
    # the reason quotes every check when all pass, else the failed ones
    passed = all(check.passed for check in checks.values())
    quoted = [name for name, check in checks.items() if passed or not check.passed]
    sentences = "; ".join(_sentence(name, checks[name]) for name in quoted)
    return Decision(passed, f"{'passed' if passed else 'refused'}: {sentences}", checks)


def _sentence(name: str, check: Check) -> str:
    if check.why is not None:
        return check.why
    v = check.values  # the macro-F1 check
    rel = ">=" if check.passed else "<"
    return (
        f"macro-F1 {v['challenger']:.3f} {rel} champion {v['champion']:.3f} "
        f"+ margin {v['margin']:.3f}"
    )


def _significance(
    y_true: np.ndarray,
    y_new: np.ndarray,
    y_old: np.ndarray,
    num_classes: int,
    config: PromoteConfig,
) -> Check:
    if np.array_equal(y_new, y_old):
        passed = config.promote_identical and config.margin <= 0
        return Check(
            passed,
            {"test": "identical", "p_value": None},
            f"predictions identical to the champion's on all {len(y_true)} series"
            + ("" if passed else " (promote_identical is off or margin > 0)"),
        )
    if config.test == "none":
        return Check(
            True, {"test": "none", "p_value": None}, "no significance test (promote.test=none)"
        )
    if config.test == "mcnemar":
        result = mcnemar(y_new == y_true, y_old == y_true)
        passed = result["p_value"] < config.alpha
        return Check(
            passed,
            {"test": "mcnemar", **result},
            f"McNemar exact p={result['p_value']:.4f} {'<' if passed else '>='} alpha "
            f"{config.alpha} ({result['challenger_only']} series only the challenger gets "
            f"right, {result['champion_only']} only the champion)",
        )
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
    return Check(
        passed,
        {"test": "bootstrap", "resamples": config.resamples, **result},
        f"bootstrap macro-F1 gain lower bound {result['ci_low']:+.3f} "
        f"{'>' if passed else '<='} margin {config.margin:.3f} "
        f"({1 - config.alpha:.0%} one-sided, {config.resamples} resamples, "
        f"p={result['p_value']:.3f})",
    )


def _recall(
    new: dict[str, Any], old: dict[str, Any], labels: list[str], max_drop: float | None
) -> Check:
    drops = {
        name: old[f"recall/{name}"] - new[f"recall/{name}"]
        for name in labels
        if old[f"support/{name}"] > 0
    }
    worst = max(drops, key=lambda name: drops[name]) if drops else None
    drop = drops[worst] if worst else 0.0
    passed = max_drop is None or drop <= max_drop + 1e-12
    return Check(
        passed,
        {"worst_class": worst, "drop": drop, "max_drop": max_drop},
        "recall unchecked"
        if max_drop is None
        else f"largest recall drop {drop:+.3f} ({worst}) {'<=' if passed else '>'} {max_drop:.3f}",
    )


def _cost(new: Predictions, old: Predictions, config: PromoteConfig) -> Check:
    floor = config.cost_floor_ms / 1000
    ratios = {
        "parameters": new.parameters / max(old.parameters, 1),
        "seconds": max(new.seconds_per_series, floor) / max(old.seconds_per_series, floor),
    }
    limit = config.max_cost_ratio
    passed = limit is None or all(r <= limit for r in ratios.values())
    return Check(
        passed,
        {
            "parameters": [new.parameters, old.parameters],
            "ms_per_series": [
                round(new.seconds_per_series * 1000, 4),
                round(old.seconds_per_series * 1000, 4),
            ],
            "ratios": ratios,
            "max_ratio": limit,
        },
        "cost unchecked"
        if limit is None
        else f"cost x{ratios['parameters']:.2f} parameters, x{ratios['seconds']:.2f} time "
        f"{'<=' if passed else '>'} x{limit:.2f}",
    )
