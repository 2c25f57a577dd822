"""The bundle, the MLflow store, promotion, the predictor and predictions against a real store.

The store is SQLite plus a file artifact root under tmp_path; the model is an LSTM
trained on the generated sample's real features (tiny config), so every round trip
goes through the same files and code a production run does.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

from lstmpipe.lib.config import Config, PromoteConfig
from lstmpipe.lib.features.backbone import Backbone
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.inference.predictions import predictions_table, write_predictions
from lstmpipe.lib.inference.predictor import Predictor
from lstmpipe.lib.registry import gate
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.registry import promotion as promote
from lstmpipe.lib.registry.history import PromotionHistory
from lstmpipe.lib.registry.mlflow_store import ModelRef
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.state.database import Database
from lstmpipe.lib.state.store import LocalStore
from lstmpipe.lib.training.bundle import ModelBundle
from lstmpipe.lib.training.experiment import Outcome, run_experiment, score
from tests.helpers import isolate_mlflow

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

CLASSES = ["fade_in", "fade_out", "grow", "shrink"]  # the sample's classes, sorted: the logit order


@dataclass(frozen=True)
class Store:
    client: MlflowClient
    uri: str
    artifact_root: str
    root: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A fresh SQLite tracking + registry store; MLflow's process-wide state is put back after."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        isolate_mlflow(mp)
        uri = f"sqlite:///{root}/mlflow.db"
        yield Store(registry.connect(uri), uri, (root / "art").as_uri(), root)


@pytest.fixture(scope="module")
def outcome(
    sample_cache: FeatureCache,
    sample_refs: list[SeriesRef],
    backbone: tuple[Backbone, FeatureRecipe],
    tiny_config: Config,
) -> Outcome:
    return run_experiment(sample_cache, backbone[1], sample_refs, tiny_config.train)


@pytest.fixture(scope="module")
def registered(store: Store, outcome: Outcome) -> ModelRef:
    return registry.log_training(
        store.client,
        outcome,
        "seq",
        {"epochs": 15},
        store.artifact_root,
        {"lstmpipe.run_id": "test-run"},
    )


def sequences(lengths: list[int], dim: int = 512, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, dim)).astype(np.float32) for n in lengths]


def eval_refs(outcome: Outcome) -> list[SeriesRef]:
    return [SeriesRef.from_dict(r) for r in outcome.eval_set]


def zeroed(bundle: ModelBundle) -> ModelBundle:
    """The same network with every weight zeroed: equal logits, so it predicts the first class
    for everything."""
    module = bundle.spec.build()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.zero_()
    return ModelBundle(bundle.spec, module.eval(), bundle.labels, bundle.recipe)


# -- training outcome and the bundle on disk ------------------------------------------------------


def test_outcome_covers_the_sample(outcome: Outcome, sample_refs: list[SeriesRef]) -> None:
    assert outcome.bundle.labels == CLASSES
    assert sorted(sum(outcome.splits.values(), [])) == sorted(r.series_id for r in sample_refs)
    assert {split: len(ids) for split, ids in outcome.splits.items()} == {
        "train": 4,
        "val": 4,
        "test": 4,
    }
    assert [r["series_id"] for r in outcome.eval_set] == outcome.splits["test"]
    assert 1 <= len(outcome.fit.history) <= 15


def test_bundle_files_round_trip(outcome: Outcome, tmp_path: Path) -> None:
    saved = outcome.bundle.save(tmp_path / "bundle")
    assert sorted(p.name for p in saved.iterdir()) == [
        "labels.json",
        "recipe.json",
        "spec.json",
        "weights.pt",
    ]
    torch.load(saved / "weights.pt", weights_only=True)  # plain tensors only
    loaded = ModelBundle.load(saved)
    assert (loaded.spec, loaded.labels, loaded.recipe) == (
        outcome.bundle.spec,
        CLASSES,
        outcome.bundle.recipe,
    )
    features = sequences([5, 11, 1])
    np.testing.assert_allclose(
        loaded.predict(features), outcome.bundle.predict(features), atol=1e-6
    )


# -- registry --------------------------------------------------------------------------------------


def test_log_training_registers_a_version_with_its_tags(
    store: Store, registered: ModelRef, outcome: Outcome
) -> None:
    assert (registered.name, registered.version) == ("seq", "1")
    tags = registry.version_tags(store.client, registered)
    assert tags["recipe_id"] == outcome.bundle.recipe.recipe_id
    assert json.loads(tags["labels"]) == CLASSES
    assert tags["eval_set"] == "eval_set.json" and tags["split_hash"] == outcome.split_hash
    assert tags["test_macro_f1"] == f"{outcome.metrics['test']['macro_f1']:.4f}"
    assert tags["lstmpipe.run_id"] == "test-run"
    assert registry.load_run_json(registered.run_id, "eval_set.json") == outcome.eval_set

    run = store.client.get_run(registered.run_id)
    assert (
        run.data.params["recipe_id"] == outcome.bundle.recipe.recipe_id
        and run.data.params["epochs"] == "15"
    )
    assert {"test_macro_f1", "test_accuracy", "baseline_test_macro_f1", "val_recall_grow"} <= set(
        run.data.metrics
    )
    assert len(store.client.get_metric_history(registered.run_id, "val_loss")) == len(
        outcome.fit.history
    )
    logged = {a.path for a in store.client.list_artifacts(registered.run_id)}
    assert {
        "confusion_matrix.png",
        "learning_curves.png",
        "eval_set.json",
        "splits.json",
        "metrics.json",
        "recipe.json",
    } <= logged
    # Artifacts land under the artifact root given, not wherever the process happens to run.
    assert list((store.root / "art").rglob("confusion_matrix.png"))


def test_registry_bundle_predicts_like_the_in_memory_model(
    registered: ModelRef, outcome: Outcome
) -> None:
    """Loaded as data (load_bundle: the bundle's files, no stored code); lengths other than the
    logged example's 3."""
    loaded = registry.load_bundle(registered)
    assert (
        loaded is not outcome.bundle
        and loaded.recipe == outcome.bundle.recipe
        and loaded.labels == CLASSES
    )
    for lengths in ([5], [11], [5, 11, 2]):
        features = sequences(lengths, seed=len(lengths))
        got, want = loaded.predict(features), outcome.bundle.predict(features)
        assert got.shape == (len(lengths), 4)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert (
        np.abs(
            outcome.bundle.predict(sequences([5])) - outcome.bundle.predict(sequences([11]))
        ).max()
        > 1e-4
    )


def test_pyfunc_model_takes_padded_features_and_lengths(
    registered: ModelRef, outcome: Outcome
) -> None:
    model = mlflow.pyfunc.load_model(f"models:/{registered.name}/{registered.version}")
    features = sequences([5, 11])
    # padding holds garbage: lengths must cut it off
    padded = np.full((2, 11, 512), 1e3, np.float32)
    for row, f in enumerate(features):
        padded[row, : len(f)] = f
    probabilities = model.predict({"features": padded, "lengths": np.array([5, 11], np.int64)})
    assert probabilities.shape == (2, 4) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, outcome.bundle.predict(features), atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)

    empty = {"features": np.zeros((0, 4, 512), np.float32), "lengths": np.zeros(0, np.int64)}
    assert model.predict(empty).shape == (0, 4)
    with pytest.raises(ValueError, match=r"lengths \[5, 12\]"):
        model.predict({"features": padded, "lengths": np.array([5, 12], np.int64)})


