"""Manifests and playlists under a video name never make ffmpeg read another file (issue 16 item 2).

A DASH manifest saved as clip.mp4 whose BaseURL names a file outside the source used to be probed
and decoded: features of a file nobody pointed lstmpipe at. Every ffmpeg input is now opened with
only lstmpipe's container demuxers (lstmpipe.lib.sources.ffmpeg.DEMUXERS) over file and subfile.
Each family ffmpeg has is saved under a video suffix, pointing at a file outside the source; each
is refused with a precise reason, by the probe and by the decoder alike, and the file it names is
never opened: it is a FIFO, which a reader opening it would wake.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.sources.ffmpeg import PROTOCOLS, ffmpeg_exe, input_options
from lstmpipe.lib.sources.kinds.video import VideoInfo, decode_command, decode_video, probe
from tests.security.conftest import SMALL
from tests.security.pipeline import reasons, run

NOT_LISTED = "is not one lstmpipe decodes: manifests, playlists and sequences that name other files"


def dash(target: Path) -> str:
    return f"""<?xml version="1.0"?>
<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" mediaPresentationDuration="PT4S"
     minBufferTime="PT1S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011">
 <Period><AdaptationSet mimeType="video/mp4">
  <Representation id="1" bandwidth="100000" width="176" height="144" codecs="avc1.42c00d">
   <BaseURL>{target}</BaseURL>
  </Representation>
 </AdaptationSet></Period>
</MPD>
"""


def hls(target: Path) -> str:
    return (
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:5\n"
        f"#EXTINF:4.0,\n{target}\n#EXT-X-ENDLIST\n"
    )


def ffconcat(target: Path) -> str:
    return f"ffconcat version 1.0\nfile '{target}'\nfile '{target}'\n"


def sdp(_target: Path) -> str:
    """A session description: RTP from the network, a file of no one's choosing."""
    return (
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=video 5004 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    )


# family -> (content naming the target, the file name it is saved under, the reason it gets)
FAMILIES = {
    "dash": (dash, "clip.mp4", f"container format dash {NOT_LISTED}"),
    "ffconcat": (ffconcat, "list.mkv", f"container format concat {NOT_LISTED}"),
    "sdp": (sdp, "stream.ts", f"container format sdp {NOT_LISTED}"),
    # ffmpeg itself will not take a playlist for HLS under another suffix; it is not a video
    "hls": (hls, "playlist.mp4", "not a media file: Invalid data found when processing input"),
}


@contextmanager
def fifo_target(folder: Path) -> Iterator[tuple[Path, threading.Event]]:
    """A FIFO to name as the manifest's target, and an event set if anything opens it to read.

    A writer blocks in open() until a reader comes: the thread below returns only then.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "secret.mp4"
    os.mkfifo(target)
    opened = threading.Event()

    def writer() -> None:
        fd = os.open(target, os.O_WRONLY)  # blocks until a reader opens the FIFO
        opened.set()
        os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        yield target, opened
    finally:
        os.close(os.open(target, os.O_RDONLY | os.O_NONBLOCK))  # release the writer
        thread.join(timeout=5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_probe_and_decoder_refuse_and_never_open_the_named_file(
    family: str, tmp_path: Path
) -> None:
    make, name, reason = FAMILIES[family]
    with fifo_target(tmp_path / "elsewhere") as (target, opened):
        manifest = tmp_path / "source" / name
        manifest.parent.mkdir()
        manifest.write_text(make(target))
        with pytest.raises(BadInput) as probed:
            probe(str(manifest), name, timeout_s=10)
        assert probed.value.reason.startswith(reason)
        # the decoder on its own (as if the file changed after its probe) is restricted too
        with pytest.raises(BadInput) as decoded:
            list(decode_video(str(manifest), name, SMALL, VideoInfo(176, 144, 25.0, 4.0, "h264")))
        assert NOT_LISTED in decoded.value.reason or "Invalid data" in decoded.value.reason
        assert not opened.is_set(), f"ffmpeg opened the file the {family} manifest names"


def test_dash_is_a_real_attack_without_the_restriction(tmp_path: Path, clip: Path) -> None:
    """The control: plain `ffmpeg -i` follows the manifest and finds the other file's stream."""
    target = tmp_path / "elsewhere" / "secret.mp4"
    target.parent.mkdir()
    shutil.copy(clip, target)
    manifest = tmp_path / "clip.mp4"
    manifest.write_text(dash(target))
    said = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(manifest)],
        capture_output=True,
        text=True,
        timeout=30,
    ).stderr
    assert "Input #0, dash" in said and "176x144" in said
    with pytest.raises(BadInput, match="container format dash is not one lstmpipe decodes"):
        probe(str(manifest), "clip.mp4", timeout_s=10)


