"""Archive members that try to reach outside the archive (SPEC §6 security): `..`, absolute paths,
symbolic and hard links, devices and fifos. Each is refused at discovery and recorded by name; the
acceptable member beside them decodes; nothing is written outside the state directory."""

from __future__ import annotations

import io
import os
import socket
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.archives import find_member, member_input
from lstmpipe.lib.sources.decode import decode
from tests.security.conftest import SMALL, snapshot
from tests.security.pipeline import reasons, run

# tests run as root here: an extraction would really land there
ETC_ESCAPE = "/etc/lstmpipe-escape-test.mp4"


def tar_member(
    name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes = b""
) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data)
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        # /dev/null's numbers: harmless if anything ever made it
        info.devmajor, info.devminor = (
            1,
            3,
        )
    return info, data


def hostile_tar(path: Path, clip: bytes, outside: Path) -> Path:
    members = [
        tar_member("ok/clip.mp4", data=clip),
        tar_member("../escaped.mp4", data=clip),
        tar_member("ok/../../escaped2.mp4", data=clip),
        tar_member(str(outside / "absolute.mp4"), data=clip),
        tar_member(ETC_ESCAPE, data=clip),
        tar_member("ok/symlink_out.mp4", tarfile.SYMTYPE, "../../outside/secret.mp4"),
        tar_member("ok/symlink_abs.mp4", tarfile.SYMTYPE, "/etc/passwd"),
        tar_member("ok/hardlink_abs.mp4", tarfile.LNKTYPE, "/etc/passwd"),
        tar_member("ok/hardlink_in.mp4", tarfile.LNKTYPE, "ok/clip.mp4"),
        tar_member("ok/char.mp4", tarfile.CHRTYPE),
        tar_member("ok/block.mp4", tarfile.BLKTYPE),
        tar_member("ok/fifo.mp4", tarfile.FIFOTYPE),
    ]
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def hostile_zip(path: Path, clip: bytes, outside: Path, compression: int) -> Path:
    def special(name: str, mode: int, data: bytes = b"") -> tuple[zipfile.ZipInfo, bytes]:
        info = zipfile.ZipInfo(name)
        info.external_attr = mode << 16  # unix mode in the high half, as Info-ZIP writes it
        info.create_system = 3  # unix
        return info, data

    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        zf.writestr("ok/clip.mp4", clip)
        zf.writestr("../escaped.mp4", clip)
        zf.writestr(str(outside / "absolute.mp4"), clip)
        zf.writestr(ETC_ESCAPE, clip)
        for info, data in (
            special("ok/symlink_out.mp4", stat.S_IFLNK | 0o777, b"../../outside/secret.mp4"),
            special("ok/symlink_abs.mp4", stat.S_IFLNK | 0o777, b"/etc/passwd"),
            special("ok/char.mp4", stat.S_IFCHR | 0o666),
            special("ok/block.mp4", stat.S_IFBLK | 0o666),
            special("ok/fifo.mp4", stat.S_IFIFO | 0o666),
            special("ok/socket.mp4", stat.S_IFSOCK | 0o666),
        ):
            zf.writestr(info, data)
    return path


