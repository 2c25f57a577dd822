"""The sample archive: layout, labels, real decodable H.264, determinism, and order-only classes."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.demo.video import (
    SampleSpec,
    add_bad_files,
    draw_clip,
    generate_archive,
    generate_incoming,
    render_clip,
    write_clip,
)
from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.sources.ffmpeg import ffmpeg_exe

# 3 clips per class over 3 partitions: every partition (folder, tar, zip) holds every class.
SPEC = SampleSpec(clips_per_class=3, size=64, min_frames=6, max_frames=9)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_archive(tmp_path_factory.mktemp("samples"), SPEC)


def read_csv(path: Path) -> dict[str, str]:
    with path.open(newline="") as handle:
        return {row["series_id"]: row["label"] for row in csv.DictReader(handle)}


def read_series(root: Path, series_id: str) -> bytes:
    """The clip's bytes, whether a plain file or a member of a .tar / .zip partition."""
    head, _, member = series_id.partition("/")
    if head.endswith(".tar"):
        with tarfile.open(root / head, "r:") as tar:
            data = tar.extractfile(member)
            assert data is not None, series_id  # a regular file, not a directory or link
            return data.read()
    if head.endswith(".zip"):
        with zipfile.ZipFile(root / head) as archive_file:
            return archive_file.read(member)
    return (root / series_id).read_bytes()


def decode(data: bytes, size: int = SPEC.size) -> np.ndarray:
    """(T, size, size, 3) uint8 frames, decoded by the same ffmpeg binary the pipeline uses."""
    cmd = [
        ffmpeg_exe(),
        "-v",
        "error",
        "-i",
        "pipe:",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "pipe:",
    ]
    out = subprocess.run(cmd, input=data, capture_output=True, check=True, timeout=60).stdout
    assert len(out) % (size * size * 3) == 0
    return np.frombuffer(out, np.uint8).reshape(-1, size, size, 3)


def all_series(root: Path) -> set[str]:
    """Every clip under root as a series_id: folder files and archive members."""
    found = {p.relative_to(root).as_posix() for p in (root / SPEC.partitions[0]).rglob("*.mp4")}
    with tarfile.open(root / f"{SPEC.partitions[1]}.tar", "r:") as tar:
        found |= {f"{SPEC.partitions[1]}.tar/{m.name}" for m in tar.getmembers()}
    with zipfile.ZipFile(root / f"{SPEC.partitions[2]}.zip") as archive_file:
        found |= {f"{SPEC.partitions[2]}.zip/{name}" for name in archive_file.namelist()}
    return found


def hashes(root: Path) -> dict[str, str]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files
    }


def areas(frames: np.ndarray) -> np.ndarray:
    """Pixels per frame clearly off the background (the border's median: never covered)."""
    border = np.concatenate(
        [frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], axis=1
    )  # (T, 4S, 3)
    background = np.median(border, axis=1)[:, None, None, :]  # (T, 1, 1, 3)
    distance = np.abs(frames.astype(int) - background).sum(axis=-1)  # (T, S, S)
    return (distance > 60).sum(axis=(1, 2))


def contrast(frames: np.ndarray) -> np.ndarray:
    """Mean distance from the background per frame: grows as a shape fades in."""
    border = np.concatenate([frames[:, 0], frames[:, -1]], axis=1)
    background = np.median(border, axis=1)[:, None, None, :]
    return np.abs(frames.astype(float) - background).mean(axis=(1, 2, 3))


def test_labels_csv_matches_files_and_folders(archive: Path) -> None:
    labels = read_csv(archive / "labels.csv")
    assert len(labels) == len(SPEC.classes) * SPEC.clips_per_class
    assert set(labels) == all_series(archive)
    assert all(series_id.split("/")[-2] == label for series_id, label in labels.items())
    heads = {series_id.split("/")[0] for series_id in labels}
    assert heads == {"2026-11-19", "2026-11-20.tar", "2026-11-21.zip"}
    assert "2026-11-20.tar/grow/clip_0001.mp4" in labels  # clips go round-robin over partitions


def test_tar_is_uncompressed_and_zip_stored(archive: Path) -> None:
    with tarfile.open(archive / "2026-11-20.tar", "r:") as tar:  # "r:" refuses compressed tars
        assert all(m.isfile() and not m.name.startswith(("/", "..")) for m in tar.getmembers())
    with zipfile.ZipFile(archive / "2026-11-21.zip") as archive_file:
        assert {info.compress_type for info in archive_file.infolist()} == {zipfile.ZIP_STORED}


def test_every_clip_decodes_to_its_size_and_a_varying_length(archive: Path) -> None:
    lengths = []
    for series_id in read_csv(archive / "labels.csv"):
        frames = decode(read_series(archive, series_id))
        assert frames.shape[1:] == (SPEC.size, SPEC.size, 3), series_id
        assert SPEC.min_frames <= len(frames) <= SPEC.max_frames, series_id
        lengths.append(len(frames))
    assert len(set(lengths)) > 1


def test_same_spec_gives_identical_bytes(archive: Path, tmp_path: Path) -> None:
    assert hashes(generate_archive(tmp_path, SPEC)) == hashes(archive)