def test_an_image_sequence_is_refused(tmp_path: Path, clip: Path) -> None:
    """`img%03d.mp4` holding a JPEG: an image demuxer (which could read a numbered sequence) is
    not on the list, whatever the name."""
    frame = tmp_path / "img%03d.mp4"
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(clip), "-frames:v", "1", "-f", "mjpeg", str(frame)],
        check=True,
        timeout=30,
    )
    with pytest.raises(BadInput, match=f"container format jpeg_pipe {NOT_LISTED}"):
        probe(str(frame), frame.name, timeout_s=10)


def test_only_files_and_stored_members_are_opened(tmp_path: Path, clip: Path) -> None:
    """The protocol list is the second wall: a URL that is not a file (concat:, tee:, http:)
    is refused even where a caller passed one."""
    assert PROTOCOLS == ("file", "subfile")
    for url in (f"concat:{clip}|{clip}", f"tee:{clip}", "http://127.0.0.1:9/x.mp4"):
        with pytest.raises(BadInput, match="cannot open: "):
            probe(url, "url", timeout_s=10)


def test_mov_external_data_references_stay_off() -> None:
    """The mp4 demuxer can open files named by `dref` atoms, only when enable_drefs is set: its
    default is off and lstmpipe never sets it, in the probe or the decoder."""
    help_text = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-h", "demuxer=mov"], capture_output=True, text=True
    ).stdout
    line = next(line for line in help_text.splitlines() if "-enable_drefs" in line)
    assert "(default false)" in line
    decoder = decode_command("/x.mp4", 32, 4.0, None)
    assert not any("drefs" in arg for arg in decoder + list(input_options()))
    assert decoder[decoder.index("-i") - 4 : decoder.index("-i")] == [
        "-format_whitelist",
        input_options()["format_whitelist"],
        "-protocol_whitelist",
        "file,subfile",
    ]


def test_a_run_records_each_manifest_and_keeps_the_real_clip(
    tmp_path: Path, clip: Path, home: Path, system_tmp: Path
) -> None:
    """Through discovery and extraction, as files and as a stored tar member (read through
    subfile): each manifest a failure naming it and why; the real clip beside them decoded."""
    with fifo_target(tmp_path / "elsewhere") as (target, opened):
        source = tmp_path / "source"
        (source / "cls").mkdir(parents=True)
        shutil.copy(clip, source / "cls" / "real.mp4")
        for family, (make, name, _) in FAMILIES.items():
            (source / "cls" / f"{family}-{name}").write_text(make(target))
        with tarfile.open(source / "day.tar", "w") as tar:
            tar.add(source / "cls" / "dash-clip.mp4", arcname="cls/clip.mp4")
        outcome = run(source, home)
        assert not opened.is_set()
    assert set(outcome.features) == {"cls/real.mp4"}
    got = reasons(outcome)
    for family, (_, name, reason) in FAMILIES.items():
        assert got[f"cls/{family}-{name}"].startswith(reason), family
    assert got["day.tar/cls/clip.mp4"].startswith(f"container format dash {NOT_LISTED}")
