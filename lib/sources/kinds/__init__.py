"""Source kinds other than video (SPEC §2): each groups files into series and opens a series.

A kind is two functions, both given the `sources` section of the configuration:
    claim(base, files, memo, sources) -> Claim   which of `files` (sorted, under the folder `base`)
                                       are its series; claimed files are not offered to later kinds
    open(ref, sampling, tmp_dir, limits, sources) -> context manager of OpenSeries   metadata + lazy FrameChunks
Kinds are tried in the order of KINDS (most specific first); whatever no kind claims
is looked at as video (lib/sources/discover.py). After decoding nothing knows the kind.
"""

from lstmpipe.lib.sources.kinds import cube, dicom, geotiff, images, nifti
from lstmpipe.lib.sources.kinds.base import SourceKind

# Order matters: earlier kinds claim their files first.
KINDS: tuple[SourceKind, ...] = (
    dicom.KIND,
    nifti.KIND,
    geotiff.KIND,
    cube.KIND,
    images.KIND,
)
