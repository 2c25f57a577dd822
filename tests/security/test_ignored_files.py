"""Nothing under a source is dropped without a word (issue 16 item 10, SPEC §6).

Every regular file ends as a series, a recorded failure, or an ignored entry with its reason,
counted and listed in the run summary and `--json`. Files whose suffix no kind knows are sniffed
by their first bytes: video containers (.3g2, .mts, a clip with no suffix or the wrong one)
become series; the rest is ignored, said why, and no ffmpeg runs for it.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from lstmpipe.flows.console import render
from lstmpipe.lib.ops.summary import extraction_summary
from lstmpipe.lib.sources.discover import Ignored, discover
from lstmpipe.lib.sources.ffmpeg import ffmpeg_exe
from tests.security.pipeline import reasons, run

TEXT = "not a media file lstmpipe reads: text"
UNKNOWN = "not a media file lstmpipe reads: unknown content"


def remux(clip: Path, out: Path, *args: str) -> Path:
    """One second of `clip` in another container, made by ffmpeg itself."""
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-i", str(clip), "-t", "1", "-an", *args, str(out)],
        check=True,
        timeout=60,
    )
    return out


@pytest.fixture()
def mixed_source(tmp_path: Path, clip: Path) -> Path:
    """Clips in containers that once vanished, with and without their suffix, beside files that
    are not media: a README, random bytes, a subtitle sidecar, a hidden file and folder."""
    source = tmp_path / "source"
    cls = source / "cls"
    cls.mkdir(parents=True)
    remux(clip, cls / "phone.3g2", "-c:v", "mpeg4", "-f", "3g2")
    remux(clip, cls / "camera.mts", "-c:v", "mpeg2video", "-f", "mpegts", "-mpegts_m2ts_mode", "1")
    remux(clip, cls / "broadcast.ts", "-c:v", "mpeg2video", "-f", "mpegts")
    remux(clip, cls / "nosuffix", "-c:v", "mpeg4", "-f", "mp4")
    remux(clip, cls / "wrong.dat", "-c:v", "mpeg4", "-f", "matroska")
    (cls / "phone.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    (source / "README.txt").write_text("Clips from the field, one folder per class.\n")
    (source / "noise.bin").write_bytes(os.urandom(4096))
    (source / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return source


def test_every_file_is_a_series_a_failure_or_ignored_with_its_reason(
    mixed_source: Path, home: Path, system_tmp: Path
) -> None:
    found = discover(mixed_source)
    assert sorted(r.series_id for r in found.refs) == [
        "cls/broadcast.ts",
        "cls/camera.mts",
        "cls/nosuffix",
        "cls/phone.3g2",
        "cls/wrong.dat",
    ]
    assert found.failures == []
    assert found.ignored == [
        Ignored(".DS_Store", "hidden file (its name starts with a dot): not read"),
        Ignored(".git/", "hidden folder (its name starts with a dot): not read"),
        Ignored("README.txt", TEXT),
        Ignored("cls/phone.srt", "sidecar of cls/phone.3g2"),
        Ignored("noise.bin", UNKNOWN),
    ]
    # and the claimed ones really decode: a series each, no failure
    outcome = run(mixed_source, home)
    assert sorted(outcome.features) == sorted(r.series_id for r in found.refs)
    assert reasons(outcome) == {}


def test_the_summary_and_json_count_and_list_them(mixed_source: Path) -> None:
    found = discover(mixed_source)
    summary = extraction_summary([], found.failures, 0.0, found.ignored)
    document = summary.to_json()
    assert document["ignored"] == 5
    assert {"path": "README.txt", "reason": TEXT} in document["ignored_files"]
    shown = render({"command": "extract", "run_id": "r", "seconds": 1.0, **document})
    assert "  ignored   5 files, neither series nor failures:" in shown
    assert f"    IGNORED noise.bin: {UNKNOWN}" in shown


def test_an_archives_members_that_are_not_videos_are_listed_not_dropped(
    tmp_path: Path, clip: Path
) -> None:
    """Inside archives only videos are read; every other member is still accounted for."""
    source = tmp_path / "source"
    source.mkdir()
    notes = tmp_path / "notes.txt"
    notes.write_text("field notes\n")
    with tarfile.open(source / "day.tar", "w") as tar:
        tar.add(clip, "cls/clip.mp4")
        tar.add(notes, "cls/notes.txt")
        tar.add(clip, "cls/.hidden.mp4")
    found = discover(source)
    assert [r.series_id for r in found.refs] == ["day.tar/cls/clip.mp4"]
    assert found.ignored == [
        Ignored(
            "day.tar/cls/.hidden.mp4",
            "hidden archive member (a name starting with a dot): not read",
        ),
        Ignored(
            "day.tar/cls/notes.txt",
            "archive member without a video suffix: inside archives only videos are read",
        ),
    ]


@pytest.mark.slow  # writing 10 000 files takes seconds on a loaded machine
def test_a_folder_of_10000_text_files_is_sniffed_fast_without_ffmpeg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sniffing reads a kilobyte per file; ffmpeg never runs for what sniffs as nothing.

    Measured: the discovery costs 3.1 s of CPU (0.5 s per sniffing pass; the video kind sniffs,
    then discovery reads the reason), 12-26 s of wall time on 2 cores at load 13-15. An ffmpeg
    probe per file would cost minutes."""
    source = tmp_path / "notes"
    source.mkdir()
    for i in range(10_000):
        (source / f"note{i:05d}.txt").write_text(f"note {i}\n")

    def no_ffmpeg(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a process started during discovery: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_ffmpeg)
    monkeypatch.setattr(subprocess, "run", no_ffmpeg)
    started = time.monotonic()
    found = discover(source)
    seconds = time.monotonic() - started
    assert found.refs == [] and found.failures == []
    assert len(found.ignored) == 10_000
    assert {entry.reason for entry in found.ignored} == {TEXT}
    assert seconds < 60, f"discovery of 10 000 text files took {seconds:.1f} s"