def test_a_version_carries_its_code_and_pins_installable_requirements(
    registered: ModelRef, tmp_path: Path
) -> None:
    """What lets it load where lstmpipe is not installed (the load itself:
    tests/integration/test_model_portable.py)."""
    local = Path(
        download_artifacts(
            f"models:/{registered.name}/{registered.version}", dst_path=str(tmp_path)
        )
    )
    requirements = (local / "requirements.txt").read_text().split()
    assert sorted(r.split("==")[0] for r in requirements) == ["mlflow", "numpy", "torch"]
    assert all(r.count("==") == 1 and "+" not in r for r in requirements), requirements
    code = local / "code"
    carried = sorted(str(f.relative_to(code)) for f in code.rglob("*.py"))
    assert carried == [  # no __init__.py: namespace folders never shadow an installed lstmpipe
        "lstmpipe/lib/errors.py",
        "lstmpipe/lib/state_files.py",
        "lstmpipe/lib/training/bundle_files.py",
        "lstmpipe/lib/training/model.py",
    ]
    lib = Path(registry.__file__).parents[1]
    for name in carried:
        assert (code / name).read_bytes() == (lib / name.removeprefix("lstmpipe/lib/")).read_bytes()


def test_run_logs_data_snapshot_reports_model_card_and_provenance_tags(
    store: Store, registered: ModelRef, outcome: Outcome
) -> None:
    run = store.client.get_run(registered.run_id)
    params = run.data.params
    assert (params["n_train"], params["n_val"], params["n_test"]) == ("4", "4", "4")
    assert params["split_hash"] == outcome.split_hash and params["data.classes"] == "4"
    assert params["data.dataset_hash"] == registry.dataset_hash(
        outcome.splits, outcome.bundle.recipe.recipe_id, None
    )
    assert params["data.dataset_hash_covers"] == "ids"
    tags = registry.version_tags(store.client, registered)
    assert tags["dataset_hash"] == params["data.dataset_hash"]
    assert tags["git_commit"] == registry.source_commit() != ""

    report = registry.load_run_text(registered.run_id, "per_class_report.csv").splitlines()
    assert report[0] == "model,split,class,precision,recall,f1,support"
    assert len(report) == 1 + 2 * 3 * len(CLASSES)  # lstm and baseline x train, val, test x classes
    card = registry.load_run_text(registered.run_id, "model_card.md")
    assert card.startswith(f"# seq v{registered.version}")
    for heading in (
        "## Intended use",
        "## Data snapshot",
        "## Metrics (LSTM vs frame-averaging baseline)",
        "## Limitations",
        "## Training configuration",
    ):
        assert heading in card
    assert (
        f"| test | macro_f1 | {outcome.metrics['test']['macro_f1']:.4f} | "
        f"{outcome.baseline_metrics['test']['macro_f1']:.4f} |" in card
    )
    assert outcome.bundle.recipe.recipe_id in card and outcome.split_hash in card


