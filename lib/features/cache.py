"""The feature cache: Parquet files of many series each, and a SQLite index (SPEC §3.3).

Layout under the cache root:
    features/part-<uuid>.parquet   rows: series_id, content_hash, recipe_id, frame_index, t, feature
                                   feature is fixed_size_list<float32 or float16>[D]:
                                   whatever the writer held (anything else is stored as float32);
                                   reads return float32. One series' rows are contiguous and in
                                   frame order; a row group holds about ROW_GROUP_BYTES.
    index.sqlite                   entries(content_hash, recipe_id) -> series_id, file, n_frames,
                                       row_offset, written_at
                                   the series is rows [row_offset, row_offset + n_frames) of `file`
                                   (one row per frame, so n_frames is the row count); row_offset is
                                   NULL for entries indexed before the column existed
                                   (an index on file lists a file's entries for compaction)
                                   recipes(recipe_id) -> JSON of the recipe

Writes are atomic: the Parquet file is written, fsynced and renamed first, the index
rows are committed last, and readers only look through the index. A crash leaves at
most an unindexed file, never a half-visible entry. Two writers of the same key both
succeed; the first index row wins (INSERT OR IGNORE), so no key is ever read twice.

Reads look the keys up, then read from each file only the row groups that cover
the wanted rows, and gather them with one copy into float32 arrays. The rows found
are checked against the index (frame_index runs 0..n-1, the key is on the first and
last row); entries without a row_offset, and files whose rows do not match (rewritten
by another tool), are read by a content-hash filter over that file instead.

`compact()` merges small files: the new file is written atomically, every moved entry
is repointed in one SQLite transaction, then the old files, referenced by no entry
any more, are deleted. Files referenced by no entry and older than a grace period
(leftovers of crashes) are deleted under the index's write lock, which writers hold
while they check their file still exists and commit their entries. A reader whose
file disappears between lookup and open looks the keys up once more.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from lstmpipe.lib.atomic import write_parquet_atomic
from lstmpipe.lib.features.recipe import FeatureRecipe

Key = tuple[str, str]  # (content_hash, recipe_id)

# Uncompressed bytes per row group: reading one series decodes one or two groups (a few ms
# of zstd), while a bulk read still makes few, large reads. 2,000 rows at D=512 float32.
ROW_GROUP_BYTES = 4 << 20
# Rows per file that compact() aims for; one merged file is held in memory while it is
# written: 64 Ki rows is 128 MiB at D=512 float32.
COMPACT_TARGET_ROWS = 1 << 16
# An unindexed file younger than this may belong to a writer between its rename and its
# index commit: compaction leaves it alone. Far longer than any write takes.
ORPHAN_GRACE_S = 3600.0

# few distinct values per row group: decode as codes
_DICTIONARY_COLUMNS = ["content_hash", "recipe_id"]


@dataclass(frozen=True)
class SeriesFeatures:
    """The features of one series under one recipe."""

    series_id: str
    content_hash: str
    features: np.ndarray  # (T, D): float32 from read(); write() also keeps float16 as float16
    t: np.ndarray  # (T,) float64 seconds


@dataclass(frozen=True)
class StackedFeatures:
    """Many series in one tensor: series i is features[offsets[i] : offsets[i] + lengths[i]].

    Rows are grouped by the file they were read from, not in key order: that is what lets
    read_stacked fill each file's block with a single gather. Find a series by its offset.
    """

    keys: list[Key]  # the keys asked for, in order
    features: torch.Tensor  # (sum_T, D) float32, writable; (0, 0) when nothing was found
    offsets: np.ndarray  # (len(keys),) int64: first row of keys[i]; -1 when it is not cached
    lengths: np.ndarray  # (len(keys),) int64: frames of keys[i]; 0 when it is not cached
    missing: list[Key]  # the keys that are not cached, in key order

    def series(self, i: int) -> torch.Tensor:
        """(T_i, D) view of keys[i]'s frames."""
        if self.offsets[i] < 0:
            raise KeyError(f"StackedFeatures: {self.keys[i]} is not cached; check `missing` first")
        return self.features[self.offsets[i] : self.offsets[i] + self.lengths[i]]


