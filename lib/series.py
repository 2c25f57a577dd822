"""The series: the one abstraction every source becomes (SPEC §1).

A `SeriesRef` says where a series lives and what defines it; decoding turns it
into `FrameChunk`s. Downstream of decoding nothing knows whether the frames came
from a video, a DICOM series or a satellite time stack.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SeriesRef:
    """Where a series lives and what identifies it; small, JSON-able, passed between tasks.

    series_id:    stable and human readable: the path relative to the source root
                  (`2026-11-21.tar/left/clip_0001.mp4` for an archive member).
    content_hash: hash of the bytes that define the series; the cache key's first half.
    kind:         the decoder that reads it (`video`, ...).
    path:         the file on disk (the archive, for a member).
    member:       the member name inside `path` when `path` is an archive, else None.
    label:        the class name when known (parent folder or manifest), else None.
    partition:    the top-level folder or archive it came from, else None.
    stamps:       (file, stamp) for each file the content hash was read from, as discovery hashed
                  it (lib/sources/hashing.py): extraction checks them before caching, so bytes
                  swapped after hashing never land under that hash. Empty when not from discovery.
    """

    series_id: str
    content_hash: str
    kind: str
    path: str
    member: str | None = None
    label: str | None = None
    partition: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    stamps: tuple[tuple[str, str], ...] = field(default=(), compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-native (stamps as lists), so a dict equals itself read back from JSON."""
        return {**asdict(self), "stamps": [list(pair) for pair in self.stamps]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeriesRef:
        """From `to_dict`'s output, read back from JSON (lists for tuples); older dicts have no
        stamps."""
        stamps = tuple((str(path), str(stamp)) for path, stamp in data.get("stamps", ()))
        return cls(**{**data, "stamps": stamps})

    @property
    def location(self) -> str:
        """The path a person can look up: `archive.tar!member` or the file."""
        return f"{self.path}!{self.member}" if self.member else self.path


@dataclass(frozen=True)
class FrameChunk:
    """A bounded run of decoded frames of one series.

    frames: (N, H, W, 3) uint8, RGB.
    t:      (N,) float64, seconds from the start of the series.
    start:  index of the first frame of this chunk within the series.
    """

    frames: np.ndarray
    t: np.ndarray
    start: int

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class OpenSeries:
    """A series ready to decode: its metadata now, its frames lazily (valid while open).

    `chunks` is a generator so that closing it stops the decoder when a consumer leaves early.
    """

    meta: dict[str, Any]
    chunks: Generator[FrameChunk, None, None]
