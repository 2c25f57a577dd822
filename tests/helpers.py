"""Helpers shared by tests (importable: tests/ is a package)."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path


def ffmpeg_children() -> list[int]:
    """Pids of this process's ffmpeg children (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if (
            entry.name.isdigit()
            and int(fields[1]) == os.getpid()
            and "ffmpeg" in stat.split(")")[0]
        ):
            found.append(int(entry.name))
    return found


def wheel_data(distribution: str, path: str) -> Path:
    """A data folder shipped inside an installed wheel, found without importing the package."""
    return Path(str(importlib.metadata.distribution(distribution).locate_file(path)))
