"""A model version is data (SPEC §6; issue 16 item 1). Whoever can register a version or write
the artifact store may replace any file of it: the Python that MLflow's pyfunc flavour imports
(pyfunc_entry.py and the code it carries), spec.json, labels.json, weights.pt.

lstmpipe loads a version through `mlflow_store.load_bundle`, which promote (the nightly gate) and
infer use: it downloads the bundle's data files only and rebuilds the network from them. Planted
code never runs there (its marker file never appears, while MLflow's own pyfunc loader does run it)
and the predictions are the honest model's; a spec asking for a huge network, a pickled payload in
weights.pt, tensors that do not fit the spec and oversized files are each refused with a message
naming the version and the file, before anything is allocated or downloaded.

The store is SQLite plus a file artifact root under tmp: files are planted straight into it, as
anyone with write access to an artifact store could.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from lstmpipe.lib.config import PromoteConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.cache import FeatureCache, SeriesFeatures
from lstmpipe.lib.registry import mlflow_store as registry
from lstmpipe.lib.registry.mlflow_store import BUNDLE_PATH, COMPLETE_TAG, ModelRef
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.training.bundle import ModelBundle
from lstmpipe.lib.training.model import ModelSpec
from lstmpipe.tasks.infer import predict_shard, resolve_model
from lstmpipe.tasks.promote import promote_challenger, promotion_candidates
from tests.cache_files import root_of
from tests.helpers import isolate_mlflow
from tests.security.conftest import isolated
from tests.security.test_pickle_weights import RECIPE, trojan

# an SQLite store's first connection migrates its schema (~7 s on 2 busy cores); each version ~2 s
pytestmark = pytest.mark.slow

SPEC = ModelSpec(kind="lstm", input_dim=4, num_classes=2, hidden_size=8, input_proj=8)
LABELS = ["calm", "storm"]
# a fresh interpreter importing torch and MLflow: ~10 s on 2 idle cores, 60 s measured under load
LOADED_MACHINE_S = 300


@dataclass(frozen=True)
class Store:
    client: MlflowClient
    uri: str
    root: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A fresh SQLite tracking + registry store; MLflow's process-wide state is put back after."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        isolate_mlflow(mp)
        uri = f"sqlite:///{root}/mlflow.db"
        yield Store(registry.connect(uri), uri, root)


@pytest.fixture(scope="module")
def honest() -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(SPEC, SPEC.build().eval(), LABELS, RECIPE)


@pytest.fixture(scope="module")
def eval_refs() -> list[SeriesRef]:
    return [
        SeriesRef(f"eval/{i}.mp4", f"hash-{i}", "video", f"/data/eval/{i}.mp4", label=LABELS[i % 2])
        for i in range(4)
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, eval_refs: list[SeriesRef]) -> FeatureCache:
    """Features of the evaluation series under the model's recipe: what promote and infer read."""
    rng = np.random.default_rng(0)
    cache = FeatureCache.local(tmp_path_factory.mktemp("home") / "cache")
    cache.write(
        RECIPE.recipe_id,
        [
            SeriesFeatures(
                r.series_id,
                r.content_hash,
                rng.normal(size=(5 + i, 4)).astype(np.float32),
                np.arange(5 + i, dtype=np.float64),
            )
            for i, r in enumerate(eval_refs)
        ],
    )
    return cache


def register(store: Store, bundle: ModelBundle, eval_refs: list[SeriesRef], name: str) -> ModelRef:
    """A version as lstmpipe's training logs one: the pyfunc model, its run's recipe and eval set,
    the tag that marks it complete."""
    experiment = registry.experiment_id(
        store.client, f"lstmpipe/{name}", (store.root / "art").as_uri()
    )
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_dict(RECIPE.to_dict(), "recipe.json")
        mlflow.log_text(json.dumps([r.to_dict() for r in eval_refs]), "eval_set.json")
        ref = registry.log_model(bundle, name, {COMPLETE_TAG: RECIPE.recipe_id})
    return ModelRef(ref.name, ref.version, run.info.run_id)


def stored(store: Store, ref: ModelRef) -> Path:
    """The version's model folder in the artifact store: where an attacker with write access
    plants files."""
    uri = store.client.get_model_version_download_uri(ref.name, ref.version)
    return Path(urlparse(uri).path)


def plant_code(folder: Path, marker: Path) -> list[Path]:
    """Every Python file of the version (pyfunc_entry.py, the lstmpipe code it carries) replaced
    by a payload that creates `marker` when imported."""
    payload = (
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nraise ImportError('payload')\n"
    )
    planted = sorted(folder.rglob("*.py"))
    for path in planted:
        path.write_text(payload)
    return planted