def test_rerun_with_same_spec_rewrites_nothing(archive: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in archive.rglob("*")}
    generate_archive(archive, SPEC)
    assert {p: p.stat().st_mtime_ns for p in archive.rglob("*")} == before


def test_changed_spec_regenerates_in_place(tmp_path: Path) -> None:
    generate_archive(tmp_path, SPEC)
    first = hashes(tmp_path)
    generate_archive(tmp_path, dataclasses.replace(SPEC, seed=1))
    second = hashes(tmp_path)
    assert set(second) == set(first)  # same layout, no leftovers from staging
    assert second["2026-11-19/grow/clip_0000.mp4"] != first["2026-11-19/grow/clip_0000.mp4"]
    assert '"seed": 1' in (tmp_path / ".sample-spec.json").read_text()


def clip(root: Path, label: str, index: int) -> np.ndarray:
    """Decoded frames of `<label>/clip_<index>` wherever labels.csv puts it (folder, tar or zip)."""
    (series_id,) = [
        s for s in read_csv(root / "labels.csv") if s.endswith(f"{label}/clip_{index:04d}.mp4")
    ]
    return decode(read_series(root, series_id))


@pytest.mark.parametrize("index", range(SPEC.clips_per_class))
def test_grow_area_increases_and_shrink_area_decreases(archive: Path, index: int) -> None:
    grow, shrink = areas(clip(archive, "grow", index)), areas(clip(archive, "shrink", index))
    tolerance = 0.05 * grow.max()
    assert grow[-1] > 2 * grow[0] and np.all(np.diff(grow) >= -tolerance), grow
    assert shrink[0] > 2 * shrink[-1] and np.all(np.diff(shrink) <= tolerance), shrink


@pytest.mark.parametrize("index", range(SPEC.clips_per_class))
def test_fade_in_contrast_increases_and_fade_out_decreases(archive: Path, index: int) -> None:
    fade_in, fade_out = (
        contrast(clip(archive, "fade_in", index)),
        contrast(clip(archive, "fade_out", index)),
    )
    assert fade_in[-1] > 2 * fade_in[0] and fade_out[0] > 2 * fade_out[-1]


@pytest.mark.parametrize("index", range(SPEC.clips_per_class))
@pytest.mark.parametrize(("forward", "backward"), [("grow", "shrink"), ("fade_in", "fade_out")])
def test_reversal_pairs_hold_the_same_frames(
    archive: Path, index: int, forward: str, backward: str
) -> None:
    """Only temporal order tells a pair apart: a frame-averaging model sees the same mean."""
    a, b = clip(archive, forward, index).astype(float), clip(archive, backward, index).astype(float)
    first_frames = np.abs(a[0] - b[0]).mean()  # order differs: about 30-45 grey levels
    assert np.abs(a[::-1] - b).mean() < 4.0  # reversed, they match up to H.264 loss (about 2)
    assert np.abs(a.mean(axis=0) - b.mean(axis=0)).mean() < min(2.0, 0.1 * first_frames)  # about 1


def test_backward_class_is_the_forward_one_reversed() -> None:
    draw = draw_clip(np.random.default_rng(7), 6, 9)
    assert np.array_equal(render_clip("shrink", draw, 32), render_clip("grow", draw, 32)[::-1])
    assert np.array_equal(render_clip("fade_out", draw, 32), render_clip("fade_in", draw, 32)[::-1])


def test_incoming_writes_clips_and_matching_truth(tmp_path: Path) -> None:
    root = generate_incoming(tmp_path / "a", SPEC, count=5)
    truth = read_csv(root / "truth.csv")
    files = {p.relative_to(root).as_posix() for p in (root / "2026-11-22").iterdir()}
    assert set(truth) == files == {f"2026-11-22/clip_{i:04d}.mp4" for i in range(5)}
    assert set(truth.values()) <= set(SPEC.classes) and len(set(truth.values())) > 1
    assert decode((root / "2026-11-22/clip_0000.mp4").read_bytes()).shape[1:] == (
        SPEC.size,
        SPEC.size,
        3,
    )
    assert hashes(generate_incoming(tmp_path / "b", SPEC, count=5)) == hashes(root)


def test_bad_files_do_not_decode(tmp_path: Path) -> None:
    paths = add_bad_files(tmp_path)
    assert [p.name for p in paths] == ["broken.mp4", "truncated.mp4"]
    assert (tmp_path / "truncated.mp4").stat().st_size == 2048
    for path in paths:
        cmd = [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "null", "-"]
        done = subprocess.run(cmd, capture_output=True, timeout=60)
        assert done.returncode != 0, path
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "broken.mp4",
        "truncated.mp4",
    ]  # no temp leftovers


def test_encoder_failure_names_the_file(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "clip.mp4"
    with pytest.raises(RuntimeError, match="missing-dir/clip.mp4"):
        write_clip(np.zeros((2, 16, 16, 3), np.uint8), 8, target)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"classes": ("left",)}, "classes"),
        ({"size": 63}, "size"),
        ({"partitions": ("monday",)}, "partitions"),
        ({"max_frames": 3}, "max_frames"),
    ],
)
def test_bad_spec_names_the_key(change: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SampleSpec(**change)
