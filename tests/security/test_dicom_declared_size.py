"""DICOM files whose header declares more pixel data than any scan holds (SPEC §6: sizes are
bounded): a 2 GiB pixel data length in a 40 kB file, and 46341 x 46341 native pixels. Each is
refused at discovery from the header alone, by file name, in bounded time and memory; nothing is
decoded."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest

from tests.helpers import wheel_data
from tests.security.conftest import isolated

PIXEL_DATA = b"\xe0\x7f\x10\x00"  # tag (7FE0,0010), little endian


def declared_length(source: Path, target: Path, length: int) -> Path:
    """A copy of an explicit-VR little-endian DICOM whose pixel data element declares `length` B."""
    data = bytearray(source.read_bytes())
    at = data.rfind(PIXEL_DATA)
    assert data[at + 4 : at + 6] in (b"OW", b"OB"), (
        "expected an explicit VR OB/OW element: 32-bit length at +8"
    )
    data[at + 8 : at + 12] = struct.pack("<I", length)
    target.write_bytes(bytes(data))
    return target


def declared_shape(source: Path, target: Path, rows: int, columns: int) -> Path:
    ds = pydicom.dcmread(source)
    ds.Rows, ds.Columns = rows, columns
    ds.save_as(target)
    return target


@pytest.mark.parametrize(
    "make, reason",
    [
        (
            lambda src, dst: declared_length(src, dst, 2 << 30),
            f"pixel data truncated: the file holds 32906 of its {2 << 30} bytes",
        ),
        (
            lambda src, dst: declared_shape(src, dst, 46341, 46341),
            "pixel data holds 32768 bytes; 46341x46341 needs 4294976562",
        ),
    ],
    ids=["2GiB-length", "46341x46341"],
)
def test_a_dicom_declaring_gigabytes_is_refused_at_discovery(
    tmp_path: Path, make, reason: str
) -> None:
    series = tmp_path / "source" / "ct"
    series.mkdir(parents=True)
    make(wheel_data("pydicom", "pydicom/data/test_files") / "CT_small.dcm", series / "huge.dcm")
    shown = isolated(f"""
        import time
        from pathlib import Path
        from lstmpipe.lib.sources.discover import discover
        began = time.monotonic()
        found = discover(Path({str(tmp_path / "source")!r}))
        result = {{"seconds": time.monotonic() - began, "refs": len(found.refs),
                   "failures": [[f.series_id, f.path, f.stage, f.reason] for f in found.failures]}}
    """)
    [(series_id, path, stage, why)] = shown["result"]["failures"]
    assert shown["result"]["refs"] == 0 and stage == "discover"
    assert path.endswith("huge.dcm") and why == f"ct/huge.dcm: {reason}"
    assert shown["result"]["seconds"] < 5 and shown["self_bytes"] < 400 << 20, shown
