"""Handing groups of series to the feature workers (tasks/ray_workers.extract_groups) on a real
local Ray, with stand-in actors: a worker Ray cannot place holds no group, a lost worker's group
goes to another and is reported once, a group that kills every worker fails the shard."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray
from ray.exceptions import RayActorError

from lstmpipe.tasks import ray_workers

pytestmark = pytest.mark.slow
GROUPS = [["a", "b"], ["c"], ["d", "e"], ["f"], ["g", "h"]]
SERIES = sorted(s for group in GROUPS for s in group)


@ray.remote(num_cpus=0.5)
class Stand:
    """Extracts a group by naming its series; dies (its process ends) on a group holding
    `lethal`, once per marker file, or always when no marker is given."""

    def __init__(self, lethal: str = "", marker: str = "") -> None:
        self.lethal, self.marker = lethal, marker

    def ready(self) -> bool:
        return True

    def extract(self, group: list[str]) -> list[str]:
        if self.lethal in group:
            if not self.marker:
                os._exit(1)
            if not os.path.exists(self.marker):
                Path(self.marker).touch()
                os._exit(1)
        return list(group)


@pytest.fixture
def pool(local_ray) -> Iterator[None]:
    yield
    ray_workers.release_workers()


def starts(*actors: Callable[[], object]) -> Callable[[], object]:
    """start() for the pool: the given starters in turn, then plain stand-ins."""
    queue = list(actors)
    return lambda: queue.pop(0)() if queue else Stand.remote()


def test_a_worker_ray_cannot_place_holds_no_group(pool) -> None:
    unplaceable = starts(lambda: Stand.options(resources={"nowhere": 1}).remote())
    done: list[list[str]] = []
    out = ray_workers.extract_groups("k1", 2, unplaceable, GROUPS, done.append)
    assert sorted(out) == SERIES and sorted(map(tuple, done)) == sorted(map(tuple, GROUPS))


def test_a_lost_workers_group_is_extracted_again_once(pool, tmp_path: Path) -> None:
    marker = str(tmp_path / "died")
    dies_once = starts(lambda: Stand.remote("d", marker), lambda: Stand.remote("d", marker))
    out = ray_workers.extract_groups("k2", 2, dies_once, GROUPS, lambda _: None)
    assert os.path.exists(marker), "no worker was lost: the test proves nothing"
    assert sorted(out) == SERIES  # the lost group once, nothing twice


def test_a_group_that_kills_every_worker_fails_the_shard(pool) -> None:
    def always_dies() -> object:
        return Stand.remote("d")

    with pytest.raises(RayActorError):
        ray_workers.extract_groups("k3", 1, always_dies, [["d"]], lambda _: None)
