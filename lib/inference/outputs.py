"""Per-domain outputs beside the predictions Parquet (issue 6): what clinicians and GIS users open.

- `<stem>.clinical.csv`: one row per medical series (DICOM, NIfTI) with its modality,
  description, UIDs and spacing, the predicted label and probabilities, and the model,
  version, recipe and time. Columns come from an allow-list, so nothing else in a header
  (a patient's name, birth date, ...) can reach the file. Text that a spreadsheet would run
  as a formula is written behind a `'` (`_cell`); rows end in CRLF.
- `<stem>.geojson`: an RFC 7946 FeatureCollection, one Feature per remote-sensing series
  (GeoTIFF stacks, and data cubes whose metadata has bounds and a CRS): the tile footprint
  reprojected to WGS 84 lon/lat, the prediction row as properties, with the dates the model saw
  and those dropped as too cloudy or nodata-heavy.

Nothing is written for a domain with no series. Both files are written atomically, as objects
of the predictions file's store (a folder, or a bucket prefix in team mode).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError

from lstmpipe.lib.config import SamplingConfig, SourcesConfig
from lstmpipe.lib.errors import BadInput
from lstmpipe.lib.series import SeriesRef
from lstmpipe.lib.sources.decode import describe
from lstmpipe.lib.state.store import Store

MEDICAL_KINDS = frozenset({"dicom", "nifti"})
GEO_KINDS = frozenset({"geotiff", "cube"})
EDGE_POINTS = 16  # points per footprint edge: a UTM tile's straight edge is curved in lon/lat
DEFAULT_SOURCES = SourcesConfig()
WGS84 = "EPSG:4326"  # RFC 7946 §4: coordinates are WGS 84 longitude, latitude

# The clinical CSV's columns before the per-class probabilities, and after them. An allow-list:
# a header field that is not named here never reaches the file.
_CLINICAL_HEAD = (
    "series_id",
    "source_kind",
    "modality",
    "description",
    "study_uid",
    "series_uid",
    "frames",
    "matrix",
    "spacing",
    "spacing_unit",
    "slice_thickness_mm",
    "time_step_s",
    "predicted_label",
    "probability",
)
_CLINICAL_TAIL = ("model_name", "model_version", "recipe_id", "run_id", "predicted_at")
# What makes a spreadsheet read a cell as a formula (OWASP: CSV injection).
_FORMULA_STARTS = frozenset({"=", "+", "-", "@", "\t", "\r"})


def describe_series(
    refs: Sequence[SeriesRef],
    sampling: SamplingConfig,
    tmp_dir: Path,
    sources: SourcesConfig = DEFAULT_SOURCES,
) -> dict[str, dict[str, Any]]:
    """series_id -> describe() metadata of the medical and remote-sensing series (video needs none).

    A series that cannot be described is left out (its row in the outputs then has blank fields
    or no geometry): the predictions are already written, and an output never fails the run.
    """
    found: dict[str, dict[str, Any]] = {}
    for ref in refs:
        if ref.kind not in MEDICAL_KINDS | GEO_KINDS:
            continue
        try:
            found[ref.series_id] = describe(ref, sampling, tmp_dir, sources=sources)
        except BadInput:
            # It was decoded moments ago for its prediction; failing now means the file changed.
            # The row still goes out, without metadata, rather than the whole file.
            continue
    return found


# --- clinical CSV ---------------------------------------------------------------------------------


def clinical_rows(
    table: pa.Table, metadata: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One row per DICOM or NIfTI series of the predictions table, in its order."""
    prob_columns = [c for c in table.column_names if c.startswith("prob_")]
    rows = []
    for pred in table.to_pylist():
        if pred["source_kind"] not in MEDICAL_KINDS:
            continue
        meta = metadata.get(pred["series_id"], {})
        spacing, unit = _spacing(meta)
        row = {
            "series_id": pred["series_id"],
            "source_kind": pred["source_kind"],
            "modality": meta.get("modality"),  # DICOM only: a NIfTI header has no modality
            "description": meta.get("description"),
            "study_uid": meta.get("study_uid"),
            "series_uid": meta.get("series_uid"),
            "frames": meta.get("frames"),
            "matrix": _matrix(meta),
            "spacing": spacing,
            "spacing_unit": unit,
            "slice_thickness_mm": meta.get("slice_thickness"),
            "time_step_s": meta.get("time_step_s"),
            "predicted_label": pred["predicted_label"],
            "probability": _round(pred["probability"]),
        }
        row |= {c: _round(pred[c]) for c in prob_columns}
        row |= {c: pred[c] for c in _CLINICAL_TAIL}
        row["predicted_at"] = _iso(row["predicted_at"])
        rows.append(row)
    return rows


