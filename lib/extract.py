"""Frames to features, pipelined: decoding runs ahead in a thread while the CNN works.

The backbone receives full batches across series boundaries; decoding is bounded
by a small queue of chunks, so memory depends on the chunk and batch sizes, never
on video length or the number of series.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib.cache import SeriesFeatures
from lib.config import SamplingConfig, SourcesConfig
from lib.decode import decode
from lib.errors import BadInput
from lib.failures import Failure
from lib.series import SeriesRef

Embed = Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) uint8 -> (N, D) float32


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
) -> Iterator[SeriesFeatures | Failure]:
    """Yield one result per series, in order of completion: features, or why it failed."""
    events: queue.Queue = queue.Queue(maxsize=prefetch_chunks)
    stop = threading.Event()
    producer = threading.Thread(target=_decode_all, args=(refs, sampling, sources, tmp_dir, events, stop),
                                daemon=True)
    producer.start()
    pending: dict[int, _Pending] = {}
    batch: list[tuple[int, np.ndarray]] = []  # (series index, frames)
    try:
        while True:
            event = events.get()
            if event is None:
                break
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
                while sum(len(f) for _, f in batch) >= batch_size:  # while: a chunk may hold many batches
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
        producer.join(timeout=30)


def _decode_all(refs: list[SeriesRef], sampling: SamplingConfig, sources: SourcesConfig, tmp_dir: Path,
                events: queue.Queue, stop: threading.Event) -> None:
    """Producer thread: every series' chunks, then an end marker (or a failure, or the error that stopped it)."""
    try:
        for index, ref in enumerate(refs):
            if stop.is_set():
                return
            try:
                with closing(decode(ref, sampling, tmp_dir, sources=sources)) as chunks:  # closing: ffmpeg is killed on stop
                    for chunk in chunks:
                        _put(events, ("chunk", index, chunk), stop)
                        if stop.is_set():  # the consumer left: do not decode the rest of a long series
                            return
                _put(events, ("end", index, None), stop)
            except BadInput as exc:
                _put(events, ("fail", index, Failure(ref.series_id, ref.location, "decode", exc.reason)), stop)
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


def _flush(batch: list[tuple[int, np.ndarray]], pending: dict[int, _Pending], embed: Embed,
           batch_size: int) -> Iterator[SeriesFeatures]:
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
            pending[index].features.append(features[offset:offset + len(frames)])
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
            features=np.concatenate(entry.features).astype(np.float32, copy=False),
            t=np.concatenate(entry.t),
        )