def feature_schema(dim: int, dtype: pa.DataType = pa.float32()) -> pa.Schema:
    return pa.schema(
        [
            ("series_id", pa.string()),
            ("content_hash", pa.string()),
            ("recipe_id", pa.string()),
            ("frame_index", pa.int32()),
            ("t", pa.float64()),
            ("feature", pa.list_(dtype, dim)),
        ]
    )


class _Entry(NamedTuple):
    """Where one cached series lies."""

    series_id: str
    file: str
    n_frames: int
    row_offset: int | None  # None: indexed before offsets were recorded


class _Rows(NamedTuple):
    """Rows of some series of one file: table rows `pos`, series after series in `keys` order."""

    table: pa.Table
    pos: np.ndarray  # (R,) int64
    keys: list[Key]
    counts: np.ndarray  # (len(keys),) int64 rows of each


class FeatureCache:
    """Many series per Parquet file; one index from (content hash, recipe) to file and rows."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.files = self.root / "features"
        self.files.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.sqlite"
        # recipes never change under their id: safe to keep
        self._recipes: dict[str, FeatureRecipe] = {}
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            # checked first: opening a current index takes no write lock
            if not _schema_is_current(db):
                # two processes opening an old index: one adds the column
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS entries (content_hash TEXT, recipe_id TEXT,"
                    " series_id TEXT, file TEXT, n_frames INTEGER, written_at REAL,"
                    " row_offset INTEGER, PRIMARY KEY (content_hash, recipe_id))"
                )
                if "row_offset" not in _columns(db, "entries"):  # an index from before row offsets
                    db.execute("ALTER TABLE entries ADD COLUMN row_offset INTEGER")
                # compaction asks which entries a file holds, and which files are referenced at all
                db.execute("CREATE INDEX IF NOT EXISTS entries_by_file ON entries (file)")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS recipes (recipe_id TEXT PRIMARY KEY, recipe TEXT)"
                )
                db.commit()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.index_path, timeout=60)
        db.execute("PRAGMA temp_store=MEMORY")  # the key lists of lookups
        return db

    def add_recipe(self, recipe: FeatureRecipe) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR IGNORE INTO recipes VALUES (?, ?)",
                (recipe.recipe_id, json.dumps(recipe.to_dict(), sort_keys=True)),
            )

    def recipe(self, recipe_id: str) -> FeatureRecipe | None:
        if recipe_id not in self._recipes:
            with closing(self._connect()) as db:
                row = db.execute(
                    "SELECT recipe FROM recipes WHERE recipe_id = ?", (recipe_id,)
                ).fetchone()
            if row is None:
                return None  # not remembered: it may be added later
            self._recipes[recipe_id] = FeatureRecipe.from_dict(json.loads(row[0]))
        return self._recipes[recipe_id]

    def present(self, keys: list[Key]) -> set[Key]:
        """Which of `keys` are cached."""
        if not keys:
            return set()
        with closing(self._connect()) as db:
            _wanted(db, keys)
            rows = db.execute(
                "SELECT w.content_hash, w.recipe_id FROM wanted w CROSS JOIN entries e"
                " ON e.content_hash = w.content_hash AND e.recipe_id = w.recipe_id"
            ).fetchall()
        return set(rows)

    def recipes_of(self, hashes: list[str]) -> dict[str, list[str]]:
        """The recipe ids each content hash is cached under (a hash cached under none is absent)."""
        found: dict[str, list[str]] = defaultdict(list)
        with closing(self._connect()) as db:
            db.execute("CREATE TEMP TABLE wanted_hashes (content_hash TEXT)")
            db.executemany("INSERT INTO wanted_hashes VALUES (?)", [(h,) for h in set(hashes)])
            rows = db.execute(
                "SELECT e.content_hash, e.recipe_id FROM wanted_hashes w CROSS JOIN entries e"
                " ON e.content_hash = w.content_hash ORDER BY e.written_at"
            ).fetchall()
        for content_hash, recipe_id in rows:
            found[content_hash].append(recipe_id)
        return dict(found)

    def frame_counts(self, keys: list[Key]) -> dict[Key, int]:
        if not keys:
            return {}
        with closing(self._connect()) as db:
            _wanted(db, keys)
            rows = db.execute(
                "SELECT w.content_hash, w.recipe_id, e.n_frames FROM wanted w CROSS JOIN entries e"
                " ON e.content_hash = w.content_hash AND e.recipe_id = w.recipe_id"
            ).fetchall()
        return {(h, r): n for h, r, n in rows}

    def write(self, recipe_id: str, items: list[SeriesFeatures]) -> Path | None:
        """Commit many series in one new file; keys already present stay as they were.

        Returns the file, or None when nothing was new (the file is then removed again).

        Features are stored as float16 when every item is float16, else as float32.
        """
        # one copy per key
        items = list({item.content_hash: item for item in reversed(items)}.values())[::-1]
        if not items:
            return None
        table = _series_table(recipe_id, items)
        counts = np.array([len(i.features) for i in items], dtype=np.int64)
        offsets = np.cumsum(counts) - counts
        target = self.files / f"part-{uuid.uuid4().hex}.parquet"
        write_parquet_atomic(
            table, target, row_group_size=_row_group_rows(table.schema.field("feature").type)
        )
        now = time.time()
        try:
            with closing(self._connect()) as db:
                # against compaction's orphan sweep, which holds this lock
                db.execute("BEGIN IMMEDIATE")
                if not target.exists():
                    raise FileNotFoundError(
                        f"{target}: removed as an orphan before its index commit (this write "
                        f"stalled longer than the {ORPHAN_GRACE_S:.0f} s compaction grace); "
                        "nothing was indexed, write the series again"
                    )
                inserted = db.executemany(
                    "INSERT OR IGNORE INTO entries (content_hash, recipe_id, series_id, file,"
                    " n_frames, written_at, row_offset) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (i.content_hash, recipe_id, i.series_id, target.name, int(n), now, int(o))
                        for i, n, o in zip(items, counts, offsets, strict=False)
                    ],
                ).rowcount
                db.commit()
                # another writer indexed every one of them first: this file holds nothing used
                if inserted == 0:
                    target.unlink()
                    return None
        except sqlite3.OperationalError as exc:
            # a full disk, a lock held past the timeout: name the index
            raise sqlite3.OperationalError(
                f"{self.index_path}: {exc} while indexing {len(items)} series written to "
                f"{target.name}; none of them was indexed (compaction deletes the unindexed file), "
                "write them again"
            ) from exc
        return target

    def read(self, keys: list[Key]) -> dict[Key, SeriesFeatures]:
        """Features of the cached `keys` (missing keys are absent from the result).

        One gather per file into a float32 array; each series' features and t are views of it.
        """
        found: dict[Key, SeriesFeatures] = {}

        def take(path: Path, entries: dict[Key, _Entry]) -> None:
            rows = _file_rows(path, entries, with_t=True)
            features = np.empty((len(rows.pos), _dim(rows.table)), np.float32)
            _gather(rows.table["feature"], rows.pos, features)
            t = np.empty(len(rows.pos), np.float64)
            _gather(rows.table["t"], rows.pos, t)
            starts = np.cumsum(rows.counts) - rows.counts
            for key, start, n in zip(
                rows.keys, starts.tolist(), rows.counts.tolist(), strict=False
            ):
                found[key] = SeriesFeatures(
                    series_id=entries[key].series_id,
                    content_hash=key[0],
                    features=features[start : start + n],
                    t=t[start : start + n],
                )

        self._each_file(keys, take)
        return found

    def read_stacked(self, keys: list[Key]) -> StackedFeatures:
        """Features of `keys` in one (sum_T, D) float32 tensor, for loading a training set.

        Copies: the Parquet pages are decoded into Arrow buffers (the read itself), then each
        file's wanted rows are gathered straight into their block of the output with one
        vectorised `np.take`; no per-series copies, and the tensor owns its memory, so it is
        writable. float16 parts take one more pass: gathered as float16, then widened.
        A key asked for twice shares its rows. All keys found must have one feature dim.
        """
        keys = list(keys)
        slots: dict[Key, list[int]] = defaultdict(list)
        for i, key in enumerate(keys):
            slots[key].append(i)
        offsets = np.full(len(keys), -1, dtype=np.int64)
        lengths = np.zeros(len(keys), dtype=np.int64)
        out: np.ndarray | None = None
        cursor = 0
        total = 0

        def take(path: Path, entries: dict[Key, _Entry]) -> None:
            nonlocal out, cursor
            rows = _file_rows(path, entries, with_t=False)
            dim = _dim(rows.table)
            if out is None:
                out = np.empty((total, dim), np.float32)
            elif out.shape[1] != dim:
                raise ValueError(
                    f"read_stacked: {path.name} holds D={dim} features, earlier files "
                    f"D={out.shape[1]}; ask for keys of one recipe at a time"
                )
            _gather(rows.table["feature"], rows.pos, out[cursor : cursor + len(rows.pos)])
            starts = cursor + np.cumsum(rows.counts) - rows.counts
            for key, start, n in zip(
                rows.keys, starts.tolist(), rows.counts.tolist(), strict=False
            ):
                offsets[slots[key]] = start
                lengths[slots[key]] = n
            cursor += len(rows.pos)

        def size(located: dict[Key, _Entry]) -> None:
            nonlocal total
            total = sum(entry.n_frames for entry in located.values())

        self._each_file(keys, take, on_located=size)
        features = (
            torch.from_numpy(out) if out is not None else torch.empty((0, 0), dtype=torch.float32)
        )
        return StackedFeatures(
            keys=keys,
            features=features,
            offsets=offsets,
            lengths=lengths,
            missing=[key for key, start in zip(keys, offsets, strict=False) if start < 0],
        )

    def stats(self) -> dict[str, int]:
        with closing(self._connect()) as db:
            entries, frames = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(n_frames), 0) FROM entries"
            ).fetchone()
            recipes = db.execute("SELECT COUNT(*) FROM recipes").fetchone()[0]
        return {
            "series": entries,
            "frames": frames,
            "recipes": recipes,
            "bytes": sum(self._parts().values()),
        }

    def compact(
        self, target_rows: int = COMPACT_TARGET_ROWS, orphan_grace_s: float = ORPHAN_GRACE_S
    ) -> dict[str, int]:
        """Merge files of fewer than `target_rows` rows of entries into files of about that many.

        Files whose entries predate row offsets are rewritten whatever their size, so that
        they read by row ranges afterwards. Per merged group: write the new file atomically,
        repoint its entries in one transaction (only those still in the old file), then
        delete the old files no entry references. Finally files no entry references, older
        than `orphan_grace_s`, are deleted (crash leftovers; younger ones may be a writer's
        file whose entries are not committed yet). Any crash leaves every entry readable.
        """
        before = self._parts()
        with closing(self._connect()) as db:
            usage = db.execute(
                "SELECT file, SUM(n_frames), COUNT(*) - COUNT(row_offset) FROM entries"
                " GROUP BY file"
            ).fetchall()
        by_type: dict[pa.DataType, list[tuple[str, int, bool]]] = defaultdict(list)
        for name, rows, unranged in usage:
            if name in before and (rows < target_rows or unranged):
                try:
                    feature = pq.read_schema(self.files / name).field("feature").type
                except FileNotFoundError:  # merged by a concurrent compaction meanwhile
                    continue
                by_type[feature].append((name, rows, bool(unranged)))
        moved = written = 0
        for group in (g for files in by_type.values() for g in _pack(files, target_rows)):
            count = self._merge(group)
            moved, written = moved + count, written + (count > 0)
        with closing(self._connect()) as db:
            referenced = {name for (name,) in db.execute("SELECT DISTINCT file FROM entries")}
        candidates = {name for files in by_type.values() for name, _, _ in files}
        merged_away = [name for name in before if name in candidates and name not in referenced]
        for name in merged_away:
            _unlink(self.files / name)
        orphans = self._sweep_orphans(orphan_grace_s)
        after = self._parts()
        return {
            "files_before": len(before),
            "files_after": len(after),
            "files_written": written,
            "files_merged_away": len(merged_away),
            "orphans_deleted": orphans,
            "series_moved": moved,
            "bytes_before": sum(before.values()),
            "bytes_after": sum(after.values()),
        }

    def _merge(self, names: list[str]) -> int:
        """Rewrite the entries of `names` into one new file; how many entries now point at it."""
        with closing(self._connect()) as db:
            db.execute("CREATE TEMP TABLE merging (file TEXT PRIMARY KEY)")
            db.executemany("INSERT INTO merging VALUES (?)", [(n,) for n in names])
            rows = db.execute(
                "SELECT e.content_hash, e.recipe_id, e.series_id, e.file, e.n_frames, e.row_offset"
                " FROM merging m CROSS JOIN entries e ON e.file = m.file"
            ).fetchall()
        by_file: dict[str, dict[Key, _Entry]] = defaultdict(dict)
        for h, r, sid, name, n, offset in rows:
            by_file[name][(h, r)] = _Entry(sid, name, n, offset)
        if not by_file:
            return 0
        parts: list[tuple[str, _Rows]] = []
        try:
            for name in sorted(by_file):
                parts.append((name, _file_rows(self.files / name, by_file[name], with_t=True)))
        except FileNotFoundError:  # a concurrent compaction merged these first
            return 0
        value_type = parts[0][1].table.schema.field("feature").type.value_type
        total = sum(len(rows.pos) for _, rows in parts)
        features = np.empty((total, _dim(parts[0][1].table)), value_type.to_pandas_dtype())
        t = np.empty(total, np.float64)
        keys: list[Key] = []
        sources: list[str] = []
        cursor = 0
        for name, rows in parts:
            _gather(rows.table["feature"], rows.pos, features[cursor : cursor + len(rows.pos)])
            _gather(rows.table["t"], rows.pos, t[cursor : cursor + len(rows.pos)])
            keys += rows.keys
            sources += [name] * len(rows.keys)
            cursor += len(rows.pos)
        counts = np.concatenate([rows.counts for _, rows in parts])
        series_ids = [
            by_file[name][key].series_id for name, key in zip(sources, keys, strict=False)
        ]
        table = _table(series_ids, keys, counts, features, t)
        target = self.files / f"part-{uuid.uuid4().hex}.parquet"
        write_parquet_atomic(
            table, target, row_group_size=_row_group_rows(table.schema.field("feature").type)
        )
        offsets = np.cumsum(counts) - counts
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            moved = db.executemany(
                "UPDATE entries SET file = ?, row_offset = ?"
                " WHERE content_hash = ? AND recipe_id = ? AND file = ?",
                [
                    (target.name, int(o), h, r, old)
                    for (h, r), o, old in zip(keys, offsets.tolist(), sources, strict=False)
                ],
            ).rowcount
            db.commit()
        return moved

    def _sweep_orphans(self, grace_s: float) -> int:
        """Delete files no entry references that are older than `grace_s`; how many were deleted.

        Holds the index's write lock while it decides, so a writer cannot commit entries of
        a file between this sweep's look at the index and its unlink (write() checks that
        its file still exists under the same lock).
        """
        deadline = time.time() - grace_s
        deleted = 0
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            referenced = {name for (name,) in db.execute("SELECT DISTINCT file FROM entries")}
            with os.scandir(self.files) as listing:
                for item in listing:
                    leftover = item.name.startswith(".tmp-") or (
                        item.name.startswith("part-") and item.name.endswith(".parquet")
                    )
                    if leftover and item.name not in referenced and _mtime(item) < deadline:
                        deleted += _unlink(Path(item.path))
            db.rollback()  # nothing was written; the lock is released
        return deleted

    def _parts(self) -> dict[str, int]:
        """Part file name -> bytes (one scandir; sizes from the directory walk's stat)."""
        sizes: dict[str, int] = {}
        with os.scandir(self.files) as listing:
            for item in listing:
                if item.name.startswith("part-") and item.name.endswith(".parquet"):
                    with suppress(FileNotFoundError):  # deleted by compaction while listing
                        sizes[item.name] = item.stat().st_size
        return sizes

    def _locate(self, keys: Iterable[Key]) -> dict[Key, _Entry]:
        keys = list(keys)
        if not keys:
            return {}
        with closing(self._connect()) as db:
            _wanted(db, keys)
            rows = db.execute(
                "SELECT e.content_hash, e.recipe_id, e.series_id, e.file, e.n_frames, e.row_offset"
                " FROM wanted w CROSS JOIN entries e"
                " ON e.content_hash = w.content_hash AND e.recipe_id = w.recipe_id"
            ).fetchall()
        return {(h, r): _Entry(sid, name, n, offset) for h, r, sid, name, n, offset in rows}

    def _each_file(
        self,
        keys: list[Key],
        take: Callable[[Path, dict[Key, _Entry]], None],
        on_located: Callable[[dict[Key, _Entry]], None] | None = None,
    ) -> None:
        """Locate `keys` and call `take(path, entries)` per file; keys whose file was deleted
        between lookup and open (compaction moved them) are located once more."""
        located = self._locate(keys)
        if on_located is not None:
            on_located(located)
        for attempt in (1, 2):
            by_file: dict[str, dict[Key, _Entry]] = defaultdict(dict)
            for key, entry in located.items():
                by_file[entry.file][key] = entry
            gone: list[Key] = []
            for name, entries in by_file.items():
                try:
                    take(self.files / name, entries)
                except FileNotFoundError as error:
                    if attempt == 2:
                        raise FileNotFoundError(
                            f"{self.files / name}: the index points at a missing file even "
                            f"after a second lookup; its {len(entries)} series cannot be read "
                            f"(delete their entries from {self.index_path} and extract them again)"
                        ) from error
                    gone += entries
            if not gone:
                return
            located = self._locate(gone)


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def _schema_is_current(db: sqlite3.Connection) -> bool:
    names = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    return {"entries", "recipes", "entries_by_file"} <= names and "row_offset" in _columns(
        db, "entries"
    )


def _wanted(db: sqlite3.Connection, keys: list[Key]) -> None:
    """A temp table of `keys` to join against: one executemany, no per-key query."""
    db.execute("CREATE TEMP TABLE wanted (content_hash TEXT, recipe_id TEXT)")
    db.executemany("INSERT INTO wanted VALUES (?, ?)", set(keys))


def _row_group_rows(feature: pa.DataType) -> int:
    """Rows per row group so that one holds about ROW_GROUP_BYTES uncompressed."""
    # + t, frame_index, string codes
    row_bytes = feature.list_size * feature.value_type.byte_width + 8 + 4 + 12
    return int(np.clip(ROW_GROUP_BYTES // row_bytes, 1024, 1 << 20))


def _series_table(recipe_id: str, items: list[SeriesFeatures]) -> pa.Table:
    dims = {item.features.shape[1:] for item in items}
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        shapes = {item.series_id: item.features.shape for item in items[:5]}
        raise ValueError(
            f"FeatureCache.write: every series needs (T, D) features with one D; got "
            f"{sorted(dims)} among {len(items)} series, e.g. {shapes}"
        )
    for item in items:
        if len(item.t) != len(item.features):
            raise ValueError(
                f"FeatureCache.write: {item.series_id} has {len(item.features)} feature rows but "
                f"{len(item.t)} times; they must match"
            )
    dtype = np.float16 if all(item.features.dtype == np.float16 for item in items) else np.float32
    features = np.concatenate([np.asarray(item.features, dtype=dtype) for item in items])
    t = np.concatenate([np.asarray(item.t, dtype=np.float64) for item in items])
    counts = np.array([len(item.features) for item in items], dtype=np.int64)
    return _table(
        [item.series_id for item in items],
        [(item.content_hash, recipe_id) for item in items],
        counts,
        features,
        t,
    )


def _table(
    series_ids: list[str], keys: list[Key], counts: np.ndarray, features: np.ndarray, t: np.ndarray
) -> pa.Table:
    """The part-file table of series laid end to end: series i is `counts[i]` rows."""
    which = pa.array(np.repeat(np.arange(len(keys)), counts))
    starts = np.cumsum(counts) - counts
    frame_index = (np.arange(len(features)) - np.repeat(starts, counts)).astype(np.int32)
    dtype = pa.from_numpy_dtype(features.dtype)
    return pa.table(
        [
            pa.array(series_ids, pa.string()).take(which),
            pa.array([h for h, _ in keys], pa.string()).take(which),
            pa.array([r for _, r in keys], pa.string()).take(which),
            pa.array(frame_index),
            pa.array(t),
            pa.FixedSizeListArray.from_arrays(
                pa.array(features.reshape(-1), dtype), features.shape[1]
            ),
        ],
        schema=feature_schema(features.shape[1], dtype),
    )


def _file_rows(path: Path, entries: dict[Key, _Entry], with_t: bool) -> _Rows:
    """Read the rows of `entries` from one file: the covering row groups when every entry has a
    row offset and the rows there match, else a content-hash filter over the file."""
    columns = ["content_hash", "recipe_id", "frame_index"] + (["t"] if with_t else []) + ["feature"]
    with pq.ParquetFile(path, read_dictionary=_DICTIONARY_COLUMNS) as handle:
        offsets = {k: e.row_offset for k, e in entries.items() if e.row_offset is not None}
        if len(offsets) == len(entries):
            rows = _ranged_rows(handle, entries, offsets, columns)
            if rows is not None:
                return rows
    return _filtered_rows(path, entries, columns)


def _ranged_rows(
    handle: pq.ParquetFile,
    entries: dict[Key, _Entry],
    offsets: dict[Key, int],
    columns: list[str],
) -> _Rows | None:
    """The row groups covering each entry's [offset, offset + n_frames); None if the rows there are
    not the entries'. `offsets`: every entry's row_offset."""
    order = sorted(entries, key=lambda key: offsets[key])
    offset = np.array([offsets[key] for key in order], dtype=np.int64)
    counts = np.array([entries[key].n_frames for key in order], dtype=np.int64)
    meta = handle.metadata
    group_rows = np.array(
        [meta.row_group(g).num_rows for g in range(meta.num_row_groups)], dtype=np.int64
    )
    group_start = np.concatenate([[0], np.cumsum(group_rows)])
    if (offset + counts > group_start[-1]).any():
        return None
    first = np.cumsum(counts) - counts  # each series' first row in the result
    within = np.arange(counts.sum()) - np.repeat(first, counts)  # frame number of each result row
    rows = np.repeat(offset, counts) + within  # row numbers in the file, series after series
    groups = np.searchsorted(group_start, rows, side="right") - 1
    needed = np.unique(groups)
    table = handle.read_row_groups(needed.tolist(), columns=columns)
    # where each group read begins in `table`
    read_start = np.zeros(len(group_rows), dtype=np.int64)
    read_start[needed] = np.cumsum(group_rows[needed]) - group_rows[needed]
    pos = rows - group_start[groups] + read_start[groups]
    # The index is trusted for where rows are, and checked: a rewritten file goes to the filter.
    if not np.array_equal(table["frame_index"].to_numpy()[pos], within):
        return None
    nonempty = counts > 0
    ends = np.concatenate([pos[first[nonempty]], pos[(first + counts - 1)[nonempty]]])
    for column, part in (("content_hash", 0), ("recipe_id", 1)):
        want = [key[part] for key, n in zip(order, counts, strict=False) if n > 0]
        if table[column].take(pa.array(ends)).cast(pa.string()).to_pylist() != want + want:
            return None
    return _Rows(table, pos, order, counts)


def _filtered_rows(path: Path, entries: dict[Key, _Entry], columns: list[str]) -> _Rows:
    """Every row of the file's wanted content hashes, sorted into series and frame order."""
    hashes = sorted({h for h, _ in entries})
    table = pq.read_table(
        path,
        columns=columns,
        filters=[("content_hash", "in", hashes)],
        read_dictionary=_DICTIONARY_COLUMNS,
    ).combine_chunks()
    order = list(entries)
    wanted = pa.table(
        {
            "content_hash": [h for h, _ in order],
            "recipe_id": [r for _, r in order],
            "series": np.arange(len(order)),
        }
    )
    found = pa.table(
        {
            "content_hash": table["content_hash"].cast(pa.string()),
            "recipe_id": table["recipe_id"].cast(pa.string()),
            "frame_index": table["frame_index"],
            "row": np.arange(table.num_rows),
        }
    )
    joined = found.join(wanted, keys=["content_hash", "recipe_id"], join_type="inner")
    joined = joined.sort_by([("series", "ascending"), ("frame_index", "ascending")])
    counts = np.bincount(joined["series"].to_numpy(), minlength=len(order)).astype(np.int64)
    expected = np.array([entries[key].n_frames for key in order], dtype=np.int64)
    if not np.array_equal(counts, expected):
        bad = [key for key, n, m in zip(order, counts, expected, strict=False) if n != m]
        raise ValueError(
            f"{path}: the index says {bad[:3]} have {expected[counts != expected][:3].tolist()} "
            f"frames but the file holds {counts[counts != expected][:3].tolist()}; the file was "
            f"changed outside lstmpipe: delete these entries from the index and extract again"
        )
    return _Rows(table, joined["row"].to_numpy().astype(np.int64), order, counts)


def _gather(column: pa.ChunkedArray, pos: np.ndarray, out: np.ndarray) -> None:
    """out[i] = column[pos[i]], one vectorised copy out of the Arrow buffers.

    Several chunks need `pos` ascending (row-group reads are): each chunk then fills one
    contiguous slice of `out`. A filtered read is one chunk, in any order.
    """
    start = 0
    for chunk in column.chunks:
        lo, hi = (
            (0, len(pos))
            if column.num_chunks == 1
            else np.searchsorted(pos, [start, start + len(chunk)])
        )
        if hi > lo:
            values = chunk.flatten() if pa.types.is_fixed_size_list(chunk.type) else chunk
            source = values.to_numpy(zero_copy_only=False)  # zero-copy: floats without nulls
            if out.ndim == 2:
                source = source.reshape(len(chunk), out.shape[1])
            if source.dtype == out.dtype:
                # clip: no buffering
                np.take(source, pos[lo:hi] - start, axis=0, out=out[lo:hi], mode="clip")
            else:
                out[lo:hi] = source[pos[lo:hi] - start]  # float16 -> float32
        start += len(chunk)


def _dim(table: pa.Table) -> int:
    return table.schema.field("feature").type.list_size


def _pack(files: list[tuple[str, int, bool]], target_rows: int) -> Iterable[list[str]]:
    """Greedy groups of about `target_rows` rows; a lone file is rewritten only to gain offsets."""
    group: list[tuple[str, int, bool]] = []
    rows = 0
    for item in sorted(files, key=lambda f: f[1]):
        if group and rows + item[1] > target_rows:
            if len(group) > 1 or group[0][2]:
                yield [name for name, _, _ in group]
            group, rows = [], 0
        group.append(item)
        rows += item[1]
    if group and (len(group) > 1 or group[0][2]):
        yield [name for name, _, _ in group]


def _mtime(item: os.DirEntry) -> float:
    try:
        return item.stat().st_mtime
    except FileNotFoundError:
        return float("inf")  # gone already: nothing to delete


def _unlink(path: Path) -> int:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return 0
    return 1
