"""Members of a compressed archive cost one pass over it, not one each (issue 16 item 8): each
member of a .tar.gz used to be read from the archive's start, so reading all N members one by one
decompressed about N/2 archives' worth (member 1000 cost 100x member 1; at max_members, days).
Bytes are counted where gzip decompresses them; members are asked for in the reverse of their
order in the archive (discovery asks in sorted order, whatever order the archive holds)."""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
import zipfile
from pathlib import Path

import pytest

from lstmpipe.lib.sources.archives import find_member, member_input

MEMBERS = 40
MEMBER_BYTES = 64 << 10


@pytest.fixture()
def decompressed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bytes gzip has decompressed since the fixture began, as a one-item list."""
    count = [0]
    read = gzip._GzipReader.read

    def counting(self: gzip._GzipReader, size: int = -1) -> bytes:
        data = read(self, size)
        count[0] += len(data)
        return data

    monkeypatch.setattr(gzip._GzipReader, "read", counting)
    return count


@pytest.fixture()
def clips(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A .tar.gz of MEMBERS incompressible members (and a note, never asked for), in an order
    that is not sorted."""
    rng = random.Random(0)
    contents = {f"c/{i:03d}.mp4": rng.randbytes(MEMBER_BYTES) for i in range(MEMBERS)}
    names = list(contents)
    rng.shuffle(names)
    archive = tmp_path / "clips.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        for name in [*names[:5], "c/notes.txt", *names[5:]]:
            data = contents.get(name, b"not a clip")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive, contents


def read_all(archive: Path, names: list[str], tmp_dir: Path) -> dict[str, bytes]:
    """Each member through member_input, one by one, as decoding does."""
    found = {}
    for name in names:
        with member_input(archive, find_member(archive, name), tmp_dir) as url:
            found[name] = Path(url).read_bytes()
    return found


def test_all_members_of_a_tar_gz_cost_one_pass_in_any_order(
    clips: tuple[Path, dict[str, bytes]], tmp_path: Path, decompressed: list[int]
) -> None:
    archive, contents = clips
    find_member(archive, "c/000.mp4")  # the listing (discovery's, cached): a pass of its own
    decompressed[0] = 0
    asked = sorted(contents, reverse=True)
    assert read_all(archive, asked, tmp_path / "tmp") == {n: contents[n] for n in asked}
    whole = MEMBERS * MEMBER_BYTES
    # one pass: the whole archive once (headers and padding add ~2%); N/2 passes before
    assert whole <= decompressed[0] < 1.1 * whole, decompressed[0] / whole
    # every member copied out was handed over and removed: nothing is left, not even the folder
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_member_asked_for_again_costs_one_more_pass_for_all(
    clips: tuple[Path, dict[str, bytes]], tmp_path: Path, decompressed: list[int]
) -> None:
    """A retry of the whole archive (a failed shard run again) is one more pass, not N/2."""
    archive, contents = clips
    find_member(archive, "c/000.mp4")
    decompressed[0] = 0
    asked = sorted(contents)
    read_all(archive, asked, tmp_path / "tmp")
    assert read_all(archive, asked, tmp_path / "tmp") == contents
    assert decompressed[0] < 2.2 * MEMBERS * MEMBER_BYTES, decompressed[0] / (
        MEMBERS * MEMBER_BYTES
    )


def test_a_zip_central_directory_is_read_once_for_all_its_members(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zipfile reads the whole central directory on opening: once per member was N^2 entries."""
    archive = tmp_path / "clips.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(MEMBERS):
            zf.writestr(f"c/{i:03d}.mp4", os.urandom(1000))
    names = [f"c/{i:03d}.mp4" for i in range(MEMBERS)]
    find_member(archive, names[0])
    opened = []
    real = zipfile.ZipFile._RealGetContents  # pyright: ignore[reportAttributeAccessIssue]

    def counting(self: zipfile.ZipFile) -> None:
        opened.append(self)
        real(self)

    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", counting)
    assert len(read_all(archive, names, tmp_path / "tmp")) == MEMBERS
    assert len(opened) == 1