def features(eval_refs: list[SeriesRef], cache: FeatureCache) -> list[np.ndarray]:
    found = cache.read([(r.content_hash, RECIPE.recipe_id) for r in eval_refs])
    return [found[(r.content_hash, RECIPE.recipe_id)].features for r in eval_refs]


def test_planted_code_never_runs_in_promote_or_infer(
    store: Store,
    honest: ModelBundle,
    eval_refs: list[SeriesRef],
    cache: FeatureCache,
    tmp_path: Path,
) -> None:
    ref = register(store, honest, eval_refs, "planted")
    marker = tmp_path / "payload-ran"
    planted = plant_code(stored(store, ref), marker)
    assert {p.name for p in planted} >= {"pyfunc_entry.py", "bundle_files.py", "model.py"}
    want = honest.predict(features(eval_refs, cache))

    loaded = registry.load_bundle(ref)
    np.testing.assert_allclose(loaded.predict(features(eval_refs, cache)), want, atol=1e-6)

    # the nightly gate: candidates, then promote (no champion yet: the challenger is promoted)
    plan = promotion_candidates.fn(store.uri, ref.name, None, "champion")
    record = promote_challenger.fn(
        plan,
        store.uri,
        StatePlaces(str(root_of(cache).parent)),
        PromoteConfig(),
        "night-1",
    )
    assert record.decision.promote and plan.challenger.version == ref.version

    # infer: pin @champion, predict a shard
    pinned = resolve_model.fn(store.uri, f"models:/{ref.name}@champion")
    rows = predict_shard.fn(
        eval_refs, pinned, store.uri, StatePlaces(str(root_of(cache).parent)), "infer-1"
    ).rows
    assert [row["series_id"] for row in rows] == [r.series_id for r in eval_refs]
    got = np.array([[row[f"prob_{label}"] for label in LABELS] for row in rows])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not marker.exists(), "code stored with the model version ran"

    # the control: MLflow's own pyfunc loader imports the planted file (in a fresh interpreter)
    shown = isolated(
        f"""
        import mlflow
        mlflow.set_tracking_uri({store.uri!r}); mlflow.set_registry_uri({store.uri!r})
        try:
            mlflow.pyfunc.load_model("models:/{ref.name}/{ref.version}")
            result = "loaded"
        except Exception as exc:
            result = str(exc)
    """,
        timeout_s=LOADED_MACHINE_S,
    )
    assert "payload" in shown["result"] and marker.exists(), shown


@pytest.fixture(scope="module")
def victim(store: Store, honest: ModelBundle, eval_refs: list[SeriesRef]) -> ModelRef:
    """One version whose files the refusal tests replace, one at a time, and put back."""
    return register(store, honest, eval_refs, "victim")


@pytest.fixture()
def bundle_dir(store: Store, victim: ModelRef, system_tmp: Path) -> Iterator[Path]:
    """The victim's stored bundle folder; every file is restored after the test. `system_tmp`:
    a refused load leaves nothing behind in the temp folder."""
    folder = stored(store, victim) / BUNDLE_PATH
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    yield folder
    for p in folder.iterdir():
        p.unlink()
    for name, data in before.items():
        (folder / name).write_bytes(data)


def refusal(ref: ModelRef) -> str:
    with pytest.raises(ConfigError) as caught:
        registry.load_bundle(ref)
    message = str(caught.value)
    assert message.startswith(f"model {ref.name} version {ref.version}: "), message
    return message


def spec_with(**changes: object) -> bytes:
    return json.dumps({**SPEC.to_dict(), **changes}).encode()


HOSTILE_SPECS = {
    # 10^9 units: 16 * 10^18 bytes of LSTM weights were it allocated
    "huge-hidden": (
        {"hidden_size": 10**9},
        "spec.json refused: hidden_size 1000000000 is not an integer from 1 to 65536",
    ),
    # every width within bounds, 1.6 * 10^12 parameters in all
    "huge-total": (
        {"hidden_size": 65536, "input_proj": 65536, "num_layers": 16, "bidirectional": True},
        "spec.json refused: the network it describes has 1614925070346 parameters, "
        "over the 268435456",
    ),
    "bool-as-int": ({"num_layers": True}, "num_layers True is not an integer"),
    "text-as-int": ({"input_dim": "4"}, "input_dim '4' is not an integer"),
    "float-width": ({"hidden_size": 8.5}, "hidden_size 8.5 is not an integer"),
    "negative": ({"num_classes": -2}, "num_classes -2 is not an integer from 2 to 10000"),
    "bad-dropout": ({"dropout": 7}, "dropout 7 is not a number from 0 to below 1"),
    "unknown-key": ({"exec": "os.system"}, "ModelSpec: unknown keys ['exec']"),
    "unknown-cell": ({"cell": "transformer"}, "ModelSpec.cell 'transformer' is not supported"),
}


