"""The direction sample (lib/demo/direction.py): classes that only the order of frames tells apart,
real clips the video reader takes, the same bytes from the same arguments."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.demo.direction import (
    DEFAULT_KINDS,
    HELD_OUT_KINDS,
    PAIRS,
    draw_motion,
    generate_direction,
    render_motion,
)
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.sources.decode import decode
from lstmpipe.lib.sources.discover import discover


@pytest.mark.parametrize("kind", list(PAIRS))
def test_each_pair_holds_the_same_frames_in_opposite_orders(kind: str) -> None:
    draw = draw_motion(kind, np.random.default_rng([0, 1]))
    forward, backward = (render_motion(kind, label, draw, size=32) for label in PAIRS[kind])
    assert forward.shape == (draw.frames, 32, 32, 3) and forward.dtype == np.uint8
    np.testing.assert_array_equal(forward, backward[::-1])
    # something moves: the first and last frames differ well beyond the noise
    assert np.abs(forward[0].astype(int) - forward[-1].astype(int)).mean() > 2


def _centre_of_change(frames: np.ndarray) -> np.ndarray:
    """Where each frame differs most from the clip's median frame: the moving thing, (T, 2) x, y."""
    grey = frames.astype(float).mean(axis=-1)  # (T, H, W)
    change = np.abs(grey - np.median(grey, axis=0))
    ys, xs = np.mgrid[: grey.shape[1], : grey.shape[2]]
    weight = change.sum(axis=(1, 2)) + 1e-9
    return np.stack(
        [(change * xs).sum(axis=(1, 2)) / weight, (change * ys).sum(axis=(1, 2)) / weight], 1
    )


@pytest.mark.parametrize(("kind", "axis", "sign"), [("horizontal", 0, 1), ("vertical", 1, 1)])
def test_the_first_class_of_a_travel_pair_moves_as_its_name_says(
    kind: str, axis: int, sign: int
) -> None:
    for index in range(5):
        draw = draw_motion(kind, np.random.default_rng([7, index]))
        path = _centre_of_change(render_motion(kind, PAIRS[kind][0], draw, size=64))
        assert sign * (path[-1, axis] - path[0, axis]) > 5  # px: right / down


def test_the_sample_is_labelled_real_clips_and_the_same_bytes_each_time(tmp_path: Path) -> None:
    root = generate_direction(tmp_path / "a", clips_per_class=2, seed=3)
    again = generate_direction(tmp_path / "b", clips_per_class=2, seed=3)
    with (root / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    labels = [label for kind in DEFAULT_KINDS for label in PAIRS[kind]]
    assert sorted(r["label"] for r in rows) == sorted(labels * 2)
    digests = [
        {p.relative_to(r): hashlib.sha256(p.read_bytes()).hexdigest() for p in r.rglob("*.mp4")}
        for r in (root, again)
    ]
    assert digests[0] == digests[1] and len(digests[0]) == 12

    archive = discover(root, root / "labels.csv")
    assert not archive.failures and len(archive.refs) == 12
    ref = next(r for r in archive.refs if r.label == "right")
    frames = np.concatenate(
        [c.frames for c in decode(ref, SamplingConfig(fps=None, size=32), tmp_path / "tmp")]
    )
    assert 14 <= len(frames) <= 22


def test_held_out_kinds_and_bad_arguments(tmp_path: Path) -> None:
    root = generate_direction(tmp_path / "held-out", 1, seed=0, kinds=HELD_OUT_KINDS)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(
        label for kind in HELD_OUT_KINDS for label in PAIRS[kind]
    )
    with pytest.raises(ConfigError, match="sideways"):
        generate_direction(tmp_path / "bad", 1, seed=0, kinds=("sideways",))
    with pytest.raises(ConfigError, match="clips per class"):
        generate_direction(tmp_path / "bad", 0, seed=0)