@pytest.fixture()
def outside(tmp_path: Path) -> Path:
    """A folder beside the source and the state directory that nothing may write into."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.mp4").write_bytes(b"not for you")
    return folder


@pytest.mark.parametrize("name", ["day.tar", "day.tar.gz", "day_stored.zip", "day_deflated.zip"])
def test_escaping_members_are_refused_by_name_and_the_good_one_decodes(
    name: str, tmp_path: Path, home: Path, outside: Path, clip: Path, system_tmp: Path
) -> None:
    source = tmp_path / "source" / "sub"  # escapes of one and two levels both land inside tmp_path
    source.mkdir(parents=True)
    data = clip.read_bytes()
    if name.endswith(".zip"):
        hostile_zip(
            source / name,
            data,
            outside,
            zipfile.ZIP_STORED if "stored" in name else zipfile.ZIP_DEFLATED,
        )
    else:
        hostile_tar(source / name, data, outside)
    before_source, before_outside = snapshot(tmp_path / "source"), snapshot(outside)

    outcome = run(source, home)

    assert list(outcome.features) == [f"{name}/ok/clip.mp4"]
    assert len(outcome.features[f"{name}/ok/clip.mp4"].features) == 16  # 4 s at 4 fps
    refused = reasons(outcome)
    assert set(outcome.failures["stage"].to_pylist()) == {"discover"}
    expected = {
        "../escaped.mp4": "path escaping the archive rejected",
        str(outside / "absolute.mp4"): "absolute path rejected",
        ETC_ESCAPE: "absolute path rejected",
        "ok/symlink_out.mp4": "link member rejected (symlink",
        "ok/symlink_abs.mp4": "link member rejected (symlink",
        "ok/char.mp4": "device or fifo member rejected",
        "ok/block.mp4": "device or fifo member rejected",
        "ok/fifo.mp4": "device or fifo member rejected",
    }
    if name.endswith(".zip"):
        expected["ok/socket.mp4"] = "device or fifo member rejected"
    else:
        expected |= {
            "ok/../../escaped2.mp4": "path escaping the archive rejected",
            "ok/hardlink_abs.mp4": "link member rejected (hardlink to /etc/passwd)",
            "ok/hardlink_in.mp4": "link member rejected (hardlink to ok/clip.mp4)",
        }
    assert set(refused) == {f"{name}/{member}" for member in expected}
    for member, reason in expected.items():
        assert reason in refused[f"{name}/{member}"], (member, refused[f"{name}/{member}"])
    assert all(
        path.endswith(f"{name}!{sid.split('/', 1)[1]}")
        for sid, path in zip(
            outcome.failures["series_id"].to_pylist(),
            outcome.failures["path"].to_pylist(),
            strict=False,
        )
    )

    assert snapshot(tmp_path / "source") == before_source and snapshot(outside) == before_outside
    assert not Path(ETC_ESCAPE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "outside", "source", "system-tmp"]


@pytest.mark.parametrize(
    "member", ["../escaped.mp4", "ok/symlink_abs.mp4", "ok/fifo.mp4", ETC_ESCAPE]
)
def test_a_forged_reference_to_a_refused_member_is_bad_input(
    member: str, tmp_path: Path, outside: Path, clip: Path, home: Path, system_tmp: Path
) -> None:
    """Defence in depth: a SeriesRef built by hand (or tampered
    with between tasks) cannot open what discovery refused."""
    archive = hostile_tar(tmp_path / "day.tar", clip.read_bytes(), outside)
    with pytest.raises(BadInput) as caught:
        find_member(archive, member)
    assert str(caught.value).startswith(f"{archive}!{member}: ")
    ref = SeriesRef(
        series_id=f"day.tar/{member}",
        content_hash="x",
        kind="video",
        path=str(archive),
        member=member,
    )
    with pytest.raises(BadInput, match="no such acceptable member"):
        list(decode(ref, SMALL, home / "tmp"))
    assert not Path(ETC_ESCAPE).exists() and not (tmp_path / "escaped.mp4").exists()


def test_compressed_members_are_copied_only_under_the_given_temp_folder(
    tmp_path: Path, outside: Path, clip: Path, home: Path, system_tmp: Path
) -> None:
    """The one temp copy of a compressed member has a random name in this process's folder in
    tmp_dir, never the member's; the folder goes with the copy."""
    archive = hostile_tar(tmp_path / "day.tar.gz", clip.read_bytes(), outside)
    with member_input(archive, find_member(archive, "ok/clip.mp4"), home / "tmp") as url:
        copy = Path(url)
        assert copy.parent.parent == home / "tmp"
        assert copy.parent.name.startswith(f"members-{socket.gethostname()}-{os.getpid()}-")
        assert copy.name.startswith("member-") and "clip" not in copy.name
    assert list((home / "tmp").iterdir()) == []
