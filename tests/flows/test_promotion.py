"""Promotion end to end under prefect_test_harness: trained versions, the gate, the history,
rollback, two promotions at once, `promote --history` and `report` through the CLI.

One generated sample (4 classes, 12 clips each) is extracted once; every version is trained on
its cached features with the same seed, so every version has the same frozen evaluation set (its
test split).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lstmpipe.flows.cli import main
from lstmpipe.flows.console import render
from lstmpipe.flows.promote import promote, rollback_flow
from lstmpipe.flows.report import report_of_run
from lstmpipe.flows.runtime import load_runtime
from lstmpipe.flows.train import train
from lstmpipe.lib.demo.video import SampleSpec, generate_archive
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.ops.results import TrainResult
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.registry import promotion
from lstmpipe.lib.registry.history import PromotionHistory
from lstmpipe.lib.registry.promotion import Candidates
from lstmpipe.lib.registry.record import PromotionRecord

pytestmark = pytest.mark.slow
MODEL = "gated"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_archive(
        tmp_path_factory.mktemp("sample"), SampleSpec(clips_per_class=12, size=64)
    )


def tiny(home: Path, epochs: int) -> dict:
    return {
        "runtime.home": str(home),
        "sampling.size": 64,
        "backbone.weights": "none",
        "train.epochs": epochs,
        "train.patience": epochs,
        "train.hidden_size": 64,
        "train.test_fraction": 0.25,
    }


def train_version(sample: Path, home: Path, epochs: int, run_id: str) -> TrainResult:
    return train(
        str(sample), MODEL, str(sample / "labels.csv"), overrides=tiny(home, epochs), run_id=run_id
    ).train


def test_weak_refused_strong_promoted_rollback_restores(
    harness,
    home: Path,
    sample: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    weak = train_version(sample, home, epochs=1, run_id="t-weak")
    rt = load_runtime(overrides=tiny(home, 1))
    client = MlflowClient(rt.tracking_uri, registry_uri=rt.tracking_uri)

    def champion() -> str:
        return str(client.get_model_version_by_alias(MODEL, "champion").version)

    def tags(version: str) -> dict[str, str]:
        return dict(client.get_model_version(MODEL, version).tags)

    # 1. No champion yet: the first version is promoted, whatever it scores.
    first = promote(MODEL, overrides=tiny(home, 1), run_id="p1")
    assert first["promoted"] and first["champion_before"] is None, first
    assert champion() == weak.version

    # 2. A stronger version beats it by more than chance on the same frozen evaluation set.
    strong = train_version(sample, home, epochs=40, run_id="t-strong")
    trained_page = Path(report_of_run(rt, strong.run_id))  # what the train flow ends with
    assert (
        trained_page == home / "reports" / "t-strong.html"
        and "not gated yet" in trained_page.read_text()
    )
    second = promote(MODEL, overrides=tiny(home, 1), run_id="p2")
    assert second["promoted"], second
    assert second["champion_before"] == weak.version and champion() == strong.version
    assert second["test"]["test"] == "bootstrap" and second["test"]["ci_low"] > 0
    assert second["scores"]["challenger"]["macro_f1"] > second["scores"]["champion"]["macro_f1"]

    # 3. A deliberately weakened challenger (one epoch) is refused, with the reason recorded on it.
    weakened = train_version(sample, home, epochs=1, run_id="t-weakened")
    third = promote(MODEL, overrides=tiny(home, 1), run_id="p3")
    assert not third["promoted"] and third["reason"].startswith("refused: macro-F1 "), third
    assert champion() == strong.version
    recorded = tags(weakened.version)
    assert (
        recorded["promotion.decision"] == "rejected"
        and recorded["promotion.reason"] == third["reason"]
    )
    assert (
        recorded["promotion.previous_champion"] == strong.version
        and recorded["promotion.test"] == "bootstrap"
    )
    assert (
        float(recorded["promotion.champion_macro_f1"]) == second["scores"]["challenger"]["macro_f1"]
    )
    assert json.loads(recorded["promotion.checks"])["significance"]["passed"] is False

    # 4. Rollback restores the version the current champion replaced.
    rolled = rollback_flow(MODEL, overrides=tiny(home, 1), run_id="r1")
    assert rolled == {"model": MODEL, "from": strong.version, "to": weak.version}
    assert champion() == weak.version

    shown = render({"command": "promote", "run_id": "p3", "seconds": 1.0, **third})
    assert f"v{weakened.version} not promoted to @champion: refused: macro-F1" in shown
    assert f"report    {third['report']}" in shown and "history   " in shown

    # Every decision and the rollback are rows of the history, in order.
    rows = PromotionHistory.at(rt.state).read(MODEL)
    assert [(r.decision, r.challenger_version, r.champion_version, r.run_id) for r in rows] == [
        ("promoted", weak.version, None, "p1"),
        ("promoted", strong.version, weak.version, "p2"),
        ("rejected", weakened.version, strong.version, "p3"),
        ("rolled_back", weak.version, strong.version, "r1"),
    ]
    assert rows[2].reason == third["reason"] and rows[2].p_value is not None

    # The CLI shows the history (no Prefect involved) ...
    monkeypatch.setenv("LSTMPIPE_HOME", str(home))
    assert main(["promote", "--history", MODEL, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["decision"] for r in shown["history"]] == [
        "promoted",
        "promoted",
        "rejected",
        "rolled_back",
    ]
    assert main(["promote", "--history", MODEL]) == 0
    assert "rolled_back" in capsys.readouterr().out

    # ... and the report of the weakened run, written by promote, shows its refusal; `report`
    # rewrites it.
    page = Path(third["report"])
    assert page == home / "reports" / "t-weakened.html"  # named by the training's lstmpipe run id
    text = page.read_text()
    assert "rejected" in text and "data:image/png;base64," in text and "LSTM macro-F1" in text
    page.unlink()
    assert main(["report", weakened.run_id, "--json"]) == 0  # an MLflow run id
    assert (
        json.loads(capsys.readouterr().out)["report"] == str(page)
        and "rejected" in page.read_text()
    )


def test_two_concurrent_promotions_leave_one_champion_and_two_decisions(
    harness, home: Path, sample: Path
) -> None:
    """Two strong challengers at once against the weak champion: serialised, the second meets the
    first as champion (identical predictions, and this gate refuses identical ones), so exactly
    one wins. Without the lock both would read the weak champion, both pass, and both record a
    win."""
    rt = load_runtime(overrides=tiny(home, 1))
    client = registry.connect(rt.tracking_uri)
    a = train_version(sample, home, epochs=40, run_id="t-a")
    b = train_version(sample, home, epochs=40, run_id="t-b")
    # the weak one, after the test above
    champion = registry.alias_version(client, MODEL, "champion")
    before = champion.version if champion else None
    rules = rt.config.promote.model_copy(update={"promote_identical": False})
    plans = [promotion.candidates(client, MODEL, v.version, "champion") for v in (a, b)]
    history = PromotionHistory.at(rt.state)
    done_before = len(history.read(MODEL))
    results: dict[str, PromotionRecord] = {}

    def run(plan: Candidates) -> None:
        results[plan.challenger.version] = promotion.promote(
            client,
            FeatureCache.local(rt.home / "cache"),
            plan,
            rules,
            history,
            "concurrent",
        )

    threads = [threading.Thread(target=run, args=(plan,)) for plan in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(results) == 2
    winners = [v for v, r in results.items() if r.decision.promote]
    assert len(winners) == 1, results
    (winner,) = winners
    (loser,) = set(results) - {winner}
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == winner
    assert results[winner].champion_before == before
    # it waited for the lock and met the new champion
    assert results[loser].champion_before == winner
    rows = history.read(MODEL)[done_before:]
    assert sorted((r.challenger_version, r.decision) for r in rows) == sorted(
        [(winner, "promoted"), (loser, "rejected")]
    )
