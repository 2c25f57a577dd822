"""The promotion gate as pure functions: predictions in, a decision out (no MLflow, milliseconds)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.config import PromoteConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.registry import promotion as promote
from lstmpipe.lib.registry.promotion import Predictions
from lstmpipe.lib.training.metrics import classification_metrics

CLASSES = ["a", "b", "c", "d"]


def preds(
    y_true: list[str], y_pred: list[str], parameters: int = 1000, seconds: float = 1e-4
) -> Predictions:
    return Predictions(
        [f"s{i}" for i in range(len(y_true))], list(y_true), list(y_pred), parameters, seconds
    )


def with_errors(y_true: list[str], wrong: int, seed: int = 0) -> list[str]:
    """y_true with `wrong` series (chosen by seed) predicted as the next class."""
    rng = np.random.default_rng(seed)
    out = list(y_true)
    for i in rng.choice(len(y_true), size=wrong, replace=False):
        out[i] = CLASSES[(CLASSES.index(out[i]) + 1) % len(CLASSES)]
    return out


TRUTH = [CLASSES[i % 4] for i in range(80)]  # 20 series per class


# -- the statistics --------------------------------------------------------------------------------


def test_macro_f1_rows_matches_lib_metrics() -> None:
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 5, size=(30, 17)), rng.integers(0, 5, size=(30, 17))
    y_pred[0] = 0  # a row where most classes are never predicted
    expected = [
        classification_metrics(t, p, list("vwxyz"))["macro_f1"] for t, p in zip(y_true, y_pred, strict=False)
    ]
    np.testing.assert_allclose(promote.macro_f1_rows(y_true, y_pred, 5), expected, atol=1e-12)


def test_mcnemar_exact_tail() -> None:
    right, wrong = np.ones(7, bool), np.zeros(7, bool)
    both = np.array([True] * 6 + [False])
    assert promote.mcnemar(right, wrong) == {
        "challenger_only": 7,
        "champion_only": 0,
        "p_value": pytest.approx(1 / 128),
    }
    # 6 of 7 discordant series favour the challenger: P(X >= 6 | 7, 1/2) = (7 + 1) / 128
    assert promote.mcnemar(both, ~both)["p_value"] == pytest.approx(8 / 128)
    assert promote.mcnemar(right, right)["p_value"] == 1.0  # no discordant series: no evidence
    assert promote._binomial_tail(5000, 10000) == pytest.approx(
        0.504, abs=0.001
    )  # large n stays finite


def test_paired_bootstrap_is_seeded_and_brackets_the_gain() -> None:
    idx = {c: i for i, c in enumerate(CLASSES)}
    y = np.array([idx[c] for c in TRUTH])
    better = np.array([idx[c] for c in with_errors(TRUTH, 2)])
    worse = np.array([idx[c] for c in with_errors(TRUTH, 30)])
    first = promote.paired_bootstrap(
        y, better, worse, 4, margin=0.0, alpha=0.05, resamples=500, seed=3
    )
    assert first == promote.paired_bootstrap(
        y, better, worse, 4, margin=0.0, alpha=0.05, resamples=500, seed=3
    )
    assert 0.2 < first["ci_low"] < first["ci_high"] < 0.55 and first["p_value"] == 0.0
    flipped = promote.paired_bootstrap(
        y, worse, better, 4, margin=0.0, alpha=0.05, resamples=500, seed=3
    )
    assert flipped["ci_high"] < 0 and flipped["p_value"] == 1.0


# -- the gate --------------------------------------------------------------------------------------


def test_no_champion_promotes_the_first_version() -> None:
    decision = promote.gate(preds(TRUTH, with_errors(TRUTH, 40)), None, PromoteConfig())
    assert decision.promote and decision.reason.startswith("no champion yet")


@pytest.mark.parametrize("test", ["bootstrap", "mcnemar"])
def test_a_clearly_stronger_challenger_passes_and_a_weaker_one_is_refused(test: str) -> None:
    config = PromoteConfig(test=test)
    strong, weak = preds(TRUTH, with_errors(TRUTH, 2)), preds(TRUTH, with_errors(TRUTH, 30, seed=1))
    promoted = promote.gate(strong, weak, config)
    assert promoted.promote, promoted.reason
    assert promoted.reason.startswith("passed: ") and all(
        c["passed"] for c in promoted.checks.values()
    )
    assert (
        promoted.checks["significance"]["test"] == test
        and promoted.checks["significance"]["p_value"] < 0.05
    )

    refused = promote.gate(weak, strong, config)
    assert not refused.promote
    assert refused.reason.startswith("refused: macro-F1 ") and "< champion" in refused.reason
    assert not refused.checks["significance"]["passed"]


def test_a_small_gain_on_few_series_is_not_significant() -> None:
    truth = TRUTH[:12]
    champion_labels = with_errors(truth, 2)
    fixed = next(i for i, (y, p) in enumerate(zip(truth, champion_labels, strict=False)) if y != p)
    champion = preds(truth, champion_labels)
    challenger = preds(
        truth, [y if i == fixed else p for i, (y, p) in enumerate(zip(truth, champion_labels, strict=False))]
    )
    # better by one series: could be luck
    for test in ("bootstrap", "mcnemar"):
        decision = promote.gate(challenger, champion, PromoteConfig(test=test))
        assert (
            decision.checks["macro_f1"]["passed"] and not decision.checks["significance"]["passed"]
        )
        assert not decision.promote and (
            "bootstrap" in decision.reason or "McNemar" in decision.reason
        )
    assert promote.gate(
        challenger, champion, PromoteConfig(test="none")
    ).promote  # the point estimate alone


def test_margin_applies_to_the_lower_bound() -> None:
    strong, weak = preds(TRUTH, with_errors(TRUTH, 2)), preds(TRUTH, with_errors(TRUTH, 30, seed=1))
    gain = promote.gate(strong, weak, PromoteConfig()).checks["significance"]["ci_low"]
    refused = promote.gate(strong, weak, PromoteConfig(margin=gain + 0.01))
    assert refused.checks["macro_f1"]["passed"] and not refused.checks["significance"]["passed"]


def test_identical_predictions_take_over_only_when_allowed() -> None:
    same = with_errors(TRUTH, 5)
    decision = promote.gate(preds(TRUTH, same), preds(TRUTH, same), PromoteConfig())
    assert decision.promote and "identical" in decision.reason
    assert not promote.gate(
        preds(TRUTH, same), preds(TRUTH, same), PromoteConfig(promote_identical=False)
    ).promote
    assert not promote.gate(
        preds(TRUTH, same), preds(TRUTH, same), PromoteConfig(margin=0.01)
    ).promote


def test_a_class_whose_recall_collapses_is_refused() -> None:
    champion = preds(TRUTH, with_errors(TRUTH, 12, seed=2))
    challenger = [
        ("b" if y == "a" and i < 20 else y) for i, y in enumerate(TRUTH)
    ]  # class a: recall 1 -> 0.5
    decision = promote.gate(preds(TRUTH, challenger), champion, PromoteConfig(test="none"))
    assert decision.checks["macro_f1"]["passed"] and not decision.promote
    assert (
        decision.checks["recall"]["worst_class"] == "a" and "largest recall drop" in decision.reason
    )
    assert promote.gate(
        preds(TRUTH, challenger), champion, PromoteConfig(test="none", max_recall_drop=None)
    ).promote


def test_cost_bound_on_parameters_and_time() -> None:
    champion = preds(TRUTH, with_errors(TRUTH, 30, seed=1))
    strong = with_errors(TRUTH, 2)
    heavy = promote.gate(preds(TRUTH, strong, parameters=3000), champion, PromoteConfig())
    assert not heavy.promote and "x3.00 parameters" in heavy.reason
    slow = promote.gate(preds(TRUTH, strong, seconds=0.01), champion, PromoteConfig())
    assert not slow.promote and slow.checks["cost"]["ratios"]["seconds"] == pytest.approx(10.0)
    # below the floor (1 ms per series) a 5x difference is timer noise, not cost
    assert promote.gate(preds(TRUTH, strong, seconds=5e-4), champion, PromoteConfig()).promote
    assert promote.gate(
        preds(TRUTH, strong, parameters=3000), champion, PromoteConfig(max_cost_ratio=None)
    ).promote


def test_gate_refuses_bad_settings_and_mismatched_sets() -> None:
    a, b = preds(TRUTH, TRUTH), preds(TRUTH, with_errors(TRUTH, 3))
    with pytest.raises(ConfigError, match="promote.test: 'ttest'"):
        promote.gate(a, b, PromoteConfig(test="ttest"))
    with pytest.raises(ValueError, match="different evaluation series"):
        promote.gate(a, dataclasses.replace(b, series_ids=b.series_ids[::-1]), PromoteConfig())


# -- history and the lock ---------------------------------------------------------------------------


def test_history_appends_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "promotions" / "history.sqlite"
    assert promote.read_history(path) == []
    summary = {
        "model": "m",
        "challenger": "2",
        "challenger_run_id": "r2",
        "champion_before": "1",
        "promoted": False,
        "reason": "refused: x",
        "scores": {"challenger": {"macro_f1": 0.5}, "champion": {"macro_f1": 0.9}},
        "test": {"test": "bootstrap", "p_value": 1.0, "ci_low": -0.5, "ci_high": -0.3},
        "checks": {},
    }
    threads = [
        threading.Thread(
            target=promote.append_history, args=(path, promote.history_row(summary, f"run{i}"))
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    promote.append_history(
        path, {"model": "other", "action": "rollback", "decision": "rolled_back"}
    )
    rows = promote.read_history(path, "m")
    assert len(rows) == 8 and sorted(r["run_id"] for r in rows) == [f"run{i}" for i in range(8)]
    assert rows[0] | {"id": 0, "time": "", "run_id": ""} == {
        "id": 0,
        "time": "",
        "model": "m",
        "action": "promote",
        "decision": "rejected",
        "challenger_version": "2",
        "champion_version": "1",
        "champion_after": "1",
        "reason": "refused: x",
        "challenger_macro_f1": 0.5,
        "champion_macro_f1": 0.9,
        "test": "bootstrap",
        "p_value": 1.0,
        "ci_low": -0.5,
        "ci_high": -0.3,
        "run_id": "",
        "challenger_run_id": "r2",
        "checks": "{}",
    }
    assert [r["model"] for r in promote.read_history(path)] == ["m"] * 8 + ["other"]


def test_lock_is_per_model_and_excludes_threads(tmp_path: Path) -> None:
    assert promote.lock_path(tmp_path, "a/b c") == tmp_path / "promote-a_b_c.lock"
    inside, most = [0], [0]

    def hold() -> None:
        with promote.exclusive(promote.lock_path(tmp_path, "m")):
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            inside[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1
