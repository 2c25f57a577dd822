"""The flows' own harness (STYLE §12): Prefect's test server, and a clean Ray afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray
from prefect.testing.utilities import prefect_test_harness

from lstmpipe.tasks import ray_workers


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield
    ray_workers.release_workers()
    ray.shutdown()
