"""Which ffmpeg binary runs, its version (part of the feature recipe), and its inputs' spelling."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess


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


def subfile_url(path: str, start: int, size: int) -> str:
    """An ffmpeg input for `size` bytes of `path` from `start`: a stored member, read in place."""
    return f"subfile,,start,{start},end,{start + size},,:{path}"
