"""The flows' own harness (STYLE §12): Prefect's test server, and a clean Ray after each module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray
from prefect.testing.utilities import prefect_test_harness

from lstmpipe.tasks import ray_workers


@pytest.fixture(scope="module")
def harness(request: pytest.FixtureRequest) -> Iterator[None]:
    """The session's Prefect test server (tests/conftest.py `prefect_api`), or for a module marked
    `own_prefect_server` (it reads the server's history back) a server of its own; then the Ray
    that the module's flows started is shut down, so the next module starts from none."""
    try:
        if request.node.get_closest_marker("own_prefect_server"):
            with prefect_test_harness(server_startup_timeout=120):
                yield
        else:
            request.getfixturevalue("prefect_api")
            yield
    finally:
        ray_workers.release_workers()
        ray.shutdown()
