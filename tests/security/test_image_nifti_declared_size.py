"""Image frames and NIfTI volumes whose headers declare gigapixels (SPEC §6: sizes are bounded): a PNG in an
image-folder series patched to 60000 x 60000, and a 3 kB NIfTI claiming 30000^4 voxels. Pillow's bomb check
and the NIfTI size check refuse them by file name, in bounded memory, without decoding a frame of them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from tests.security.conftest import isolated

RUN = """
    from pathlib import Path
    from lib.config import SamplingConfig
    from lib.decode import decode
    from lib.errors import BadInput
    from lib.sources import discover
    found = discover(Path({source!r}))
    decoded = []
    for ref in found.refs:
        try:
            decoded.append(sum(len(c) for c in decode(ref, SamplingConfig(size=32), Path({tmp!r}))))
        except BadInput as exc:
            decoded.append(str(exc))
    result = {{"decoded": decoded, "failures": [[f.series_id, f.stage, f.reason] for f in found.failures]}}
"""


def test_an_image_frame_declaring_60000_squared_fails_its_series_by_name(tmp_path: Path) -> None:
    series = tmp_path / "source" / "seq"
    series.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(series / f"f{i:03d}.png")
    frame = series / "f001.png"
    data = bytearray(frame.read_bytes())
    data[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # a valid chunk CRC: only the size lies
    frame.write_bytes(bytes(data))
    shown = isolated(RUN.format(source=str(tmp_path / "source"), tmp=str(tmp_path / "tmp")))
    [message] = shown["result"]["decoded"]
    assert str(frame) in message and "exceeds limit" in message and "decompression bomb" in message
    assert shown["self_bytes"] < 400 << 20, shown


def test_a_nifti_declaring_30000_to_the_fourth_is_refused_at_discovery(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 5), np.int16), np.eye(4)), source / "huge.nii")
    data = bytearray((source / "huge.nii").read_bytes())
    data[40:56] = struct.pack("<8h", 4, 30000, 30000, 30000, 30000, 1, 1, 1)  # dim[0..7]
    (source / "huge.nii").write_bytes(bytes(data))
    shown = isolated(RUN.format(source=str(source), tmp=str(tmp_path / "tmp")))
    assert shown["result"]["decoded"] == []
    [(series_id, stage, reason)] = shown["result"]["failures"]
    assert (series_id, stage) == ("huge.nii", "discover") and reason.startswith("truncated: ")
    assert shown["self_bytes"] < 400 << 20, shown
