"""How extraction maps onto a Ray cluster: actors, what each requests, where frames decode.

Pure values in, values out, so the choice is tested without a cluster; tasks/
turns it into Ray options.
"""

from __future__ import annotations

from dataclasses import dataclass

from lstmpipe.lib.config import RuntimeConfig
from lstmpipe.lib.errors import ConfigError


@dataclass(frozen=True)
class Placement:
    actors: int  # backbone actors, each loading the model once
    actor_cpus: float  # CPUs per actor = the torch threads it runs
    actor_gpus: float  # GPU share per actor (0 on CPU-only clusters)
    decode_cpus: float | None  # CPUs per decode task; None = decode in the actor's own threads


def placement(runtime: RuntimeConfig, resources: dict[str, float]) -> Placement:
    """Actors per GPU share (or per CPU), and decode tasks only where CPUs are left for them.

    Decode tasks never get CPUs the actors need: a decode task that cannot be
    scheduled would leave its actor waiting forever.
    """
    if runtime.decode_on not in {"auto", "tasks", "actor"}:
        raise ConfigError(
            f"runtime.decode_on: {runtime.decode_on!r}; expected auto, tasks or actor"
        )
    if not 0 < runtime.gpus_per_worker <= 1 and resources.get("GPU"):
        raise ConfigError(
            f"runtime.gpus_per_worker: {runtime.gpus_per_worker}; expected a share in (0, 1]"
        )
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    in_tasks = runtime.decode_on == "tasks" or (runtime.decode_on == "auto" and gpus > 0)
    if gpus:
        actors = runtime.workers or max(1, int(gpus / runtime.gpus_per_worker))
    else:
        reserve = runtime.decode_cpus if in_tasks else 0.0
        actors = runtime.workers or max(1, int(cpus - reserve))
    left = cpus - actors  # each actor requests one CPU
    if in_tasks and left > 0:
        return Placement(
            actors, 1.0, runtime.gpus_per_worker if gpus else 0.0, min(runtime.decode_cpus, left)
        )
    return Placement(actors, 1.0, runtime.gpus_per_worker if gpus else 0.0, None)
