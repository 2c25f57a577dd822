"""lib.sources.kinds.images through discovery, decoding and extraction, on PNG/JPEG frames written
with Pillow."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.failures import Failure
from lstmpipe.lib.features.extract import extract_many
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.decode import decode, describe
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.kinds import KINDS

SMALL = SamplingConfig(fps=None, size=32, chunk_frames=4)  # 4: a 12-frame clip spans three chunks


def grey(path: Path, level: int, size: tuple[int, int] = (48, 40)) -> Path:
    """A frame whose content says which it is: every pixel = `level`."""
    Image.fromarray(np.full((size[1], size[0], 3), level, np.uint8)).save(path)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """UCF-style class/clip/frames folders, and folders that must not become series or must fail."""
    root = tmp_path / "source"
    walk = root / "walk" / "clip_a"
    walk.mkdir(parents=True)
    for i in range(1, 13):  # frame_1 ... frame_12: a plain sort would put frame_10 before frame_2
        grey(walk / f"frame_{i}.png", 20 * i)
    mixed = root / "run" / "clip_b"
    mixed.mkdir(parents=True)
    for i, size in enumerate([(48, 40), (100, 30), (17, 64)]):
        grey(mixed / f"img{i:02d}.jpg", 100, size)
    (mixed / "notes.txt").write_text("not a frame")
    (root / "run" / "single").mkdir()
    grey(root / "run" / "single" / "only.png", 50)
    broken = root / "jump" / "clip_c"
    broken.mkdir(parents=True)
    for i in range(1, 5):
        grey(broken / f"f{i}.png", 60)
    (broken / "f3.png").write_bytes(b"\x89PNG\r\n\x1a\n this is no image")
    cut = root / "jump" / "clip_d"
    cut.mkdir(parents=True)
    for i in range(1, 4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 64, 3), np.uint8)).save(
            cut / f"f{i}.png"
        )
    # a valid header, then nothing
    (cut / "f2.png").write_bytes((cut / "f2.png").read_bytes()[:300])
    clips = root / "dance"
    clips.mkdir()
    grey(clips / "cover.jpg", 10)
    grey(clips / "poster.jpg", 10)
    (clips / "clip.mp4").write_bytes(b"a video, as far as discovery knows")
    return root


def by_id(refs: list[SeriesRef]) -> dict[str, SeriesRef]:
    return {r.series_id: r for r in refs}


def frames_of(
    ref: SeriesRef, sampling: SamplingConfig, tmp_path: Path
) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(decode(ref, sampling, tmp_path))
    return np.concatenate([c.frames for c in chunks]), np.concatenate([c.t for c in chunks])


def mean_embed(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(axis=1, keepdims=True).astype(np.float32)  # (N, 1)


def test_images_is_the_last_kind_before_video() -> None:
    assert [k.name for k in KINDS][-2:] == ["images", "video"]


def test_one_series_per_folder_of_frames(root: Path) -> None:
    found = discover(root)
    assert sorted((r.series_id, r.kind, r.label, r.partition) for r in found.refs) == [
        ("dance/clip.mp4", "video", "dance", "dance"),  # pictures beside a video stay pictures
        ("jump/clip_d", "images", "jump", "jump"),  # its broken frame has a valid header
        ("run/clip_b", "images", "run", "run"),  # run/single (one picture) is no series
        ("walk/clip_a", "images", "walk", "walk"),
    ]
    # every header is read at discovery: a frame that is no image fails its folder there
    [failure] = found.failures
    assert (failure.series_id, failure.path, failure.stage) == (
        "jump/clip_c",
        str(root / "jump" / "clip_c" / "f3.png"),
        "discover",
    )
    assert failure.reason.startswith("unreadable image f3.png: cannot identify image file")
    clip = by_id(found.refs)["walk/clip_a"]
    assert clip.path == str(root / "walk" / "clip_a") and clip.meta["frames"] == 12


def test_natural_order_times_and_shape(root: Path, tmp_path: Path) -> None:
    ref = by_id(discover(root).refs)["walk/clip_a"]
    frames, t = frames_of(ref, SMALL, tmp_path)
    assert frames.shape == (12, 32, 32, 3) and frames.dtype == np.uint8
    # frame_2 before frame_10
    np.testing.assert_array_equal(frames[:, 0, 0, 0], 20 * np.arange(1, 13))
    np.testing.assert_array_equal(t, np.arange(12))  # no fps: t is the index
    _, t_fps = frames_of(ref, SamplingConfig(fps=4.0, size=32), tmp_path)
    np.testing.assert_allclose(t_fps, np.arange(12) / 4.0)  # frames taken as 1/fps apart, all kept
    picked, t_pick = frames_of(ref, SamplingConfig(fps=4.0, num_frames=4, size=32), tmp_path)
    np.testing.assert_array_equal(picked[:, 0, 0, 0], 20 * np.array([1, 5, 8, 12]))
    # each frame keeps its own time
    np.testing.assert_allclose(t_pick, np.array([0, 4, 7, 11]) / 4.0)
    assert describe(ref, SMALL, tmp_path) == {
        "source_kind": "images",
        "frames": 12,
        "fps": None,
        "width": 48,
        "height": 40,
    }


def test_frames_of_different_sizes_are_each_resized(root: Path, tmp_path: Path) -> None:
    frames, _ = frames_of(by_id(discover(root).refs)["run/clip_b"], SMALL, tmp_path)
    assert frames.shape == (3, 32, 32, 3)
    assert np.abs(frames.astype(int) - 100).max() <= 2  # JPEG's rounding, nothing else


def test_unreadable_frame_fails_its_series_alone(root: Path, tmp_path: Path) -> None:
    refs = discover(root).refs
    results = list(extract_many(refs, SMALL, mean_embed, batch_size=8, tmp_dir=tmp_path))
    failed = {r.series_id: r for r in results if isinstance(r, Failure)}
    assert failed.keys() == {"jump/clip_d", "dance/clip.mp4"}  # jump/clip_c failed at discovery
    assert failed["jump/clip_d"].reason.startswith("unreadable image f2.png:")
    assert failed["jump/clip_d"].stage == "decode" and failed["jump/clip_d"].path == str(
        root / "jump" / "clip_d"
    )
    lengths = {r.series_id: len(r.features) for r in results if not isinstance(r, Failure)}
    assert lengths == {"run/clip_b": 3, "walk/clip_a": 12}


def test_content_hash_follows_frames_not_names(root: Path, tmp_path: Path) -> None:
    before = by_id(discover(root).refs)["walk/clip_a"].content_hash
    assert by_id(discover(root).refs)["walk/clip_a"].content_hash == before  # stable
    moved = tmp_path / "elsewhere" / "stroll" / "clip_z"
    shutil.copytree(root / "walk" / "clip_a", moved)
    assert by_id(discover(tmp_path / "elsewhere").refs)["stroll/clip_z"].content_hash == before
    clip = root / "walk" / "clip_a"
    grey(clip / "frame_2.png", 200)
    grey(clip / "frame_10.png", 40)  # the same frames, two of them swapped: another series
    assert by_id(discover(root).refs)["walk/clip_a"].content_hash != before


def test_a_folder_given_as_root_is_one_series(root: Path, tmp_path: Path) -> None:
    found = discover(root / "walk" / "clip_a")
    assert [(r.series_id, r.label, r.partition) for r in found.refs] == [("clip_a", None, None)]
    frames, _ = frames_of(found.refs[0], SMALL, tmp_path)
    assert len(frames) == 12


def test_folder_changed_after_discovery_is_bad_input(root: Path, tmp_path: Path) -> None:
    ref = by_id(discover(root).refs)["walk/clip_a"]
    grey(root / "walk" / "clip_a" / "frame_13.png", 0)
    (failure,) = extract_many([ref], SMALL, mean_embed, batch_size=8, tmp_dir=tmp_path)
    assert isinstance(failure, Failure)
    assert (failure.stage, failure.reason) == (
        "decode",
        "folder changed since discovery: 13 images, then 12",
    )


def test_sixteen_bit_and_rotated_frames(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "scope" / "cells"
    folder.mkdir(parents=True)
    # Pillow's convert("RGB") would clip all but 0 to white
    for i, level in enumerate([0, 32768, 65535]):
        Image.fromarray(np.full((40, 40), level, np.uint16)).save(folder / f"t{i}.png")
    frames, _ = frames_of(discover(tmp_path / "src").refs[0], SMALL, tmp_path)
    assert frames[:, 0, 0, 0].tolist() == [0, 127, 255]
    turned = tmp_path / "phone" / "clip"
    turned.mkdir(parents=True)
    for i in range(2):
        image = np.zeros((20, 60, 3), np.uint8)
        image[:, :30] = 255  # left half white, as stored
        exif = Image.Exif()
        exif[0x0112] = 6  # "rotate 90 degrees clockwise to show"
        Image.fromarray(image).save(turned / f"{i}.jpg", exif=exif, quality=95)
    ref = discover(tmp_path / "phone").refs[0]
    assert (describe(ref, SMALL, tmp_path)["width"], describe(ref, SMALL, tmp_path)["height"]) == (
        20,
        60,
    )
    upright, _ = frames_of(ref, SMALL, tmp_path)
    assert upright[0, 2, 16, 0] > 200 and upright[0, -3, 16, 0] < 50  # stored left half now on top
