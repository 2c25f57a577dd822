"""Publishing a generated, labelled sample: once per spec, and never half-written.

Shared by the domain generators (lib/demo/medical.py, lib/demo/geo.py): a
marker file holds the spec a folder was made from, so a re-run with the same spec
does nothing; otherwise the class folders are written into a hidden staging folder
and moved in one rename each, then labels.csv and the marker are written atomically.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lstmpipe.lib.atomic import write_text_atomic


def publish_sample(
    root: Path,
    spec: dict[str, Any],
    classes: Sequence[str],
    write: Callable[[Path], list[tuple[str, str]]],
) -> Path:
    """`write(staging)` fills staging/<class>/... and returns (series_id, label) rows; root back."""
    root = Path(root)
    marker = root / ".sample-spec.json"
    marker_text = json.dumps(spec, indent=2, sort_keys=True)
    if marker.exists() and marker.read_text() == marker_text and (root / "labels.csv").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        rows = write(staging)
        for label in classes:
            target = root / label
            # a folder cannot be replaced in one rename: park the old one for deletion
            if target.exists():
                target.rename(staging / f"old-{label}")
            (staging / label).rename(target)
        labels = "".join(f"{series_id},{label}\n" for series_id, label in sorted(rows))
        write_text_atomic("series_id,label\n" + labels, root / "labels.csv")
        write_text_atomic(marker_text, marker)
    finally:
        shutil.rmtree(staging)
    return root
