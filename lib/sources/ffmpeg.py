"""Which ffmpeg binary runs, its version (part of the feature recipe), and its inputs' spelling."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

# The demuxers ffmpeg may pick for an input, as `ffmpeg -demuxers` names them: containers that hold
# their own media. Left out on purpose: every format that makes ffmpeg open other files or
# addresses (dash, hls, concat, image2, sdp, rtp, webm_dash_manifest, ...): a DASH manifest saved as
# clip.mp4 would otherwise decode a file outside the source. ffmpeg probes an input's content and
# refuses it when the best match is not on this list ("Format not on whitelist").
DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2",  # one demuxer; its mov option enable_drefs (external data) stays off
    "matroska,webm",
    "avi",
    "mpegts",  # .ts, .mts, .m2ts
    "mpeg",  # program stream: .mpg, .vob
    "flv",
    "asf",  # .wmv
    "ogg",
    "mxf",
    "dv",
    "yuv4mpegpipe",  # .y4m
    "gif",
)
# Plain files, and a stored archive member read in place (subfile opens `file` itself).
PROTOCOLS = ("file", "subfile")


@functools.cache
def ffmpeg_exe() -> str:
    """The `ffmpeg` on PATH, else the static binary the imageio-ffmpeg wheel ships."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg  # imported late: only needed where no system ffmpeg exists

    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.cache
def ffmpeg_version() -> str:
    """`7.1` from `ffmpeg version 7.1-static ...`; decoded pixels may differ between versions."""
    out = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True, timeout=30
    ).stdout
    match = re.search(r"ffmpeg version (\S+)", out)
    return match.group(1) if match else "unknown"


def input_options() -> dict[str, str]:
    """What every ffmpeg input of lstmpipe is opened with: only the DEMUXERS, over the PROTOCOLS."""
    return {"format_whitelist": ",".join(DEMUXERS), "protocol_whitelist": ",".join(PROTOCOLS)}


def input_args(url: str) -> list[str]:
    """`-format_whitelist ... -protocol_whitelist ... -i URL`: an input, restricted as above."""
    options = [arg for key, value in input_options().items() for arg in (f"-{key}", value)]
    return [*options, "-i", url]


def subfile_url(path: str, start: int, size: int) -> str:
    """An ffmpeg input for `size` bytes of `path` from `start`: a stored member, read in place."""
    return f"subfile,,start,{start},end,{start + size},,:{path}"
