"""Frames to features, pipelined: decoding runs ahead in threads while the CNN works.

Several series decode at once (each decoder is an ffmpeg process or a watched reader
process, lib/sources/reader_process.py, fed by a thread here); the backbone receives
full batches across series boundaries; finished series are written to the cache by a
writer thread, so neither decoding nor writing waits on the CNN or holds it up.
Decoding is bounded by a small queue of chunks, so memory depends on the chunk and
batch sizes, never on video length or the number of series.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.cache import FeatureCache, SeriesFeatures
from lstmpipe.lib.features.outcomes import SeriesOutcome, SeriesStatus
from lstmpipe.lib.series import FrameChunk, SeriesRef
from lstmpipe.lib.sources.decode import decode
from lstmpipe.lib.sources.hashing import verify_stamps

Embed = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) uint8 -> (N, D) float32 or float16
# a series' chunks, stopped by close(); BadInput when it cannot be read
Decode = Callable[[SeriesRef], Generator[FrameChunk, None, None]]


@dataclass
class _Pending:
    """Frames of one series decoded so far, and their features once computed."""

    ref: SeriesRef
    t: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)
    queued: int = 0  # frames handed to the batcher
    done: int = 0  # frames whose features came back
    ended: bool = False


def extract_many(
    refs: list[SeriesRef],
    sampling: SamplingConfig,
    embed: Embed,
    batch_size: int,
    tmp_dir: Path,
    prefetch_chunks: int = 4,
    sources: SourcesConfig = SourcesConfig(),
    decoders: int = 2,
    decode_fn: Decode | None = None,
) -> Iterator[SeriesFeatures | Failure]:
    """Yield one result per series, in order of completion: features, or why it failed.

    `decoders` series decode at once: a new series' decoder starts (probe, spawn)
    while another's frames still flow, so short series do not leave the CNN idle.
    `decode_fn` replaces decoding in this process (a Ray actor passes one that
    streams chunks from decode tasks elsewhere in the cluster).
    """

    def decode_here(ref: SeriesRef) -> Generator[FrameChunk, None, None]:
        yield from decode(ref, sampling, tmp_dir, sources=sources)

    decode_fn = decode_fn or decode_here
    events: queue.Queue = queue.Queue(maxsize=prefetch_chunks)
    stop = threading.Event()
    todo = iter(list(enumerate(refs)))  # shared by the decoder threads; next() under a lock
    lock = threading.Lock()
    producers = [
        threading.Thread(
            target=_decode_all, args=(todo, lock, decode_fn, events, stop), daemon=True
        )
        for _ in range(max(1, min(decoders, len(refs))))
    ]
    for producer in producers:
        producer.start()
    running = len(producers)
    pending: dict[int, _Pending] = {}
    batch: list[tuple[int, np.ndarray]] = []  # (series index, frames)
    try:
        while running:
            event = events.get()
            if event is None:  # one decoder thread has no more series
                running -= 1
                continue
            kind, index, payload = event
            if kind == "error":  # not bad input: a bug or the environment (disk full, no tmp dir)
                raise payload
            if kind == "fail":
                pending.pop(index, None)
                yield payload
                continue
            entry = pending.setdefault(index, _Pending(refs[index]))
            if kind == "chunk":
                entry.t.append(payload.t)
                entry.queued += len(payload)
                batch.append((index, payload.frames))
                # while: a chunk may hold many batches
                while sum(len(f) for _, f in batch) >= batch_size:
                    yield from _flush(batch, pending, embed, batch_size)
            else:  # "end"
                entry.ended = True
                yield from _finished(pending)
        while batch:
            yield from _flush(batch, pending, embed, batch_size)
        yield from _finished(pending)
    finally:
        stop.set()
        _drain(events)
        for producer in producers:
            producer.join(timeout=30)


def _decode_all(
    todo: Iterator[tuple[int, SeriesRef]],
    lock: threading.Lock,
    decode_fn: Decode,
    events: queue.Queue,
    stop: threading.Event,
) -> None:
    """A decoder thread: takes series until none is left; per series its chunks, then an end marker
    (or a failure); the error that stops it, if any; finally None."""
    try:
        while True:
            with lock:
                index, ref = next(todo, (-1, None))
            if ref is None or stop.is_set():
                return
            try:
                # closing: the decoder is stopped when we stop
                with closing(decode_fn(ref)) as chunks:
                    for chunk in chunks:
                        _put(events, ("chunk", index, chunk), stop)
                        # the consumer left: do not decode the rest of a long series
                        if stop.is_set():
                            return
                _put(events, ("end", index, None), stop)
            except BadInput as exc:
                _put(
                    events,
                    ("fail", index, Failure(ref.series_id, ref.location, "decode", exc.reason)),
                    stop,
                )
    except Exception as exc:  # handed to the consumer, which raises it: never lost with this thread
        _put(events, ("error", -1, exc), stop)
    finally:
        _put(events, None, stop)


def _put(events: queue.Queue, item: object, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            events.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


def _drain(events: queue.Queue) -> None:
    while True:
        try:
            events.get_nowait()
        except queue.Empty:
            return


def _flush(
    batch: list[tuple[int, np.ndarray]], pending: dict[int, _Pending], embed: Embed, batch_size: int
) -> Iterator[SeriesFeatures | Failure]:
    """Run one batch of at most `batch_size` frames; the rest stays queued."""
    taken, count = [], 0
    while batch and count < batch_size:
        index, frames = batch.pop(0)
        room = batch_size - count
        if len(frames) > room:
            batch.insert(0, (index, frames[room:]))
            frames = frames[:room]
        taken.append((index, frames))
        count += len(frames)
    features = embed(np.concatenate([f for _, f in taken]))  # (count, D)
    offset = 0
    for index, frames in taken:
        if index in pending:
            pending[index].features.append(features[offset : offset + len(frames)])
            pending[index].done += len(frames)
        offset += len(frames)
    yield from _finished(pending)


def _finished(pending: dict[int, _Pending]) -> Iterator[SeriesFeatures | Failure]:
    for index in [i for i, e in pending.items() if e.ended and e.done == e.queued]:
        entry = pending.pop(index)
        if entry.queued == 0:
            yield Failure(entry.ref.series_id, entry.ref.location, "decode", "no frames decoded")
            continue
        yield SeriesFeatures(
            series_id=entry.ref.series_id,
            content_hash=entry.ref.content_hash,
            features=np.concatenate(entry.features),  # the backbone's dtype: what the recipe stores
            t=np.concatenate(entry.t),
        )


def split_cached(
    cache: FeatureCache, refs: list[SeriesRef], recipe_id: str
) -> tuple[list[SeriesOutcome], list[SeriesRef]]:
    """(outcomes of the series already cached under `recipe_id`, the series still to extract)."""
    cached = cache.frame_counts([(r.content_hash, recipe_id) for r in refs])
    done = [
        SeriesOutcome(r.series_id, SeriesStatus.CACHED, cached[(r.content_hash, recipe_id)])
        for r in refs
        if (r.content_hash, recipe_id) in cached
    ]
    return done, [r for r in refs if (r.content_hash, recipe_id) not in cached]


def extract_to_cache(
    refs: list[SeriesRef],
    sampling: SamplingConfig,
    embed: Embed,
    batch_size: int,
    tmp_dir: Path,
    sources: SourcesConfig,
    cache: FeatureCache,
    recipe_id: str,
    decoders: int = 2,
    commit_frames: int = 4096,
    on_series: Callable[[int], object] = lambda n: None,
    decode_fn: Decode | None = None,
) -> list[SeriesOutcome]:
    """Extract `refs` into the cache; one outcome per series (extracted, or failed and why).

    Finished series are committed in groups of about `commit_frames` frames by a
    writer thread while the CNN goes on; at most two commits wait at once, so a
    slow disk bounds memory instead of growing it. A series is reported extracted
    only once the commit holding it has returned. `on_series(1)` is called as each
    series finishes (a progress bar's update). A series whose files changed since discovery
    hashed them is failed, never committed (`_verified`).
    """
    by_key = {(r.series_id, r.content_hash): r for r in refs}
    rows: list[SeriesOutcome] = []
    group: list[SeriesFeatures] = []
    group_frames = 0
    commits: list[Future] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer") as writer:
        for result in extract_many(
            refs,
            sampling,
            embed,
            batch_size,
            tmp_dir,
            sources=sources,
            decoders=decoders,
            decode_fn=decode_fn,
        ):
            on_series(1)
            if isinstance(result, SeriesFeatures):
                result = _verified(result, by_key[(result.series_id, result.content_hash)])
            if isinstance(result, Failure):
                rows.append(SeriesOutcome.failed(result))
                continue
            group.append(result)
            group_frames += len(result.features)
            rows.append(
                SeriesOutcome(result.series_id, SeriesStatus.EXTRACTED, len(result.features))
            )
            if group_frames >= commit_frames:
                commits.append(writer.submit(cache.write, recipe_id, group))
                group, group_frames = [], 0
                if len(commits) > 2:
                    # back-pressure; raises a failed commit (disk full) here
                    commits.pop(0).result()
        if group:
            commits.append(writer.submit(cache.write, recipe_id, group))
        for commit in commits:
            commit.result()
    return rows


def _verified(result: SeriesFeatures, ref: SeriesRef) -> SeriesFeatures | Failure:
    """The features, or a Failure when a file of the series changed after discovery hashed it:
    what was decoded may not be the bytes the cache key names. Checked once decoding is over, so
    a change before or during decoding is seen; one after it no longer matters."""
    try:
        verify_stamps(ref)
    except BadInput as exc:
        where = "" if exc.path in (ref.path, ref.location) else f"{exc.path}: "
        return Failure(ref.series_id, ref.location, "decode", where + exc.reason)
    return result