@pytest.mark.parametrize("case", HOSTILE_SPECS, ids=list(HOSTILE_SPECS))
def test_a_hostile_spec_is_refused_before_the_network_is_built(
    victim: ModelRef, bundle_dir: Path, case: str
) -> None:
    changes, reason = HOSTILE_SPECS[case]
    (bundle_dir / "spec.json").write_bytes(spec_with(**changes))
    assert reason in refusal(victim)


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        (["calm"], "labels.json holds 1 names (1 distinct); spec.json's network has 2 classes"),
        (["calm", "calm"], "labels.json holds 2 names (1 distinct)"),
        ({"0": "calm"}, "labels.json is not a JSON list of class names"),
        (["calm", 7], "labels.json is not a JSON list of class names"),
    ],
)
def test_labels_that_do_not_fit_are_refused(
    victim: ModelRef, bundle_dir: Path, labels: object, reason: str
) -> None:
    (bundle_dir / "labels.json").write_text(json.dumps(labels))
    assert reason in refusal(victim)


def test_a_pickled_payload_in_weights_is_refused_unrun(
    victim: ModelRef, bundle_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "payload-ran"
    trojan(bundle_dir / "weights.pt", marker, legacy=False)
    message = refusal(victim)
    assert "weights.pt is not a plain state_dict of tensors (refused" in message
    assert not marker.exists(), "the pickled payload ran"


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (
            ModelSpec(kind="lstm", input_dim=4, num_classes=2, hidden_size=16, input_proj=8)
            .build()
            .state_dict(),
            "weights.pt does not fit spec.json: rnn.weight_ih_l0 is (64, 8) torch.float32, "
            "the network needs (32, 8) torch.float32",
        ),
        (
            {**SPEC.build().state_dict(), "extra": torch.zeros(1)},
            "weights.pt does not fit spec.json: missing [], unexpected ['extra']",
        ),
        (
            {**SPEC.build().state_dict(), "head.bias": 3},
            "weights.pt does not fit spec.json: head.bias is int",
        ),
        (
            {k: v.double() for k, v in SPEC.build().state_dict().items()},
            "norm.weight is (4,) torch.float64, the network needs (4,) torch.float32",
        ),
    ],
    ids=["wider-network", "extra-tensor", "not-a-tensor", "float64"],
)
def test_weights_that_do_not_fit_the_spec_are_refused(
    victim: ModelRef, bundle_dir: Path, state: dict, reason: str
) -> None:
    torch.save(state, bundle_dir / "weights.pt")
    assert reason in refusal(victim)


def test_oversized_or_special_files_are_refused_before_download(
    victim: ModelRef, bundle_dir: Path
) -> None:
    weights = bundle_dir / "weights.pt"
    weights.write_bytes(weights.read_bytes() + bytes(1 << 20))  # 1 MiB over its tensors
    assert f"{BUNDLE_PATH}/weights.pt refused before download: listed as " in refusal(victim)

    (bundle_dir / "labels.json").write_text(json.dumps(LABELS) + " " * (1 << 20))
    assert f"{BUNDLE_PATH}/labels.json refused before download" in refusal(victim)

    (bundle_dir / "labels.json").unlink()
    os.mkfifo(bundle_dir / "labels.json")  # a reader of a fifo would wait forever
    assert "labels.json refused before download: listed as 0 bytes" in refusal(victim)

    (bundle_dir / "labels.json").unlink()
    assert f"{BUNDLE_PATH} lacks labels.json: not a version lstmpipe logged" in refusal(victim)


def test_a_spec_bomb_costs_no_memory(store: Store, victim: ModelRef, bundle_dir: Path) -> None:
    """Measured in a fresh interpreter: loading a version whose spec.json asks for 16 layers of
    65536 units (5.3 * 10^11 parameters, 2 TB of float32) peaks where importing torch and MLflow
    does (0.9 GB measured)."""
    (bundle_dir / "spec.json").write_bytes(spec_with(hidden_size=65536, num_layers=16))
    shown = isolated(
        f"""
        from lstmpipe.lib.errors import ConfigError
        from lstmpipe.lib.registry import mlflow_store as registry
        registry.connect({store.uri!r})
        try:
            registry.load_bundle(registry.ModelRef({victim.name!r}, {victim.version!r}, ""))
            result = "loaded"
        except ConfigError as exc:
            result = str(exc)
    """,
        timeout_s=LOADED_MACHINE_S,
    )
    assert "spec.json refused: the network it describes has" in shown["result"], shown
    assert shown["self_bytes"] < 3 << 29, shown  # 1.5 GiB; the imports alone take 0.9
