"""The feature cache: Parquet files of many series each, and a SQLite index (SPEC §3.3).

Layout under the cache root:
    features/part-<uuid>.parquet   rows: series_id, content_hash, recipe_id, frame_index, t, feature
    index.sqlite                   entries(content_hash, recipe_id) -> file, series_id, n_frames
                                   recipes(recipe_id) -> JSON of the recipe
A write is atomic: the Parquet file is written, fsynced and renamed first, the
index rows are committed last, and readers only look through the index. A crash
leaves at most an unindexed file, never a half-visible entry. Two writers of the
same key both succeed; the first index row wins (INSERT OR IGNORE), so no key
is ever read twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections import defaultdict
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lib.atomic import write_parquet_atomic
from lib.recipe import FeatureRecipe

Key = tuple[str, str]  # (content_hash, recipe_id)


@dataclass(frozen=True)
class SeriesFeatures:
    """The features of one series under one recipe."""

    series_id: str
    content_hash: str
    features: np.ndarray  # (T, D) float32
    t: np.ndarray  # (T,) float64 seconds


def feature_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("series_id", pa.string()),
            ("content_hash", pa.string()),
            ("recipe_id", pa.string()),
            ("frame_index", pa.int32()),
            ("t", pa.float64()),
            ("feature", pa.list_(pa.float32(), dim)),
        ]
    )


class FeatureCache:
    """Many series per Parquet file; one index from (content hash, recipe) to file."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files = self.root / "features"
        self.files.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.sqlite"
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS entries (content_hash TEXT, recipe_id TEXT, series_id TEXT,"
                " file TEXT, n_frames INTEGER, written_at REAL, PRIMARY KEY (content_hash, recipe_id))"
            )
            db.execute("CREATE TABLE IF NOT EXISTS recipes (recipe_id TEXT PRIMARY KEY, recipe TEXT)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.index_path, timeout=60)

    def add_recipe(self, recipe: FeatureRecipe) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT OR IGNORE INTO recipes VALUES (?, ?)",
                       (recipe.recipe_id, json.dumps(recipe.to_dict(), sort_keys=True)))

    def recipe(self, recipe_id: str) -> FeatureRecipe | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT recipe FROM recipes WHERE recipe_id = ?", (recipe_id,)).fetchone()
        return FeatureRecipe.from_dict(json.loads(row[0])) if row else None

    def present(self, keys: list[Key]) -> set[Key]:
        """Which of `keys` are cached."""
        return set(self._locate(keys))

    def recipes_of(self, hashes: list[str]) -> dict[str, list[str]]:
        """The recipe ids each content hash is cached under (hashes cached under none are absent)."""
        found: dict[str, list[str]] = defaultdict(list)
        with closing(self._connect()) as db:
            db.execute("CREATE TEMP TABLE wanted_hashes (content_hash TEXT)")
            db.executemany("INSERT INTO wanted_hashes VALUES (?)", [(h,) for h in set(hashes)])
            rows = db.execute("SELECT e.content_hash, e.recipe_id FROM entries e"
                              " JOIN wanted_hashes w USING (content_hash) ORDER BY e.written_at").fetchall()
        for content_hash, recipe_id in rows:
            found[content_hash].append(recipe_id)
        return dict(found)

    def frame_counts(self, keys: list[Key]) -> dict[Key, int]:
        return {key: n for key, (_, n) in self._locate(keys).items()}

    def write(self, recipe_id: str, items: list[SeriesFeatures]) -> Path | None:
        """Commit many series in one new file; keys already present stay as they were."""
        items = list({item.content_hash: item for item in reversed(items)}.values())[::-1]  # one copy per key
        if not items:
            return None
        dim = items[0].features.shape[1]
        table = pa.Table.from_batches([_record_batch(recipe_id, item, dim) for item in items], feature_schema(dim))
        target = self.files / f"part-{uuid.uuid4().hex}.parquet"
        write_parquet_atomic(table, target, row_group_size=8192)
        now = time.time()
        with closing(self._connect()) as db, db:
            db.executemany(
                "INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                [(i.content_hash, recipe_id, i.series_id, target.name, len(i.features), now) for i in items],
            )
        return target

    def read(self, keys: list[Key]) -> dict[Key, SeriesFeatures]:
        """Features of the cached `keys` (missing keys are absent from the result)."""
        located = self._locate(keys)
        by_file: dict[str, list[Key]] = defaultdict(list)
        for key, (name, _) in located.items():
            by_file[name].append(key)
        found: dict[Key, SeriesFeatures] = {}
        for name, file_keys in by_file.items():
            found.update(_read_file(self.files / name, file_keys))
        return found

    def stats(self) -> dict[str, int]:
        with closing(self._connect()) as db:
            entries, frames = db.execute("SELECT COUNT(*), COALESCE(SUM(n_frames), 0) FROM entries").fetchone()
            recipes = db.execute("SELECT COUNT(*) FROM recipes").fetchone()[0]
        size = sum(p.stat().st_size for p in self.files.glob("part-*.parquet"))
        return {"series": entries, "frames": frames, "recipes": recipes, "bytes": size}

    def _locate(self, keys: list[Key]) -> dict[Key, tuple[str, int]]:
        if not keys:
            return {}
        with closing(self._connect()) as db:
            db.execute("CREATE TEMP TABLE wanted (content_hash TEXT, recipe_id TEXT)")
            db.executemany("INSERT INTO wanted VALUES (?, ?)", list(set(keys)))
            rows = db.execute(
                "SELECT e.content_hash, e.recipe_id, e.file, e.n_frames FROM entries e"
                " JOIN wanted w USING (content_hash, recipe_id)"
            ).fetchall()
        return {(h, r): (f, n) for h, r, f, n in rows}


def _record_batch(recipe_id: str, item: SeriesFeatures, dim: int) -> pa.RecordBatch:
    n = len(item.features)
    flat = pa.array(np.ascontiguousarray(item.features, dtype=np.float32).reshape(-1), pa.float32())
    return pa.RecordBatch.from_arrays(
        [
            pa.array([item.series_id] * n, pa.string()),
            pa.array([item.content_hash] * n, pa.string()),
            pa.array([recipe_id] * n, pa.string()),
            pa.array(np.arange(n, dtype=np.int32)),
            pa.array(np.asarray(item.t, dtype=np.float64)),
            pa.FixedSizeListArray.from_arrays(flat, dim),
        ],
        schema=feature_schema(dim),
    )


def _read_file(path: Path, keys: list[Key]) -> dict[Key, SeriesFeatures]:
    """Read the rows of `keys` from one file: one columnar read, no per-row Python objects."""
    hashes = sorted({h for h, _ in keys})
    table = pq.read_table(path, filters=[("content_hash", "in", hashes)])
    found: dict[Key, SeriesFeatures] = {}
    for content_hash, recipe_id in keys:
        rows = table.filter(pc.and_(pc.equal(table["content_hash"], content_hash),
                                    pc.equal(table["recipe_id"], recipe_id)))
        rows = rows.sort_by("frame_index")
        column = rows["feature"].combine_chunks()
        dim = column.type.list_size
        # A writable copy: torch warns on (and must not write through) read-only Arrow buffers.
        features = column.values.to_numpy(zero_copy_only=False).reshape(-1, dim).copy()
        found[(content_hash, recipe_id)] = SeriesFeatures(
            series_id=rows["series_id"][0].as_py(), content_hash=content_hash,
            features=features, t=rows["t"].to_numpy(),
        )
    return found
