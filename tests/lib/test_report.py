"""lib.report: the HTML page from plain values (fast), and from a real MLflow run (slow)."""

from __future__ import annotations

import base64
import dataclasses
import html.parser
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.registry import report
from lstmpipe.lib.registry.history import Action, HistoryRow, Outcome
from lstmpipe.lib.state.store import LocalStore
from lstmpipe.lib.training.plots import confusion_matrix_png

EVIL = "<script>alert(1)</script>"


def values(png: bytes) -> dict:
    test = {
        "accuracy": 0.75,
        "macro_f1": 0.7,
        f"recall/{EVIL}": 1.0,
        f"precision/{EVIL}": 0.5,
        f"f1/{EVIL}": 0.6,
        f"support/{EVIL}": 2,
        "recall/b": 0.5,
        "precision/b": 1.0,
        "f1/b": 0.66,
        "support/b": 2,
    }
    return {
        "run_id": "abc123",
        "run_name": "r",
        "start_time": 0,
        "tags": {"lstmpipe.source": EVIL},
        "params": {"train.epochs": "3"},
        "metrics": {
            "lstm": {"train": {"accuracy": 1.0, "macro_f1": 1.0}, "test": test},
            "baseline": {"test": {"accuracy": 0.5, "macro_f1": 0.4, f"recall/{EVIL}": 0.5}},
        },
        "plots": {"confusion_matrix.png": base64.b64encode(png).decode()},
        "versions": [
            {
                "name": "m",
                "version": "2",
                "tags": {
                    "promotion.decision": "rejected",
                    "promotion.reason": f"refused: recall drop ({EVIL})",
                },
            }
        ],
        "history": [
            {
                "time": "t",
                "action": "promote",
                "decision": "rejected",
                "challenger_version": "2",
                "champion_version": "1",
                "reason": EVIL,
                "challenger_run_id": "abc123",
            }
        ],
    }


class Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.seen.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_render_escapes_labels_and_embeds_plots(tmp_path: Path) -> None:
    png = confusion_matrix_png(
        np.array([[2, 0], [1, 1]]), [EVIL, "b"], tmp_path / "cm.png"
    ).read_bytes()
    page = report.render(values(png))
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parsed = Tags()
    parsed.feed(page)
    assert "script" not in parsed.seen
    # self-contained
    assert parsed.images == ["data:image/png;base64," + base64.b64encode(png).decode()]
    assert "http://" not in page and "https://" not in page
    assert "0.3000" in page  # the macro-F1 the LSTM gains over the baseline on the test split
    assert "rejected" in page and "refused: recall drop" in page


def test_render_survives_a_run_without_artifacts() -> None:
    page = report.render({"run_id": "x", "metrics": {}, "plots": {}, "versions": [], "history": []})
    assert "No metrics.json" in page and "No plots" in page and "No registered version" in page


def test_mlflow_run_of_finds_train_and_promote_records() -> None:
    train = {
        "command": "train",
        "train": {"extract": {}, "train": {"model": "m", "version": "1", "run_id": "R1"}},
    }
    nightly = {"command": "nightly", "train": train, "promote": {"challenger_run_id": "R1"}}
    assert report.mlflow_run_of(train) == report.mlflow_run_of(nightly) == "R1"
    assert report.mlflow_run_of({"command": "promote", "challenger_run_id": "R2"}) == "R2"
    assert report.mlflow_run_of({"command": "extract", "series": 3}) is None


@pytest.mark.slow
def test_collect_reads_a_logged_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_globals
    import mlflow.tracking._tracking_service.utils as tracking_globals
    import mlflow.tracking.fluent as fluent_globals

    from lstmpipe.lib.registry import mlflow_store as registry

    # MLflow's process-wide state, put back after
    for module, name in (
        (tracking_globals, "_tracking_uri"),
        (registry_globals, "_registry_uri"),
        (fluent_globals, "_active_experiment_id"),
    ):
        monkeypatch.setattr(module, name, getattr(module, name))
    client = registry.connect(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = registry.experiment_id(client, "report-test", (tmp_path / "art").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        confusion_matrix_png(
            np.array([[1, 0], [0, 1]]), ["a", EVIL], tmp_path / "confusion_matrix.png"
        )
        (tmp_path / "metrics.json").write_text(
            '{"lstm": {"test": {"accuracy": 1.0, "macro_f1": 1.0}}}'
        )
        mlflow.log_artifact(str(tmp_path / "confusion_matrix.png"))
        mlflow.log_artifact(str(tmp_path / "metrics.json"))
        mlflow.log_param("p", EVIL)
    ours = HistoryRow(
        time="t",
        model="m",
        action=Action.PROMOTE,
        decision=Outcome.PROMOTED,
        challenger_run_id=run.info.run_id,
        id=1,
    )
    got = report.collect(
        client,
        run.info.run_id,
        [ours, dataclasses.replace(ours, challenger_run_id="other", id=2)],
    )
    assert got["metrics"]["lstm"]["test"]["macro_f1"] == 1.0 and set(got["plots"]) == {
        "confusion_matrix.png"
    }
    assert got["params"] == {"p": EVIL} and got["history"] == [ours.to_json()]
    path = Path(report.write(got, LocalStore(tmp_path), "reports/r.html"))
    assert EVIL not in path.read_text()
    with pytest.raises(LookupError, match="run nope: not an MLflow run"):
        report.collect(client, "nope", [])
