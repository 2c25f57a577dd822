"""Media that point elsewhere: a NetCDF-4 (HDF5) variable whose raw data is another file (external
storage: a secret, or a FIFO that would block the reader forever), a virtual dataset, an external
link; a multi-file OME-TIFF whose XML names a file outside the source; Zarr stores with a pickle
codec, an object dtype, a chunk linked outside the store, consolidated metadata naming a path
outside it, a FIFO for a chunk. Each is refused at discovery from its header, as a failure naming
the file and the reason, before anything it names is opened; the honest series beside it go on
(lib/sources/kinds/cube.py `check_hdf5`, `check_zarr`; lib/sources/kinds/geotiff.py `_header`)."""

from __future__ import annotations

import json
import os
import pickle
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import xarray as xr

from lstmpipe.lib.sources.discover import Discovery, discover
from tests.security.pipeline import reasons, run

SECRET = 4242.0  # the value of every sample of the file outside the source

# GeoTIFF tags of a 30 m UTM 13N grid, as GDAL writes them: what makes a TIFF a GeoTIFF here
_UTM13N = (1, 1, 0, 4, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32613, 3076, 0, 1, 9001)
GEO_TAGS = [
    (33550, "d", 3, (30.0, 30.0, 0.0), True),
    (33922, "d", 6, (0.0, 0.0, 0.0, 336375.0, 4462425.0, 0.0), True),
    (34735, "H", len(_UTM13N), _UTM13N, True),
]

Build = Callable[[h5py.File], None]


def stored_time(f: h5py.File) -> None:
    f.create_dataset("time", data=np.array([0.0, 10.0]))


def stored_red(f: h5py.File) -> None:
    f.create_dataset("red", data=np.arange(32, dtype=np.float32).reshape(2, 4, 4))


def netcdf(path: Path, red: Build = stored_red, time: Build = stored_time) -> Path:
    """A NetCDF-4 cube (time 2, y 4, x 4) written with h5py as netCDF does (dimension scales);
    `red` and `time` make those variables: the hostile part, when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        time(f)
        f["time"].attrs["units"] = "days since 2024-01-01"
        for dim in ("y", "x"):
            f.create_dataset(dim, data=np.arange(4.0))
        dims = ("time", "y", "x")
        for dim in dims:
            dataset(f, dim).make_scale(dim)
        red(f)
        for axis, dim in enumerate(dims):
            dataset(f, "red").dims[axis].attach_scale(dataset(f, dim))
    return path


def dataset(f: h5py.File, name: str) -> h5py.Dataset:
    found = f[name]
    assert isinstance(found, h5py.Dataset)
    return found


@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    """Raw float32 samples, outside the source: what `red` would read; and the same as HDF5."""
    path = tmp_path / "outside" / "secret.bin"
    path.parent.mkdir()
    path.write_bytes(np.full(32, SECRET, np.float32).tobytes())
    with h5py.File(path.with_suffix(".h5"), "w") as f:
        f["data"] = np.full((2, 4, 4), SECRET, np.float32)
    return path


def reason_of(found: Discovery, name: str) -> str:
    """The reason of the one discover failure naming the file `name`; the honest cube is found."""
    named = [f for f in found.failures if Path(f.path).name == name]
    assert len(named) == 1 and named[0].stage == "discover", found.failures
    assert [r.series_id for r in found.refs] == ["honest.nc"], found.refs
    return named[0].reason


def test_external_storage_outside_the_source_never_reaches_features(
    tmp_path: Path, home: Path, secret: Path, system_tmp: Path
) -> None:
    source = tmp_path / "source"

    def elsewhere(f: h5py.File) -> None:
        f.create_dataset("red", (2, 4, 4), np.float32, external=[(str(secret), 0, 128)])

    leak = netcdf(source / "leak.nc", red=elsewhere)
    with xr.open_dataset(leak, engine="h5netcdf") as ds:  # the hazard: h5py reads the secret
        assert float(ds["red"].values.max()) == SECRET
    netcdf(source / "honest.nc")
    outcome = run(source, home)
    assert sorted(outcome.features) == ["honest.nc"]  # the rest goes on, the leak is not there
    why = reasons(outcome)["leak.nc"]
    assert "refused unread: variable 'red'" in why and "HDF5 external storage" in why
    assert str(secret) in why


def test_external_storage_on_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO for the time coordinate, which xarray loads at open: discovery used to block forever
    in open(2), in the flow's own process."""
    source = tmp_path / "source"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def blocking(f: h5py.File) -> None:
        f.create_dataset("time", (2,), np.float64, external=[(str(fifo), 0, 16)])

    netcdf(source / "fifo.nc", time=blocking)
    netcdf(source / "honest.nc")
    found: list[Discovery] = []
    worker = threading.Thread(target=lambda: found.append(discover(source)), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # lets the blocked reader go
        pytest.fail("discovery blocked on the FIFO named by external storage")
    why = reason_of(found[0], "fifo.nc")
    assert "variable 'time' keeps its data in another file" in why and str(fifo) in why


def test_a_virtual_dataset_is_refused(tmp_path: Path, secret: Path) -> None:
    def virtual(f: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape=(2, 4, 4), dtype=np.float32)
        layout[:] = h5py.VirtualSource(str(secret.with_suffix(".h5")), "data", shape=(2, 4, 4))
        f.create_virtual_dataset("red", layout)

    netcdf(tmp_path / "source" / "virtual.nc", red=virtual)
    netcdf(tmp_path / "source" / "honest.nc")
    why = reason_of(discover(tmp_path / "source"), "virtual.nc")
    assert "variable 'red' is a virtual dataset, assembled from other files" in why


def test_an_external_link_is_refused_unfollowed(tmp_path: Path, secret: Path) -> None:
    def linked(f: h5py.File) -> None:
        stored_red(f)
        f["more"] = h5py.ExternalLink(str(secret.with_suffix(".h5")), "/data")

    netcdf(tmp_path / "source" / "linked.nc", red=linked)
    netcdf(tmp_path / "source" / "honest.nc")
    why = reason_of(discover(tmp_path / "source"), "linked.nc")
    assert f"'more' is an external link to '{secret.with_suffix('.h5')}'" in why


def test_a_multi_file_ome_tiff_is_refused_and_the_file_it_names_never_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "secret.ome.tif"
    outside.parent.mkdir()
    tifffile.imwrite(outside, np.full((8, 8), SECRET, np.uint16), photometric="minisblack")
    scene = tmp_path / "source" / "field" / "scene_2024-05-01.ome.tif"
    scene.parent.mkdir(parents=True)

    def plane(t: int, name: str) -> str:
        uuid = f'<UUID FileName="{name}">urn:uuid:{t}</UUID>'
        return f'<TiffData IFD="0" FirstT="{t}" PlaneCount="1">{uuid}</TiffData>'

    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:0">'
        '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16"'
        ' SizeX="8" SizeY="8" SizeZ="1" SizeC="1" SizeT="2">'
        '<Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
        f"{plane(0, scene.name)}{plane(1, '../../outside/secret.ome.tif')}"
        "</Pixels></Image></OME>"
    )
    tifffile.imwrite(
        scene,
        np.full((8, 8), 100, np.uint16),
        photometric="minisblack",
        description=xml,
        metadata=None,
        extratags=GEO_TAGS,
    )
    with tifffile.TiffFile(scene) as tif:  # the hazard: tifffile joins the name onto the folder
        assert tif.series[0].asarray().max() == SECRET
    netcdf(tmp_path / "source" / "honest.nc")
    why = reason_of(discover(tmp_path / "source"), scene.name)
    assert "a multi-file OME-TIFF whose OME-XML names '../../outside/secret.ome.tif'" in why