def clinical_csv(table: pa.Table, metadata: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The CSV text, or None when the table has no medical series."""
    rows = clinical_rows(table, metadata)
    if not rows:
        return None
    columns = [
        *_CLINICAL_HEAD,
        *[c for c in table.column_names if c.startswith("prob_")],
        *_CLINICAL_TAIL,
    ]
    text = io.StringIO()
    # rows end in CRLF (RFC 4180): a value holding a bare CR is then quoted, where with "\n" Python
    # leaves it bare and a spreadsheet starts a new row there, with a cell the attacker chose
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return text.getvalue()


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as written: text whose first non-blank character would start
    a formula (=, +, -, @; tab and carriage return too: OWASP's CSV injection list) gets a leading
    `'`, so SeriesDescription `=HYPERLINK(...)` stays text and stays readable. Text from data is
    neutralised even when it looks numeric ("-3"); numbers this module computes (frames,
    probabilities, thickness, time step) are ints and floats and stay numbers. None is empty."""
    if value is None:
        return ""
    if isinstance(value, str) and value.lstrip(" ")[:1] in _FORMULA_STARTS:
        return "'" + value
    return value


def _spacing(meta: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """'row x col [x slice]' spacing and its unit:
    DICOM PixelSpacing is in mm, NIfTI says its own."""
    if meta.get("pixel_spacing"):
        return " x ".join(f"{v:g}" for v in meta["pixel_spacing"]), "mm"
    if meta.get("spacing"):
        return " x ".join(f"{v:g}" for v in meta["spacing"]), meta.get("spacing_unit")
    return None, None


# --- GeoJSON --------------------------------------------------------------------------------------


def footprint(
    bounds: Sequence[float], crs: str, edge_points: int = EDGE_POINTS
) -> list[list[float]]:
    """The closed ring [[lon, lat], ...] of `bounds` [left, bottom, right, top] in `crs`, in WGS 84.

    Each edge is densified with `edge_points` points before reprojection, so the polygon follows
    the tile's real (curved in lon/lat) edges. The ring is counter-clockwise (RFC 7946 §3.1.6).
    Raises CRSError/ProjError when the CRS is unknown or the points cannot be reprojected.
    Footprints crossing the antimeridian are not split (RFC 7946 §3.1.9); no tile here does.
    """
    left, bottom, right, top = (float(v) for v in bounds)
    # counter-clockwise
    corners = [(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)]
    xs: list[float] = []
    ys: list[float] = []
    for (x0, y0), (x1, y1) in itertools.pairwise(corners):
        for i in range(edge_points):
            xs.append(x0 + (x1 - x0) * i / edge_points)
            ys.append(y0 + (y1 - y0) * i / edge_points)
    # x, y -> lon, lat
    transformer = Transformer.from_crs(CRS.from_user_input(crs), WGS84, always_xy=True)
    lons, lats = transformer.transform(xs, ys, errcheck=True)
    # 7 decimals: ~1 cm
    ring = [[round(lon, 7), round(lat, 7)] for lon, lat in zip(lons, lats, strict=False)]
    if not all(math.isfinite(v) for point in ring for v in point):
        raise ProjError(f"bounds {list(bounds)} in {crs} do not reproject to finite lon/lat")
    return [*ring, ring[0]]


def feature_collection(
    table: pa.Table, metadata: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """The FeatureCollection of the remote-sensing series, or None when there is none.

    Every GeoTIFF series is a Feature; one whose footprint cannot be made (no geotransform, a
    CRS pyproj does not know) has geometry null (RFC 7946 §3.2) and says why in
    `footprint_error`. A cube is a Feature only when its metadata has bounds and a CRS.
    """
    features = []
    for pred in table.to_pylist():
        meta = metadata.get(pred["series_id"], {})
        kind = pred["source_kind"]
        if kind not in GEO_KINDS or (
            kind == "cube" and not (meta.get("bounds") and meta.get("crs"))
        ):
            continue
        properties = {
            k: _iso(_round(v) if k == "probability" or k.startswith("prob_") else v)
            for k, v in pred.items()
        }
        dates = meta.get("dates") or meta.get("times") or []
        properties |= {
            "crs": meta.get("crs"),
            "bounds": meta.get("bounds"),
            "dates": len(dates),
            "first_date": _at(dates, 0),
            "last_date": _at(dates, -1),
            # cloudy or nodata-heavy dates the model did not see
            # (sources.geotiff_max_masked_fraction)
            "dropped_dates": meta.get("dropped_dates", []),
        }
        geometry = None
        try:
            if not (meta.get("bounds") and meta.get("crs")):
                raise ValueError(
                    "no bounds and CRS in the series' metadata" if meta else "series not described"
                )
            ring = footprint(meta["bounds"], meta["crs"])
            geometry = {"type": "Polygon", "coordinates": [ring]}
        except (CRSError, ProjError, ValueError) as exc:
            properties["footprint_error"] = str(exc)
        feature: dict[str, Any] = {
            "type": "Feature",
            "id": pred["series_id"],
            "geometry": geometry,
            "properties": properties,
        }
        if geometry is not None:
            lons, lats = (
                [p[0] for p in geometry["coordinates"][0]],
                [p[1] for p in geometry["coordinates"][0]],
            )
            feature["bbox"] = [min(lons), min(lats), max(lons), max(lats)]
        features.append(feature)
    return {"type": "FeatureCollection", "features": features} if features else None


# --- files ----------------------------------------------------------------------------------------


def output_keys(predictions: str) -> dict[str, str]:
    """`x.parquet` -> x.clinical.csv and x.geojson beside it."""
    stem = predictions.removesuffix(".parquet")
    return {"clinical_csv": f"{stem}.clinical.csv", "geojson": f"{stem}.geojson"}


def write_outputs(
    table: pa.Table, metadata: Mapping[str, Mapping[str, Any]], store: Store, predictions: str
) -> dict[str, str]:
    """Write the outputs that have series beside the predictions object `predictions`;
    {"clinical_csv": uri, "geojson": uri} of those."""
    keys = output_keys(predictions)
    written: dict[str, str] = {}
    text = clinical_csv(table, metadata)
    if text is not None:
        written["clinical_csv"] = _put_text(store, keys["clinical_csv"], text)
    collection = feature_collection(table, metadata)
    if collection is not None:
        written["geojson"] = _put_text(
            store, keys["geojson"], json.dumps(collection, indent=1) + "\n"
        )
    return written


def _put_text(store: Store, key: str, text: str) -> str:
    store.put(key, lambda out: out.write(text.encode()))
    return store.uri(key)


def outputs_beside(
    store: Store,
    predictions: str,
    refs: Sequence[SeriesRef],
    sampling: SamplingConfig,
    tmp_dir: Path,
    sources: SourcesConfig = DEFAULT_SOURCES,
) -> dict[str, str]:
    """Read the predictions object, describe its medical and remote-sensing series, write the
    outputs they have beside it."""
    with store.open(predictions) as handle:
        table = pq.read_table(handle)
    Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    predicted = set(table["series_id"].to_pylist())
    metadata = describe_series(
        [r for r in refs if r.series_id in predicted], sampling, Path(tmp_dir), sources
    )
    return write_outputs(table, metadata, store, predictions)


def _at(values: Sequence[Any] | None, i: int) -> Any:
    return values[i] if values else None


def _matrix(meta: Mapping[str, Any]) -> str | None:
    """DICOM 'rows x cols'; NIfTI its data shape 'x x y x z x t'."""
    if meta.get("rows") and meta.get("cols"):
        return f"{meta['rows']} x {meta['cols']}"
    return " x ".join(str(n) for n in meta["shape"]) if meta.get("shape") else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value
