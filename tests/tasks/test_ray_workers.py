"""The actor pool shared by a flow run's shards (no Ray needed: actors are stand-ins)."""

from __future__ import annotations

import threading
import time

from lstmpipe.tasks import ray_workers


def test_shards_starting_at_once_share_one_pool() -> None:
    """Two shard threads asking at once must not start two pools: on a cluster with CPUs for one
    pool, the second pool's actors would wait for CPUs forever (seen on
    `ray start --head --num-cpus 2`)."""
    started: list[object] = []
    gate = threading.Barrier(2)

    def start() -> object:
        time.sleep(0.05)  # widen the window in which an unlocked second caller would start its own
        started.append(actor := object())
        return actor

    def shard(out: list) -> None:
        gate.wait()
        out.append(ray_workers.feature_workers("recipe:cache", 2, start))

    pools: list[list] = []
    threads = [threading.Thread(target=shard, args=(pools,)) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(started) == 2
        assert pools[0] == pools[1] == started
    finally:
        ray_workers._pool = None  # stand-ins, nothing to kill
