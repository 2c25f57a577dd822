"""Source kinds (SPEC §2): each groups files into series and opens a series.

A kind is two functions, both given the archive limits and the `sources` section of the
configuration:
    claim(base, files, memo, limits, sources) -> Claim
        which of `files` (sorted, under the folder `base`) are its series; claimed files
        are not offered to later kinds
    open(ref, sampling, tmp_dir, limits, sources) -> context manager of OpenSeries
        metadata + lazy FrameChunks
Kinds are tried in the order of KINDS, most specific first; video comes last and takes
every video file and archive left. What no kind claims is ignored. After decoding
nothing knows the kind.
"""

from lstmpipe.lib.sources.kinds import cube, dicom, geotiff, images, nifti, video
from lstmpipe.lib.sources.kinds.base import SourceKind

# Order matters: earlier kinds claim their files first.
KINDS: tuple[SourceKind, ...] = (
    dicom.KIND,
    nifti.KIND,
    geotiff.KIND,
    cube.KIND,
    images.KIND,
    video.KIND,
)
