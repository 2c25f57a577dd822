"""Ray: joining a cluster (or starting a local one), the feature-extraction actor and decode tasks.

An actor loads the backbone once and extracts many series; it writes features to
the cache itself and returns statuses only, so no features cross the object
store. Frames do only where decoding runs in tasks (clusters with GPUs, see
lib/features/placement.py): each decode task streams one series' chunks with at most two
unread, each actor reads `decoders` series at once and copies each chunk out as it
reads it, so the object store holds at most actors x decoders x 3 chunks, whatever
the number and length of the series, plus the chunks read in the last second that
Ray has yet to free (it frees in batches, free_objects_period_milliseconds).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

import ray
import torch
from ray import ObjectRef
from ray.exceptions import RayActorError

from lstmpipe.lib.config import BackboneConfig, SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.features.build import check_recipe, load_backbone
from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.features.extract import Decode, extract_to_cache
from lstmpipe.lib.features.outcomes import SeriesOutcome
from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.series import FrameChunk, SeriesRef
from lstmpipe.lib.sources.decode import decode
from lstmpipe.lib.state.places import StatePlaces

# Shards run in threads of one flow run: without the lock two of them starting at once would each
# start a pool, and on a cluster with CPUs for one pool the second pool's actors wait forever for
# CPUs (a deadlock).
_lock = threading.RLock()
logger = logging.getLogger(__name__)


def ensure_ray(address: str) -> None:
    """Join `address` (a running cluster), or start a Ray of this process's own for "local"; once
    per process.

    The edge says "local", never None: a bare ray.init() silently joins whatever
    cluster `ray start` left on this machine (/tmp/ray/ray_current_cluster).
    """
    with _lock:
        if ray.is_initialized():
            return
        if address == "local":
            _private_token(os.environ)
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            configure_logging=False,
        )


def _private_token(env: MutableMapping[str, str]) -> None:
    """A Ray of our own listens on this machine's ports, where every local user can reach it and
    run code through it: it requires a random token of its own, held only in this process's
    environment (its workers inherit it). Ray's default would be ~/.ray/auth_token, shared by
    every local cluster of the user and written outside $LSTMPIPE_HOME. The user's own
    RAY_AUTH_* settings win."""
    if not env.keys() & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


_pool: tuple[str, list] | None = None  # (key, actors): at most one pool alive per process


def feature_workers(key: str, count: int, start: Callable[[], Any]) -> list:
    """The actors for `key`, started once and reused by every shard of the run.

    A pool for another key is killed first, so a long-lived process never holds
    CPUs for a recipe it no longer extracts.
    """
    global _pool
    with _lock:
        if _pool is not None and _pool[0] == key and len(_pool[1]) >= count:
            return _pool[1][:count]
        release_workers()
        _pool = (key, [start() for _ in range(count)])
        return _pool[1]


def replace_worker(key: str, index: int, lost: Any, start: Callable[[], Any]) -> Any:
    """The pool's actor at `index` once `lost` is gone: a new one, or the one another shard of
    the run already started in its place."""
    global _pool
    with _lock:
        if _pool is None or _pool[0] != key or index >= len(_pool[1]):
            raise RuntimeError("the feature workers' pool was released while a shard used it")
        if _pool[1][index] is lost:
            ray.kill(lost, no_restart=True)  # unreachable is not always dead: make it so
            _pool[1][index] = start()
        return _pool[1][index]


def release_workers() -> None:
    """Kill the pool (after a shard failed, or when the key changes)."""
    global _pool
    with _lock:
        if _pool is not None:
            for actor in _pool[1]:
                ray.kill(actor)
        _pool = None


# A group whose worker is lost (OOM killer, its node gone, SIGKILL) goes back to the queue, to a
# surviving worker or the lost one's replacement: extract() is idempotent (the cache's first index
# row wins), so the group is extracted again whole and reported once. Bounded, so a series that
# kills every worker fails the shard.
RESTARTS = 3
# No worker ready and none running for this long (a pool that cannot be placed: its node lost on a
# full cluster) fails the shard instead of waiting for ever. Covers loading the backbone.
PLACE_TIMEOUT_S = 600.0
_Item = TypeVar("_Item")
_Outcome = TypeVar("_Outcome")


def extract_groups(
    key: str,
    count: int,
    start: Callable[[], Any],
    groups: list[list[_Item]],
    on_done: Callable[[list[_Outcome]], object],
) -> list[_Outcome]:
    """Run every group on the pool for `key`, each on the next worker that is ready (generic in
    what a group holds and what a worker's extract() returns for it: tests use stand-ins).

    Workers are used only once ready() answers: a worker Ray cannot place, such as a replacement
    for one lost with its node, must not hold a group while the survivors idle. ready() runs
    beside extract(), so a worker busy with another shard's group is not taken for unplaced.
    """
    workers = list(feature_workers(key, count, start))
    queue = deque((group, 0) for group in groups)
    readying = {worker.ready.remote(): i for i, worker in enumerate(workers)}
    running: dict[ObjectRef, tuple[int, list[_Item], int]] = {}
    idle: list[int] = []
    outcomes: list[_Outcome] = []
    while queue or running:
        while idle and queue:
            i = idle.pop()
            group, losses = queue.popleft()
            running[workers[i].extract.remote(group)] = (i, group, losses)
        ready, _ = ray.wait(
            [*running, *readying], num_returns=1, timeout=None if running else PLACE_TIMEOUT_S
        )
        if not ready:
            raise RuntimeError(
                f"no feature worker could be placed on the Ray cluster in {PLACE_TIMEOUT_S:.0f} s "
                f"(resources now: {ray.available_resources()})"
            )
        ref = ready[0]
        if ref in readying:
            i = readying.pop(ref)
            try:
                ray.get(ref)
            except RayActorError as exc:
                if exc.actor_init_failed:
                    raise
                workers[i] = replace_worker(key, i, workers[i], start)
                readying[workers[i].ready.remote()] = i
                continue
            idle.append(i)
            continue
        i, group, losses = running.pop(ref)
        try:
            done = ray.get(ref)
        except RayActorError:
            if losses + 1 > RESTARTS:
                raise
            logger.warning("a feature worker was lost: its %d series go to another", len(group))
            queue.appendleft((group, losses + 1))
            workers[i] = replace_worker(key, i, workers[i], start)
            readying[workers[i].ready.remote()] = i
            continue
        outcomes += done
        on_done(done)
        idle.append(i)
    return outcomes


@ray.remote(num_returns="streaming")
def decode_task(
    ref: SeriesRef, sampling: SamplingConfig, sources: SourcesConfig, tmp_dir: str
) -> Iterator[FrameChunk | str]:
    """One series' chunks through the object store, at most two unread at a time (bounded memory,
    see decode_in_tasks); a bad input ends the stream with its reason, which the actor records
    like a local failure."""
    os.makedirs(tmp_dir, exist_ok=True)
    try:
        yield from decode(ref, sampling, Path(tmp_dir), sources=sources)
    except BadInput as exc:
        yield exc.reason


def decode_in_tasks(
    sampling: SamplingConfig, sources: SourcesConfig, tmp_dir: str, cpus: float
) -> Decode:
    """A decode function for lib.extract that streams each series from a decode task."""

    def decode_fn(ref: SeriesRef) -> Generator[FrameChunk, None, None]:
        # At most two chunks unread: an option ray.remote's typed signature does not list. Nor do
        # Ray's types know streaming: `stream` is an ObjectRefGenerator, a ref per chunk yielded.
        stream: Any = decode_task.options(
            num_cpus=cpus, _generator_backpressure_num_objects=2
        ).remote(ref, sampling, sources, tmp_dir)
        chunk: ObjectRef[FrameChunk | str]  # a reason instead of a chunk: the input was bad
        try:
            for chunk in stream:
                item = ray.get(chunk)
                if isinstance(item, str):
                    raise BadInput(ref.location, item)
                # Copies: a zero-copy view (frames or t) would pin the chunk in the shared object
                # store for as long as the extractor's queue and batch hold it; copied, the store
                # can free it at once.
                yield dataclasses.replace(item, frames=item.frames.copy(), t=item.t.copy())
                del chunk, item
        finally:
            ray.cancel(stream)  # the extractor stopped early: so does the decoder

    return decode_fn


# A lost worker is replaced by extract_groups, not restarted by Ray (see RESTARTS); ready() has a
# thread of its own, so it answers while extract() runs. (concurrency_groups is missing from
# ray.remote's typed overloads: passed unpacked.)
_WORKER_OPTIONS: dict[str, Any] = {"concurrency_groups": {"probe": 1}}


@ray.remote(**_WORKER_OPTIONS)
class FeatureWorker:
    """Holds one backbone; extracts groups of series into the cache.

    Started with the CPUs and GPU share of its Placement; runs one torch thread per CPU.
    """

    def __init__(
        self,
        sampling: SamplingConfig,
        backbone: BackboneConfig,
        recipe: FeatureRecipe,
        torch_hub_dir: str,
        state: StatePlaces,
        tmp_dir: str,
        decoders: int,
        decode_cpus: float | None,
    ) -> None:
        torch.set_num_threads(
            max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
        )
        device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.sampling = sampling
        self.decoders = decoders
        self.recipe = recipe
        self.sources = self.recipe.sources_config()
        self.backbone, built = load_backbone(
            sampling, backbone, Path(torch_hub_dir), device, self.sources
        )
        check_recipe(self.recipe, built)
        self.batch_size = self.backbone.batch_size(sampling.size, backbone.batch_size)
        self.cache = FeatureCache.at(state)
        self.tmp_dir = Path(tmp_dir)
        os.makedirs(self.tmp_dir, exist_ok=True)
        self.decode_fn = (
            None
            if decode_cpus is None
            else decode_in_tasks(sampling, self.sources, tmp_dir, decode_cpus)
        )

    @ray.method(concurrency_group="probe")
    def ready(self) -> bool:
        """True once the backbone is loaded: extract_groups hands groups only to ready workers."""
        return True

    def extract(self, refs: list[SeriesRef]) -> list[SeriesOutcome]:
        """Extract and commit `refs`; one outcome per series."""
        return extract_to_cache(
            refs,
            self.sampling,
            self.backbone,
            self.batch_size,
            self.tmp_dir,
            self.sources,
            self.cache,
            self.recipe.recipe_id,
            decoders=self.decoders,
            decode_fn=self.decode_fn,
        )