class _Payload:
    """Unpickling it creates a file: the proof that a codec ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _pickle_codec(store: Path, outside: Path) -> None:
    meta = json.loads((store / "red" / ".zarray").read_text())
    (store / "red" / ".zarray").write_text(json.dumps({**meta, "compressor": {"id": "pickle"}}))
    for chunk in (store / "red").glob("[0-9]*"):
        chunk.write_bytes(pickle.dumps(_Payload(outside / "pwned")))


def _pickle_codec_v3(store: Path, outside: Path) -> None:
    meta = json.loads((store / "red" / "zarr.json").read_text())
    codecs = [meta["codecs"][0], {"name": "numcodecs.pickle"}]
    (store / "red" / "zarr.json").write_text(json.dumps({**meta, "codecs": codecs}))


def _object_dtype(store: Path, outside: Path) -> None:
    meta = json.loads((store / "red" / ".zarray").read_text())
    (store / "red" / ".zarray").write_text(
        json.dumps({**meta, "dtype": "|O", "filters": [{"id": "vlen-utf8"}]})
    )


def _chunk_linked_outside(store: Path, outside: Path) -> None:
    meta = json.loads((store / "red" / ".zarray").read_text())
    (store / "red" / ".zarray").write_text(json.dumps({**meta, "compressor": None}))
    (store / "red" / "0.0.0").unlink()
    (store / "red" / "0.0.0").symlink_to(outside / "secret.bin")


def _consolidated_outside(store: Path, outside: Path) -> None:
    consolidated = json.loads((store / ".zmetadata").read_text())
    listed = consolidated["metadata"]
    listed["../outside/.zarray"] = listed["red/.zarray"]
    listed["../outside/.zattrs"] = listed["red/.zattrs"]
    (store / ".zmetadata").write_text(json.dumps(consolidated))


def _fifo_chunk(store: Path, outside: Path) -> None:
    (store / "red" / "0.0.0").unlink()
    os.mkfifo(store / "red" / "0.0.0")


@pytest.mark.parametrize(
    ("attack", "zarr_format", "expected"),
    [
        (_pickle_codec, 2, "'red' uses codec 'pickle', not one lstmpipe reads"),
        (_pickle_codec_v3, 3, "'red' uses codec 'numcodecs.pickle', not one lstmpipe reads"),
        (_object_dtype, 2, "'red' has data type '|O': only fixed-size numbers"),
        (_chunk_linked_outside, 2, "red/0.0.0: a symbolic link to"),
        (_consolidated_outside, 2, "consolidated metadata names '../outside/.zarray'"),
        (_fifo_chunk, 2, "red/0.0.0: neither a file nor a folder"),
    ],
)
def test_a_hostile_zarr_store_is_refused_unread(
    tmp_path: Path,
    secret: Path,
    attack: Callable[[Path, Path], None],
    zarr_format: int,
    expected: str,
) -> None:
    store = tmp_path / "source" / "site.zarr"
    cube = xr.Dataset(
        {"red": (("time", "y", "x"), np.arange(32, dtype=np.float32).reshape(2, 4, 4))},
        coords={"time": np.array(["2024-01-01", "2024-01-11"], dtype="datetime64[ns]")},
    )
    with warnings.catch_warnings():  # zarr 3: consolidated metadata is not in the spec yet
        warnings.simplefilter("ignore")
        cube.to_zarr(store, zarr_format=zarr_format, consolidated=attack is _consolidated_outside)
    attack(store, secret.parent)
    netcdf(tmp_path / "source" / "honest.nc")
    found = discover(tmp_path / "source")
    why = reason_of(found, "site.zarr")
    assert why.startswith("refused unread: ") and expected in why, why
    assert not (secret.parent / "pwned").exists()  # no payload ran
