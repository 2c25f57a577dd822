"""The promotion gate as pure functions: predictions in, a decision out (no MLflow,
milliseconds); the decision as tags, history row and JSON; the history table and the lock."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.config import PromoteConfig, PromoteTest
from lstmpipe.lib.registry import gate
from lstmpipe.lib.registry.gate import Predictions
from lstmpipe.lib.registry.history import COLUMNS, Action, HistoryRow, Outcome, PromotionHistory
from lstmpipe.lib.registry.locks import promotion_lock
from lstmpipe.lib.registry.mlflow_store import ModelRef
from lstmpipe.lib.registry.record import PromotionRecord, RollbackRecord, Score
from lstmpipe.lib.state.database import Database
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
        classification_metrics(t, p, list("vwxyz"))["macro_f1"]
        for t, p in zip(y_true, y_pred, strict=False)
    ]
    np.testing.assert_allclose(gate.macro_f1_rows(y_true, y_pred, 5), expected, atol=1e-12)


def test_mcnemar_exact_tail() -> None:
    right, wrong = np.ones(7, bool), np.zeros(7, bool)
    both = np.array([True] * 6 + [False])
    assert gate.mcnemar(right, wrong) == {
        "challenger_only": 7,
        "champion_only": 0,
        "p_value": pytest.approx(1 / 128),
    }
    # 6 of 7 discordant series favour the challenger: P(X >= 6 | 7, 1/2) = (7 + 1) / 128
    assert gate.mcnemar(both, ~both)["p_value"] == pytest.approx(8 / 128)
    assert gate.mcnemar(right, right)["p_value"] == 1.0  # no discordant series: no evidence
    assert gate._binomial_tail(5000, 10000) == pytest.approx(
        0.504, abs=0.001
    )  # large n stays finite


def test_paired_bootstrap_is_seeded_and_brackets_the_gain() -> None:
    idx = {c: i for i, c in enumerate(CLASSES)}
    y = np.array([idx[c] for c in TRUTH])
    better = np.array([idx[c] for c in with_errors(TRUTH, 2)])
    worse = np.array([idx[c] for c in with_errors(TRUTH, 30)])
    first = gate.paired_bootstrap(
        y, better, worse, 4, margin=0.0, alpha=0.05, resamples=500, seed=3
    )
    assert first == gate.paired_bootstrap(
        y, better, worse, 4, margin=0.0, alpha=0.05, resamples=500, seed=3
    )
    assert 0.2 < first["ci_low"] < first["ci_high"] < 0.55 and first["p_value"] == 0.0
    flipped = gate.paired_bootstrap(
        y, worse, better, 4, margin=0.0, alpha=0.05, resamples=500, seed=3
    )
    assert flipped["ci_high"] < 0 and flipped["p_value"] == 1.0


# -- the gate --------------------------------------------------------------------------------------


def test_no_champion_promotes_the_first_version() -> None:
    decision = gate.gate(preds(TRUTH, with_errors(TRUTH, 40)), None, PromoteConfig())
    assert decision.promote and decision.reason.startswith("no champion yet")


@pytest.mark.parametrize("test", ["bootstrap", "mcnemar"])
def test_a_clearly_stronger_challenger_passes_and_a_weaker_one_is_refused(
    test: PromoteTest,
) -> None:
    config = PromoteConfig(test=test)
    strong, weak = preds(TRUTH, with_errors(TRUTH, 2)), preds(TRUTH, with_errors(TRUTH, 30, seed=1))
    promoted = gate.gate(strong, weak, config)
    assert promoted.promote, promoted.reason
    assert promoted.reason.startswith("passed: ") and all(
        c.passed for c in promoted.checks.values()
    )
    assert (
        promoted.checks["significance"].values["test"] == test
        and promoted.checks["significance"].values["p_value"] < 0.05
    )

    refused = gate.gate(weak, strong, config)
    assert not refused.promote
    assert refused.reason.startswith("refused: macro-F1 ") and "< champion" in refused.reason
    assert not refused.checks["significance"].passed


def test_a_small_gain_on_few_series_is_not_significant() -> None:
    truth = TRUTH[:12]
    champion_labels = with_errors(truth, 2)
    fixed = next(i for i, (y, p) in enumerate(zip(truth, champion_labels, strict=False)) if y != p)
    champion = preds(truth, champion_labels)
    challenger = preds(
        truth,
        [
            y if i == fixed else p
            for i, (y, p) in enumerate(zip(truth, champion_labels, strict=False))
        ],
    )
    # better by one series: could be luck
    for test in ("bootstrap", "mcnemar"):
        decision = gate.gate(challenger, champion, PromoteConfig(test=test))
        assert decision.checks["macro_f1"].passed and not decision.checks["significance"].passed
        assert not decision.promote and (
            "bootstrap" in decision.reason or "McNemar" in decision.reason
        )
    assert gate.gate(
        challenger, champion, PromoteConfig(test="none")
    ).promote  # the point estimate alone


def test_margin_applies_to_the_lower_bound() -> None:
    strong, weak = preds(TRUTH, with_errors(TRUTH, 2)), preds(TRUTH, with_errors(TRUTH, 30, seed=1))
    gain = gate.gate(strong, weak, PromoteConfig()).checks["significance"].values["ci_low"]
    refused = gate.gate(strong, weak, PromoteConfig(margin=gain + 0.01))
    assert refused.checks["macro_f1"].passed and not refused.checks["significance"].passed


def test_identical_predictions_take_over_only_when_allowed() -> None:
    same = with_errors(TRUTH, 5)
    decision = gate.gate(preds(TRUTH, same), preds(TRUTH, same), PromoteConfig())
    assert decision.promote and "identical" in decision.reason
    assert not gate.gate(
        preds(TRUTH, same), preds(TRUTH, same), PromoteConfig(promote_identical=False)
    ).promote
    assert not gate.gate(preds(TRUTH, same), preds(TRUTH, same), PromoteConfig(margin=0.01)).promote


def test_a_class_whose_recall_collapses_is_refused() -> None:
    champion = preds(TRUTH, with_errors(TRUTH, 12, seed=2))
    challenger = [
        ("b" if y == "a" and i < 20 else y) for i, y in enumerate(TRUTH)
    ]  # class a: recall 1 -> 0.5
    decision = gate.gate(preds(TRUTH, challenger), champion, PromoteConfig(test="none"))
    assert decision.checks["macro_f1"].passed and not decision.promote
    assert (
        decision.checks["recall"].values["worst_class"] == "a"
        and "largest recall drop" in decision.reason
    )
    assert gate.gate(
        preds(TRUTH, challenger), champion, PromoteConfig(test="none", max_recall_drop=None)
    ).promote


def test_cost_bound_on_parameters_and_time() -> None:
    champion = preds(TRUTH, with_errors(TRUTH, 30, seed=1))
    strong = with_errors(TRUTH, 2)
    heavy = gate.gate(preds(TRUTH, strong, parameters=3000), champion, PromoteConfig())
    assert not heavy.promote and "x3.00 parameters" in heavy.reason
    slow = gate.gate(preds(TRUTH, strong, seconds=0.01), champion, PromoteConfig())
    assert not slow.promote and slow.checks["cost"].values["ratios"]["seconds"] == pytest.approx(
        10.0
    )
    # below the floor (1 ms per series) a 5x difference is timer noise, not cost
    assert gate.gate(preds(TRUTH, strong, seconds=5e-4), champion, PromoteConfig()).promote
    assert gate.gate(
        preds(TRUTH, strong, parameters=3000), champion, PromoteConfig(max_cost_ratio=None)
    ).promote


def test_gate_refuses_mismatched_sets() -> None:
    a, b = preds(TRUTH, TRUTH), preds(TRUTH, with_errors(TRUTH, 3))
    with pytest.raises(ValueError, match="different evaluation series"):
        gate.gate(a, dataclasses.replace(b, series_ids=b.series_ids[::-1]), PromoteConfig())


# -- one decision, written three ways --------------------------------------------------------------

CHALLENGER, CHAMPION = ModelRef("m", "3", "run-3"), ModelRef("m", "2", "run-2")


def record(decision: gate.Decision, champion_score: Score | None) -> PromotionRecord:
    return PromotionRecord(
        model="m",
        alias="champion",
        challenger=CHALLENGER,
        champion_before=CHAMPION.version,
        previous_champion=CHAMPION.version,
        decision=decision,
        challenger_score=Score.of({"accuracy": 0.97501, "macro_f1": 0.974449}),
        champion_score=champion_score,
        eval_series=len(TRUTH),
        run_id="p7",
        time="2026-12-04T12:00:00+00:00",
        history_file="/state/promotions/history.sqlite",
    )


@pytest.mark.parametrize("test", ["bootstrap", "mcnemar"])
def test_one_decision_gives_the_same_values_to_tags_history_and_json(
    test: PromoteTest, tmp_path: Path
) -> None:
    strong, weak = preds(TRUTH, with_errors(TRUTH, 2)), preds(TRUTH, with_errors(TRUTH, 30, seed=1))
    decided = record(
        gate.gate(strong, weak, PromoteConfig(test=test)),
        Score.of({"accuracy": 0.625, "macro_f1": 0.61234}),
    )
    tags, row, out = decided.tags(), decided.history_row(), decided.to_json()

    # the names scripts and existing tables read, exactly
    assert list(tags) == [
        "promotion.reason",
        "promotion.time",
        "promotion.previous_champion",
        "promotion.challenger_macro_f1",
        "promotion.champion_macro_f1",
        "promotion.test",
        "promotion.p_value",
        "promotion.ci",
        "promotion.checks",
        "promotion.run_id",
        "promotion.decision",
    ]
    assert list(out) == [
        "model",
        "alias",
        "challenger",
        "challenger_run_id",
        "champion_before",
        "promoted",
        "reason",
        "scores",
        "test",
        "checks",
        "eval_series",
        "history_file",
    ]
    assert all(isinstance(value, str) for value in tags.values())

    # the same values in all three
    assert out["promoted"] and tags["promotion.decision"] == row.decision == "promoted"
    assert tags["promotion.reason"] == row.reason == out["reason"]
    assert tags["promotion.time"] == row.time and tags["promotion.run_id"] == row.run_id == "p7"
    assert out["challenger"] == row.challenger_version == row.champion_after == "3"
    assert out["champion_before"] == row.champion_version == tags["promotion.previous_champion"]
    assert out["challenger_run_id"] == row.challenger_run_id == "run-3"
    assert out["scores"] == {
        "challenger": {"accuracy": 0.975, "macro_f1": 0.9744},
        "champion": {"accuracy": 0.625, "macro_f1": 0.6123},
    }
    assert float(tags["promotion.challenger_macro_f1"]) == row.challenger_macro_f1 == 0.9744
    assert float(tags["promotion.champion_macro_f1"]) == row.champion_macro_f1 == 0.6123
    assert tags["promotion.test"] == row.test == out["test"]["test"] == test
    assert row.p_value == out["test"]["p_value"] < 0.05
    assert float(tags["promotion.p_value"]) == pytest.approx(row.p_value, rel=1e-3)
    if test == "bootstrap":
        assert (row.ci_low, row.ci_high) == (out["test"]["ci_low"], out["test"]["ci_high"])
        assert tags["promotion.ci"] == f"[{row.ci_low:.4f}, {row.ci_high:.4f}]"
    else:
        assert row.ci_low is None and "ci_low" not in out["test"] and tags["promotion.ci"] == ""
    as_json = json.loads(json.dumps(out["checks"], default=float))
    assert json.loads(tags["promotion.checks"]) == json.loads(row.checks or "") == as_json
    assert set(as_json) == {"macro_f1", "significance", "recall", "cost"}

    # and the row reads back as written
    history = opened(tmp_path / "history.sqlite")
    history.append(row)
    (stored,) = history.read()
    assert stored == dataclasses.replace(row, id=1)


def test_a_decision_without_a_champion_writes_empty_tags_and_null_columns() -> None:
    first = gate.gate(preds(TRUTH, with_errors(TRUTH, 40)), None, PromoteConfig())
    decided = dataclasses.replace(record(first, None), champion_before=None, previous_champion="")
    tags, row, out = decided.tags(), decided.history_row(), decided.to_json()
    assert (
        tags["promotion.champion_macro_f1"] == tags["promotion.test"] == tags["promotion.ci"] == ""
    )
    assert tags["promotion.p_value"] == tags["promotion.previous_champion"] == ""
    assert row.champion_version is row.champion_macro_f1 is row.test is row.p_value is None
    assert out["test"] == {} and list(out["scores"]) == ["challenger"]
    assert out["checks"] == {
        "macro_f1": {"passed": True, "challenger": first.checks["macro_f1"].values["challenger"]}
    }


def test_a_refusal_leaves_the_champion_in_place() -> None:
    strong, weak = preds(TRUTH, with_errors(TRUTH, 2)), preds(TRUTH, with_errors(TRUTH, 30, seed=1))
    decided = record(gate.gate(weak, strong, PromoteConfig()), Score(0.97, 0.97))
    row = decided.history_row()
    assert decided.tags()["promotion.decision"] == row.decision == Outcome.REJECTED
    assert not decided.to_json()["promoted"] and row.champion_after == CHAMPION.version


def test_a_rollback_as_history_row_and_json() -> None:
    rolled = RollbackRecord("m", "champion", CHALLENGER, "2", "r1", "2026-12-04T12:00:00+00:00")
    assert rolled.to_json() == {"model": "m", "from": "3", "to": "2"}
    assert rolled.tags() == {"promotion.rolled_back": rolled.time}
    assert rolled.history_row() == HistoryRow(
        time=rolled.time,
        model="m",
        action=Action.ROLLBACK,
        decision=Outcome.ROLLED_BACK,
        challenger_version="2",
        champion_version="3",
        champion_after="2",
        reason="rollback: @champion v3 -> v2",
        run_id="r1",
        challenger_run_id="run-3",
    )


# -- history and the lock -------------------------------------------------------------------------


def opened(path: Path) -> PromotionHistory:
    return PromotionHistory(Database.sqlite(path))


# The table as the first release created it: state directories hold it and keep appending.
RELEASED_SCHEMA = (
    "CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT, model TEXT, "
    "action TEXT, decision TEXT, challenger_version TEXT, champion_version TEXT, "
    "champion_after TEXT, reason TEXT, challenger_macro_f1 REAL, champion_macro_f1 REAL, "
    "test TEXT, p_value REAL, ci_low REAL, ci_high REAL, run_id TEXT, challenger_run_id TEXT, "
    "checks TEXT)"
)


def test_history_appends_and_reads_back(tmp_path: Path) -> None:
    history = opened(tmp_path / "promotions" / "history.sqlite")
    assert history.read() == []
    rejected = HistoryRow(
        time="t",
        model="m",
        action=Action.PROMOTE,
        decision=Outcome.REJECTED,
        challenger_version="2",
        champion_version="1",
        champion_after="1",
        reason="refused: x",
        challenger_macro_f1=0.5,
        champion_macro_f1=0.9,
        test="bootstrap",
        p_value=1.0,
        ci_low=-0.5,
        ci_high=-0.3,
        challenger_run_id="r2",
        checks="{}",
    )
    threads = [
        threading.Thread(
            target=history.append, args=(dataclasses.replace(rejected, run_id=f"run{i}"),)
        )
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history.append(
        HistoryRow(time="t", model="other", action=Action.ROLLBACK, decision=Outcome.ROLLED_BACK)
    )
    rows = history.read("m")
    assert len(rows) == 8 and sorted(r.run_id or "" for r in rows) == [f"run{i}" for i in range(8)]
    assert rows[0].to_json() | {"id": 0, "run_id": ""} == {
        "id": 0,
        "time": "t",
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
    assert [r.model for r in history.read()] == ["m"] * 8 + ["other"]


def columns(path: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(path)) as db:
        return [(row[1], row[2]) for row in db.execute("PRAGMA table_info(decisions)")]


def test_a_released_history_table_keeps_working(tmp_path: Path) -> None:
    path, fresh = tmp_path / "history.sqlite", tmp_path / "fresh.sqlite"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(RELEASED_SCHEMA)
        db.execute(
            "INSERT INTO decisions (time, model, action, decision, challenger_version, reason) "
            "VALUES ('t0', 'm', 'promote', 'promoted', '1', 'no champion yet')"
        )
    history = opened(path)
    history.append(
        HistoryRow(time="t1", model="m", action=Action.ROLLBACK, decision=Outcome.ROLLED_BACK)
    )
    assert [(r.id, r.decision, r.challenger_version) for r in history.read("m")] == [
        (1, Outcome.PROMOTED, "1"),
        (2, Outcome.ROLLED_BACK, None),
    ]
    opened(fresh).append(
        HistoryRow(time="t", model="m", action=Action.PROMOTE, decision=Outcome.PROMOTED)
    )
    assert columns(fresh) == columns(path)  # a new table is the released one
    assert list(COLUMNS) == [name for name, _ in columns(path)][1:]


def test_lock_is_per_model_and_excludes_threads(tmp_path: Path) -> None:
    db = Database.sqlite(tmp_path / "promotions" / "history.sqlite")
    inside, most = [0], [0]

    def hold() -> None:
        with promotion_lock(db, "m"):
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            inside[0] -= 1

    threads = [threading.Thread(target=hold) for _ in range(4)]
    with promotion_lock(db, "a/b c"):  # another model's promotion holds none of these up
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads) and most[0] == 1
