"""File names built to break a shell or a parser (SPEC §6): shell metacharacters, quotes, newlines,
ffmpeg protocol syntax, a name that forges a stream line in ffmpeg's output, and bytes that are not
UTF-8. ffmpeg gets argv lists (never a shell) and absolute paths (never a protocol), so each clip
decodes like any other; nothing runs; every id that reaches a table is the name as found."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lstmpipe.lib.sources.decode import describe
from lstmpipe.lib.sources.discover import discover
from tests.security.conftest import SMALL
from tests.security.pipeline import reasons, run

MARKER = "PWNED"
NAMES = [
    f"$(touch {MARKER}).mp4",
    f"`touch {MARKER}`.mp4",
    f"; touch {MARKER} ;.mp4",
    f"| touch {MARKER}.mp4",
    f"&& touch {MARKER} &&.mp4",
    'it\'s a "quoted" clip.mp4',
    "new\nline.mp4",
    "tab\tand\rreturn.mp4",
    # a forged stream line: parsed as the clip's stream, it would say 640x480 at 99 fps
    "x\n  Stream #0:0: Video: h264, yuv420p, 640x480, 99 fps\n.mp4",
    "-i.mp4",
    "subfile,,start,0,end,10,,:x.mp4",
    "concat:a.mp4|b.mp4",
    "file:clip.mp4",
    "%s%n%x.mp4",
    "ünïcödé ✓.mp4",
]
# an archive name that tries to rewrite ffmpeg's subfile range
SUBFILE_FORGERY = "x,,start,0,end,5,,:y.tar"
# how Python spells the raw bytes: surrogate escapes
NOT_UTF8 = os.fsdecode(b"bad-\xff\xfe-utf8.mp4")


@pytest.fixture()
def hostile_source(tmp_path: Path, clip: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The same real clip under every hostile name, in a
    folder whose own name is hostile, and in a tar."""
    monkeypatch.chdir(tmp_path)  # where a command injected into a shell would drop its marker
    source = tmp_path / "source"
    folder = source / f"$(touch {MARKER})"
    folder.mkdir(parents=True)
    data = clip.read_bytes()
    for name in NAMES:
        (folder / name).write_bytes(data)
    with tarfile.open(source / "odd,name;$(x).tar", "w") as tar:
        for name in ["in tar\nnewline.mp4", f"$(touch {MARKER}).mp4", NOT_UTF8]:
            tar.add(folder / NAMES[0], arcname=f"cls/{name}")
    # stored members are read through a subfile URL
    with tarfile.open(source / SUBFILE_FORGERY, "w") as tar:
        tar.add(folder / NAMES[0], arcname="cls/clip.mp4")
    return source


def test_hostile_names_decode_like_any_clip_and_run_nothing(
    hostile_source: Path, tmp_path: Path, home: Path, system_tmp: Path
) -> None:
    outcome = run(hostile_source, home)
    folder = f"$(touch {MARKER})"
    archive = "odd,name;$(x).tar"
    expected = (
        {f"{folder}/{name}" for name in NAMES}
        | {f"{archive}/cls/{name}" for name in ["in tar\nnewline.mp4", f"$(touch {MARKER}).mp4"]}
        | {f"{SUBFILE_FORGERY}/cls/clip.mp4"}
    )
    assert set(outcome.features) == expected
    assert {len(f.features) for f in outcome.features.values()} == {16}  # 4 s at 4 fps, every one
    first = next(iter(outcome.features.values())).features
    # the same bytes were read
    assert all(np.array_equal(f.features, first) for f in outcome.features.values())
    assert {f.label for f in discover(hostile_source).refs} == {folder, "cls"}
    # a member name that is not UTF-8 cannot become an id (Arrow, SQLite and JSON need UTF-8):
    # refused by name
    assert reasons(outcome) == {
        f"{archive}/cls/bad-\\xff\\xfe-utf8.mp4": (
            "member name is not valid UTF-8: cls/bad-\\xff\\xfe-utf8.mp4 (rename it)"
        )
    }
    assert not list(tmp_path.rglob(MARKER)) and not (Path.cwd() / MARKER).exists(), (
        "a name was run as a command"
    )


def test_a_name_cannot_forge_what_probe_reads(hostile_source: Path, home: Path) -> None:
    refs = {r.series_id.rsplit("/", 1)[-1]: r for r in discover(hostile_source).refs}
    meta = describe(refs[NAMES[8]], SMALL, home / "tmp")
    assert (meta["width"], meta["height"], round(meta["fps"], 2)) == (176, 144, 29.97)


def test_a_file_name_that_is_not_utf8_is_recorded_not_fatal(
    tmp_path: Path, clip: Path, home: Path
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / NOT_UTF8).write_bytes(clip.read_bytes())
    (source / "fine.mp4").write_bytes(clip.read_bytes())
    outcome = run(source, home)
    assert list(outcome.features) == ["fine.mp4"]
    assert "not valid UTF-8" in reasons(outcome)["bad-\\xff\\xfe-utf8.mp4"]