def test_dataset_hash_changes_with_content_split_or_recipe() -> None:
    splits = {"train": ["a", "b"], "test": ["c"]}
    same = registry.dataset_hash(splits, "r1", {"a": "1", "b": "2", "c": "3"})
    assert same == registry.dataset_hash(
        {"test": ["c"], "train": ["b", "a"]}, "r1", {"a": "1", "b": "2", "c": "3"}
    )
    assert same != registry.dataset_hash(splits, "r1", {"a": "1", "b": "2", "c": "4"})
    assert same != registry.dataset_hash(
        {"train": ["a"], "test": ["b", "c"]}, "r1", {"a": "1", "b": "2", "c": "3"}
    )
    assert same != registry.dataset_hash(splits, "r2", {"a": "1", "b": "2", "c": "3"})


def test_source_commit_is_unknown_outside_git(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(registry.subprocess, "run", no_git)
    assert registry.source_commit() == "unknown"


def test_logged_model_has_a_variable_length_signature_and_an_example(
    store: Store, registered: ModelRef, outcome: Outcome
) -> None:
    store.client.set_registered_model_alias("seq", "signature-test", registered.version)
    model = mlflow.pyfunc.load_model("models:/seq@signature-test")
    schema_in, schema_out = model.metadata.get_input_schema(), model.metadata.get_output_schema()
    assert schema_in is not None and schema_out is not None
    inputs = {spec.name: spec for spec in schema_in.inputs}
    assert inputs["features"].shape == (-1, -1, 512) and inputs["lengths"].shape == (-1,)
    assert schema_out.inputs[0].shape == (-1, 4)
    assert model.metadata.saved_input_example_info is not None
    for lengths in ([3], [9, 2]):  # neither is fixed by the logged example's 3 frames
        features = sequences(lengths, seed=7)
        padded = np.zeros((len(lengths), max(lengths), 512), np.float32)
        for row, f in enumerate(features):
            padded[row, : len(f)] = f
        got = model.predict({"features": padded, "lengths": np.array(lengths, np.int64)})
        np.testing.assert_allclose(got, outcome.bundle.predict(features), atol=1e-5)
    store.client.delete_registered_model_alias("seq", "signature-test")


def test_logging_a_model_warns_nothing_about_its_dict_example(
    store: Store, outcome: Outcome, caplog: pytest.LogCaptureFixture
) -> None:
    mlflow.set_experiment(
        experiment_id=registry.experiment_id(store.client, "quiet", store.artifact_root)
    )
    with caplog.at_level("WARNING", logger="mlflow"), mlflow.start_run():
        registry.log_model(outcome.bundle, "quiet")
    assert not [r for r in caplog.records if "input example" in r.getMessage().lower()], caplog.text


def test_resolve_pins_aliases_and_versions(store: Store, registered: ModelRef) -> None:
    store.client.set_registered_model_alias(
        "seq", "pinned", registered.version
    )  # not @champion: promotion owns it
    pinned = ModelRef("seq", "1", registered.run_id)
    assert registry.resolve(store.client, "models:/seq@pinned") == pinned
    assert registry.resolve(store.client, "models:/seq/1") == pinned
    assert registry.alias_version(store.client, "seq", "pinned") == pinned
    assert registry.alias_version(store.client, "seq", "staging") is None
    with pytest.raises(LookupError, match="models:/seq@staging"):
        registry.resolve(store.client, "models:/seq@staging")
    with pytest.raises(LookupError, match="models:/seq/9"):
        registry.resolve(store.client, "models:/seq/9")
    with pytest.raises(LookupError, match="models:/nothing@champion"):
        registry.resolve(store.client, "models:/nothing@champion")
    with pytest.raises(ValueError, match="expected models:/NAME@ALIAS"):
        registry.resolve(store.client, "models:/seq/1/extra")


# -- promotion -------------------------------------------------------------------------------------


def test_decide_gate() -> None:
    assert gate.decide(
        {"macro_f1": 0.1}, None, margin=0.5
    ).promote  # no champion: anything goes first
    assert gate.decide(
        {"macro_f1": 0.75}, {"macro_f1": 0.5}, margin=0.25
    ).promote  # exactly the margin
    assert not gate.decide({"macro_f1": 0.74}, {"macro_f1": 0.5}, margin=0.25).promote
    assert gate.decide(
        {"macro_f1": 0.5}, {"macro_f1": 0.5}, margin=0.0
    ).promote  # a tie passes a zero margin
    assert not gate.decide({"macro_f1": 0.5}, {"macro_f1": 0.5}, margin=0.01).promote
    rejected = gate.decide({"macro_f1": 0.4}, {"macro_f1": 0.6}, margin=0.0)
    assert rejected.reason == "challenger macro-F1 0.400 < champion 0.600 + margin 0.000"


def test_promote_reject_promote_rollback(
    store: Store, registered: ModelRef, outcome: Outcome, sample_cache: FeatureCache, tmp_path: Path
) -> None:
    """On `seq`: its version 1 (the trained model), then a worse version 2, then version 3 equal
    to 1."""
    client, name = store.client, registered.name
    history = PromotionHistory(Database.sqlite(tmp_path / "history.sqlite"))

    def latest_plan() -> promote.Candidates:
        return promote.candidates(client, name, None, "champion")

    def champion() -> str | None:
        found = registry.alias_version(client, name, "champion")
        return found.version if found else None

    def tags(version: str) -> dict[str, str]:
        return registry.version_tags(client, ModelRef(name, version, ""))

    good = score(outcome.bundle, sample_cache, eval_refs(outcome))["macro_f1"]
    bad_bundle = zeroed(outcome.bundle)
    bad = score(bad_bundle, sample_cache, eval_refs(outcome))["macro_f1"]
    assert bad < good, (
        "the worse model must score lower on the evaluation set for this test to mean anything"
    )

    # 1. The first version meets no champion: promoted.
    v1 = registered
    assert champion() is None
    plan = latest_plan()
    assert plan.challenger == v1 and plan.champion is None
    assert [ref.to_dict() for ref in plan.eval_set] == outcome.eval_set
    assert plan.recipes["challenger"] == outcome.bundle.recipe
    first = promote.promote(client, sample_cache, plan, PromoteConfig(), history).to_json()
    assert (first["promoted"], first["champion_before"], first["eval_series"]) == (True, None, 4)
    assert champion() == v1.version
    assert (
        registry.resolve(client, f"models:/{name}@champion") == registry.resolve(client, name) == v1
    )
    assert tags(v1.version)["promotion.decision"] == "promoted"
    assert tags(v1.version)["promotion.challenger_macro_f1"] == f"{good:.4f}"
    assert (
        tags(v1.version)["promotion.previous_champion"] == ""
        and "no champion" in tags(v1.version)["promotion.reason"]
    )

    # 2. A worse version is scored on the same frozen evaluation set and rejected; the champion
    # stays.
    v2 = registry.log_training(
        client, dataclasses.replace(outcome, bundle=bad_bundle), name, {}, store.artifact_root, {}
    )
    plan = latest_plan()
    assert plan.challenger == v2 and plan.champion == v1
    second = promote.promote(client, sample_cache, plan, PromoteConfig(), history).to_json()
    assert not second["promoted"] and second["champion_before"] == v1.version
    assert second["scores"]["challenger"]["macro_f1"] == round(bad, 4)
    assert second["scores"]["champion"]["macro_f1"] == round(good, 4)
    assert champion() == v1.version
    assert tags(v2.version)["promotion.decision"] == "rejected"
    assert tags(v2.version)["promotion.champion_macro_f1"] == f"{good:.4f}"
    assert (
        tags(v2.version)["promotion.reason"] == second["reason"]
        and tags(v2.version)["promotion.time"]
    )

    # 3. An equally good version passes a zero margin, and remembers whom it replaced.
    v3 = registry.log_training(client, outcome, name, {}, store.artifact_root, {})
    third = promote.promote(client, sample_cache, latest_plan(), PromoteConfig(), history).to_json()
    assert third["promoted"] and champion() == v3.version
    assert tags(v3.version)["promotion.previous_champion"] == v1.version
    again = promote.promote(client, sample_cache, latest_plan(), PromoteConfig(), history).to_json()
    assert again["promoted"] and "already @champion" in again["reason"] and champion() == v3.version
    assert (
        tags(v3.version)["promotion.previous_champion"] == v1.version
    )  # a re-run keeps what rollback needs

    # 4. Rollback puts the previous champion back, once.
    assert promote.rollback(client, name, "champion", history).to_json() == {
        "model": name,
        "from": v3.version,
        "to": v1.version,
    }
    assert champion() == v1.version
    assert "promotion.rolled_back" in tags(v3.version)
    with pytest.raises(LookupError, match="replaced no earlier champion"):
        promote.rollback(client, name, "champion", history)
    assert champion() == v1.version


def test_candidates_and_rollback_of_unknown_models(store: Store, tmp_path: Path) -> None:
    with pytest.raises(LookupError, match="model absent: no registered versions"):
        promote.candidates(store.client, "absent", None, "champion")
    with pytest.raises(LookupError, match="no @champion to roll back"):
        promote.rollback(
            store.client,
            "absent",
            "champion",
            PromotionHistory(Database.sqlite(tmp_path / "h.sqlite")),
        )


def test_scoring_needs_every_evaluation_series_cached(outcome: Outcome, tmp_path: Path) -> None:
    with pytest.raises(LookupError, match="4 evaluation series lack features"):
        score(outcome.bundle, FeatureCache.local(tmp_path / "empty"), eval_refs(outcome))


# -- inference -------------------------------------------------------------------------------------

PREDICTION_COLUMNS = [
    "series_id",
    "content_hash",
    "source_kind",
    "predicted_label",
    "probability",
    *[f"prob_{c}" for c in CLASSES],
    "model_name",
    "model_version",
    "recipe_id",
    "run_id",
    "predicted_at",
]


def test_predictor_writes_the_documented_table(
    registered: ModelRef,
    outcome: Outcome,
    sample_cache: FeatureCache,
    sample_refs: list[SeriesRef],
    tmp_path: Path,
) -> None:
    not_extracted = SeriesRef("new/clip.mp4", "hash-never-extracted", "video", "/nowhere/clip.mp4")
    predictor = Predictor(
        registry.load_bundle(registered), registered, sample_cache, run_id="infer-1"
    )
    table = predictor(sample_refs + [not_extracted])
    assert table.column_names == PREDICTION_COLUMNS
    assert table["series_id"].to_pylist() == [
        r.series_id for r in sample_refs
    ]  # the one without features left out

    probabilities = np.stack([table[f"prob_{c}"].to_numpy() for c in CLASSES], axis=1)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    recipe_id = outcome.bundle.recipe.recipe_id
    cached = sample_cache.read([(r.content_hash, recipe_id) for r in sample_refs])
    expected = outcome.bundle.predict(
        [cached[(r.content_hash, recipe_id)].features for r in sample_refs]
    )
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert table["predicted_label"].to_pylist() == [CLASSES[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(table["probability"].to_numpy(), probabilities.max(axis=1))
    assert set(table["source_kind"].to_pylist()) == {"video"}
    assert set(table["model_name"].to_pylist()) == {"seq"} and set(
        table["model_version"].to_pylist()
    ) == {"1"}
    assert set(table["recipe_id"].to_pylist()) == {recipe_id} and set(
        table["run_id"].to_pylist()
    ) == {"infer-1"}
    assert table.schema.field("predicted_at").type == pa.timestamp("us", tz="UTC")

    write_predictions(table, LocalStore(tmp_path / "out"), "preds.parquet")
    assert pq.read_table(tmp_path / "out" / "preds.parquet").equals(table)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tmp-")]


def test_predictions_table_with_no_rows_keeps_its_columns() -> None:
    table = predictions_table([], np.zeros((0, 4), np.float32), CLASSES, "seq", "1", "rid", "run")
    assert table.num_rows == 0 and table.column_names == PREDICTION_COLUMNS


def test_connect_leaves_the_environment_as_it_was(tmp_path, monkeypatch) -> None:
    """MLflow exports the URI to os.environ; a later run in this process must not inherit it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry.connect(f"sqlite:///{tmp_path}/mlflow.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
