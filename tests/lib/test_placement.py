"""lib.features.placement: actors and decode tasks fitted to a cluster's resources, never
deadlocking it."""

from __future__ import annotations

from typing import Any

import pytest

from lstmpipe.lib.config import RuntimeConfig
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.features.placement import Placement, placement


def test_cpu_only_cluster_decodes_in_the_actors_one_actor_per_cpu() -> None:
    assert placement(RuntimeConfig(), {"CPU": 2.0}) == Placement(2, 1.0, 0.0, None)


def test_gpu_cluster_decodes_in_tasks_on_the_cpus_the_actors_leave() -> None:
    assert placement(RuntimeConfig(), {"CPU": 16.0, "GPU": 2.0}) == Placement(2, 1.0, 1.0, 1.0)


def test_small_backbones_share_a_gpu() -> None:
    assert placement(RuntimeConfig(gpus_per_worker=0.5), {"CPU": 16.0, "GPU": 2.0}) == Placement(
        4, 1.0, 0.5, 1.0
    )


def test_decode_tasks_on_cpus_keep_cpus_free_for_them() -> None:
    where = placement(RuntimeConfig(decode_on="tasks"), {"CPU": 2.0})
    assert where == Placement(1, 1.0, 0.0, 1.0) and where.decode_cpus is not None
    assert where.actors * where.actor_cpus + where.decode_cpus <= 2.0


def test_no_cpu_left_for_a_decode_task_means_decoding_in_the_actor() -> None:
    assert placement(RuntimeConfig(decode_on="tasks"), {"CPU": 1.0}).decode_cpus is None
    assert placement(RuntimeConfig(decode_on="tasks", workers=4), {"CPU": 4.0}).decode_cpus is None


def test_a_decode_task_never_asks_for_more_than_is_left() -> None:
    assert (
        placement(RuntimeConfig(decode_on="tasks", decode_cpus=2.0), {"CPU": 2.5}).decode_cpus
        == 1.5
    )


@pytest.mark.parametrize(("key", "value"), [("decode_on", "gpu"), ("gpus_per_worker", 1.5)])
def test_bad_values_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"runtime.{key}"):
        placement(RuntimeConfig(**{key: value}), {"CPU": 8.0, "GPU": 1.0})
