"""The feature recipe is cached by Prefect across flow runs (issue 7): a new run with the same
settings names its recipe without building the backbone; other settings compute theirs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from prefect import flow

from lstmpipe.lib.config import Config, load_config
from lstmpipe.lib.errors import ConfigError
from lstmpipe.tasks import extract as extract_tasks
from lstmpipe.tasks.extract import feature_recipe


@flow(name="name-recipe")
def name_recipe(config: Config, torch_hub_dir: str) -> dict:
    return feature_recipe(config, torch_hub_dir)


def test_a_new_flow_run_reuses_the_recipe_without_loading_the_backbone(
    harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh seed: persisted results outlive the test, and this run must compute its first recipe.
    config = load_config(
        overrides={
            "sampling.size": 32,
            "backbone.weights": "none",
            "backbone.seed": random.randrange(1 << 30),
        }
    )
    hub = str(tmp_path / "hub")
    first = name_recipe(config, hub)
    assert first["weights"].startswith("none(seed=")

    def no_backbone(*_args, **_kwargs):
        raise AssertionError("the backbone was built")

    monkeypatch.setattr(extract_tasks, "shared_backbone", no_backbone)
    assert (
        name_recipe(config, hub) == first
    )  # another flow run: the recipe comes from Prefect's cache
    larger = config.model_copy(update={"sampling": config.sampling.model_copy(update={"size": 48})})
    with pytest.raises(AssertionError, match="the backbone was built"):
        name_recipe(larger, hub)  # other settings: another key, computed


def test_missing_weights_are_named_once_not_logged_as_a_cache_key_error(
    harness, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(
        overrides={
            "sampling.size": 32,
            "backbone.weights": "IMAGENET1K_V1",
            "backbone.offline": True,
        }
    )
    with pytest.raises(ConfigError, match="not in the local torch cache"):
        name_recipe(config, str(tmp_path / "empty-hub"))
    assert "computing cache key" not in caplog.text
