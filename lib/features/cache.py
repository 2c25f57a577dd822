"""The feature cache: Parquet part files of many series each, and an index (SPEC §3.3).

Where it lives (lib/state/places.py): locally `home/cache/features/part-<uuid>.parquet`
and the SQLite index `home/cache/index.sqlite`, as always; in team mode the parts are
objects under the bucket's `cache/features/` and the index is two tables of the team's
PostgreSQL. One code path: parts go through a `Store`, the index through a `Database`.

    features/part-<uuid>.parquet   rows: series_id, content_hash, recipe_id, frame_index, t, feature
                                   feature is fixed_size_list<float32 or float16>[D]:
                                   whatever the writer held (anything else is stored as float32);
                                   reads return float32. One series' rows are contiguous and in
                                   frame order; a row group holds about ROW_GROUP_BYTES.
    entries                        (content_hash, recipe_id) -> series_id, file, n_frames,
                                       row_offset, written_at
                                   the series is rows [row_offset, row_offset + n_frames) of part
                                   `file` (one row per frame, so n_frames is the row count);
                                   row_offset is NULL for entries indexed before the column
                                   existed (an index on file lists a file's entries for compaction)
    recipes                        recipe_id -> JSON of the recipe

Writes are atomic: the part is stored whole first (a folder: temp file, fsync, rename;
S3: one PUT), the index rows are committed last, and readers only look through the
index. A crash or a killed writer leaves at most an unindexed part, never a
half-visible entry. Two writers of the same key, on any hosts, both succeed; the first
index row wins (insert-or-ignore), so no key is ever read twice, and a writer whose
every key was taken deletes its part.

Reads look the keys up, then read from each part only the row groups that cover the
wanted rows (on S3: ranged GETs), and gather them with one copy into float32 arrays.
The rows found are checked against the index (frame_index runs 0..n-1, the key is on
the first and last row); entries without a row_offset, and parts whose rows do not
match (rewritten by another tool), are read by a content-hash filter over that part.

`compact()` merges small parts: the new part is stored, every moved entry is repointed
in one transaction, then the old parts, referenced by no entry any more, are deleted.
Parts referenced by no entry and older than a grace period (by the store's modification
time: leftovers of crashes) are deleted by a sweep that holds the index's write lock
(SQLite) or the "cache-index" transaction lock (PostgreSQL), which every writer (and
compaction, repointing entries) also holds while it checks its part still exists and
commits its entries; so a sweep never deletes a part whose entries commit. A reader
whose part disappears between lookup and open looks the keys up once more.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from lstmpipe.lib.features.recipe import FeatureRecipe
from lstmpipe.lib.state.database import Database
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.state.schema import Component, migrate
from lstmpipe.lib.state.store import LocalStore, Store

if TYPE_CHECKING:  # torch loads in seconds: only training's stacked reads need it
    import torch

Key = tuple[str, str]  # (content_hash, recipe_id)

# Uncompressed bytes per row group: reading one series decodes one or two groups (a few ms
# of zstd), while a bulk read still makes few, large reads. 2,000 rows at D=512 float32.
ROW_GROUP_BYTES = 4 << 20
# Rows per file that compact() aims for; one merged file is held in memory while it is
# written: 64 Ki rows is 128 MiB at D=512 float32.
COMPACT_TARGET_ROWS = 1 << 16
# An unindexed part younger than this may belong to a writer between its put and its
# index commit: compaction leaves it alone. Far longer than any write takes.
ORPHAN_GRACE_S = 3600.0
# parts are keys under this prefix of the cache's store; the index names them without it
PARTS = "features/"
# the PostgreSQL transaction lock that serialises writers' commits with the orphan sweep
INDEX_LOCK = "cache-index"

# few distinct values per row group: decode as codes
_DICTIONARY_COLUMNS = ["content_hash", "recipe_id"]

_META = sa.MetaData()
# The tables as the first SQLite index had them (same names, columns and key), so an
# existing home/cache/index.sqlite is used as it is.
entries = sa.Table(
    "entries",
    _META,
    sa.Column("content_hash", sa.Text, primary_key=True),
    sa.Column("recipe_id", sa.Text, primary_key=True),
    sa.Column("series_id", sa.Text),
    sa.Column("file", sa.Text),
    sa.Column("n_frames", sa.Integer),
    sa.Column("written_at", sa.Double),
    sa.Column("row_offset", sa.Integer),
)
# compaction asks which entries a part holds, and which parts are referenced at all
_BY_FILE = sa.Index("entries_by_file", entries.c.file)
recipes = sa.Table(
    "recipes",
    _META,
    sa.Column("recipe_id", sa.Text, primary_key=True),
    sa.Column("recipe", sa.Text),
)


def _add_row_offsets(conn: Connection) -> None:
    """Version 0 -> 1: an index from before row offsets gains the column (its entries keep
    NULL and are read by filter until compaction rewrites them) and the index on file."""
    if "row_offset" not in {c["name"] for c in sa.inspect(conn).get_columns("entries")}:
        conn.execute(sa.text("ALTER TABLE entries ADD COLUMN row_offset INTEGER"))
    _BY_FILE.create(conn, checkfirst=True)


COMPONENT = Component("feature_cache", _META, version=1, steps={0: _add_row_offsets})


class CacheIndexError(OSError):
    """The index refused a write (a full disk, a lock held past the timeout): nothing of it was
    committed. An OSError, so the task that wrote is retried."""


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


_ENTRY_COLUMNS = "e.content_hash, e.recipe_id, e.series_id, e.file, e.n_frames, e.row_offset"
_Source = Path | IO[bytes]  # a local part's path (Arrow reads it natively) or an open object


class FeatureCache:
    """Many series per Parquet part; one index from (content hash, recipe) to part and rows."""

    def __init__(self, store: Store, db: Database) -> None:
        self.store = store
        self.db = db
        # recipes never change under their id: safe to keep
        self._recipes: dict[str, FeatureRecipe] = {}
        migrate(db, COMPONENT)  # cheap (one read) when the index is current

    @classmethod
    def at(cls, state: StatePlaces) -> FeatureCache:
        """The cache of this deployment: home/cache locally, the team's bucket and database."""
        return cls(state.cache_store(), state.cache_database())

    @classmethod
    def local(cls, root: Path) -> FeatureCache:
        """A cache in one folder: `root/features/part-*.parquet` and `root/index.sqlite`."""
        return cls(LocalStore(Path(root)), Database.sqlite(Path(root) / "index.sqlite"))

    def add_recipe(self, recipe: FeatureRecipe) -> None:
        row = {
            "recipe_id": recipe.recipe_id,
            "recipe": json.dumps(recipe.to_dict(), sort_keys=True),
        }
        self.db.write(lambda conn: self.db.insert_ignore(recipes, [row], conn))

    def recipe(self, recipe_id: str) -> FeatureRecipe | None:
        if recipe_id not in self._recipes:
            found = self.db.read(
                lambda conn: conn.execute(
                    sa.select(recipes.c.recipe).where(recipes.c.recipe_id == recipe_id)
                ).scalar()
            )
            if found is None:
                return None  # not remembered: it may be added later
            self._recipes[recipe_id] = FeatureRecipe.from_dict(json.loads(found))
        return self._recipes[recipe_id]

    def present(self, keys: list[Key]) -> set[Key]:
        """Which of `keys` are cached."""
        rows = self._entries_of(keys, "e.content_hash, e.recipe_id")
        return {(h, r) for h, r in rows}

    def recipes_of(self, hashes: list[str]) -> dict[str, list[str]]:
        """The recipe ids each content hash is cached under (a hash cached under none is absent)."""
        found: dict[str, list[str]] = defaultdict(list)
        rows = self.db.read(
            lambda conn: _joined(
                conn,
                self.db.is_postgres,
                ("content_hash",),
                [(h,) for h in set(hashes)],
                "e.content_hash, e.recipe_id",
                " ORDER BY e.written_at",
            )
        )
        for content_hash, recipe_id in rows:
            found[content_hash].append(recipe_id)
        return dict(found)

    def frame_counts(self, keys: list[Key]) -> dict[Key, int]:
        rows = self._entries_of(keys, "e.content_hash, e.recipe_id, e.n_frames")
        return {(h, r): n for h, r, n in rows}

    def write(self, recipe_id: str, items: list[SeriesFeatures]) -> str | None:
        """Commit many series in one new part; keys already present stay as they were.

        Returns the part's key in the store, or None when nothing was new (the part is then
        deleted again). Features are stored as float16 when every item is float16, else as
        float32.
        """
        # one copy per key
        items = list({item.content_hash: item for item in reversed(items)}.values())[::-1]
        if not items:
            return None
        table = _series_table(recipe_id, items)
        counts = np.array([len(i.features) for i in items], dtype=np.int64)
        offsets = np.cumsum(counts) - counts
        name = f"part-{uuid.uuid4().hex}.parquet"
        self._put(name, table)
        now = time.time()
        rows = [
            {
                "content_hash": i.content_hash,
                "recipe_id": recipe_id,
                "series_id": i.series_id,
                "file": name,
                "n_frames": int(n),
                "written_at": now,
                "row_offset": int(o),
            }
            for i, n, o in zip(items, counts, offsets, strict=True)
        ]

        def commit(conn: Connection) -> int:
            # under the lock compaction's orphan sweep holds: the part is there, and stays
            if self.store.info(PARTS + name) is None:
                raise FileNotFoundError(
                    f"{self.store.uri(PARTS + name)}: removed as an orphan before its index "
                    f"commit (this write stalled longer than the {ORPHAN_GRACE_S:.0f} s "
                    "compaction grace); nothing was indexed, write the series again"
                )
            self.db.insert_ignore(entries, rows, conn)
            # counted, not taken from the insert: a commit retried after its answer was lost
            # finds its own rows, and must keep its part
            return conn.execute(
                sa.select(sa.func.count()).select_from(entries).where(entries.c.file == name)
            ).scalar_one()

        try:
            kept = self.db.write(commit, lock=INDEX_LOCK)
        except DBAPIError as exc:
            first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
            raise CacheIndexError(
                f"{self.db.where}: {first} while indexing {len(items)} series written to "
                f"{self.store.uri(PARTS + name)}; none of them was indexed (compaction deletes "
                "the unindexed part), write them again"
            ) from exc
        if kept == 0:  # other writers indexed every one of them first: nothing here is used
            self.store.delete(PARTS + name)
            return None
        return PARTS + name

    def read(self, keys: list[Key]) -> dict[Key, SeriesFeatures]:
        """Features of the cached `keys` (missing keys are absent from the result).

        One gather per file into a float32 array; each series' features and t are views of it.
        """
        found: dict[Key, SeriesFeatures] = {}

        def take(source: _Source, entries: dict[Key, _Entry]) -> None:
            rows = _file_rows(source, entries, with_t=True)
            features = np.empty((len(rows.pos), _dim(rows.table)), np.float32)
            _gather(rows.table["feature"], rows.pos, features)
            t = np.empty(len(rows.pos), np.float64)
            _gather(rows.table["t"], rows.pos, t)
            starts = np.cumsum(rows.counts) - rows.counts
            for key, start, n in zip(rows.keys, starts.tolist(), rows.counts.tolist(), strict=True):
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

        def take(source: _Source, entries: dict[Key, _Entry]) -> None:
            nonlocal out, cursor
            rows = _file_rows(source, entries, with_t=False)
            dim = _dim(rows.table)
            if out is None:
                out = np.empty((total, dim), np.float32)
            elif out.shape[1] != dim:
                name = next(iter(entries.values())).file
                raise ValueError(
                    f"read_stacked: {name} holds D={dim} features, earlier files "
                    f"D={out.shape[1]}; ask for keys of one recipe at a time"
                )
            _gather(rows.table["feature"], rows.pos, out[cursor : cursor + len(rows.pos)])
            starts = cursor + np.cumsum(rows.counts) - rows.counts
            for key, start, n in zip(rows.keys, starts.tolist(), rows.counts.tolist(), strict=True):
                offsets[slots[key]] = start
                lengths[slots[key]] = n
            cursor += len(rows.pos)

        def size(located: dict[Key, _Entry]) -> None:
            nonlocal total
            total = sum(entry.n_frames for entry in located.values())

        self._each_file(keys, take, on_located=size)
        import torch

        features = (
            torch.from_numpy(out) if out is not None else torch.empty((0, 0), dtype=torch.float32)
        )
        return StackedFeatures(
            keys=keys,
            features=features,
            offsets=offsets,
            lengths=lengths,
            missing=[key for key, start in zip(keys, offsets, strict=True) if start < 0],
        )

    def stats(self) -> dict[str, int]:
        def count(conn: Connection) -> tuple[int, int, int]:
            series, frames = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(entries.c.n_frames), 0))
            ).one()
            known = conn.execute(sa.select(sa.func.count()).select_from(recipes)).scalar_one()
            return int(series), int(frames), int(known)

        series, frames, known = self.db.read(count)
        return {
            "series": series,
            "frames": frames,
            "recipes": known,
            "bytes": sum(self._parts().values()),
        }

    def compact(
        self, target_rows: int = COMPACT_TARGET_ROWS, orphan_grace_s: float = ORPHAN_GRACE_S
    ) -> dict[str, int]:
        """Merge parts of fewer than `target_rows` rows of entries into parts of about that many.

        Parts whose entries predate row offsets are rewritten whatever their size, so that
        they read by row ranges afterwards. Per merged group: store the new part, repoint its
        entries in one transaction (only those still in the old part), then delete the old
        parts no entry references. Finally parts no entry references, older than
        `orphan_grace_s`, are deleted (crash leftovers; younger ones may be a writer's part
        whose entries are not committed yet). Any crash leaves every entry readable.
        """
        before = self._parts()
        usage = self.db.read(
            lambda conn: conn.execute(
                sa.select(
                    entries.c.file,
                    sa.func.sum(entries.c.n_frames),
                    sa.func.count() - sa.func.count(entries.c.row_offset),
                ).group_by(entries.c.file)
            ).all()
        )
        by_type: dict[pa.DataType, list[tuple[str, int, bool]]] = defaultdict(list)
        for name, rows, unranged in usage:
            if name in before and (rows < target_rows or unranged):
                try:
                    with self._source(name) as source:
                        feature = _schema(source).field("feature").type
                except FileNotFoundError:  # merged by a concurrent compaction meanwhile
                    continue
                by_type[feature].append((name, int(rows), bool(unranged)))
        moved = written = 0
        for group in (g for files in by_type.values() for g in _pack(files, target_rows)):
            count = self._merge(group)
            moved, written = moved + count, written + (count > 0)
        referenced = self._referenced()
        candidates = {name for files in by_type.values() for name, _, _ in files}
        merged_away = [name for name in before if name in candidates and name not in referenced]
        for name in merged_away:
            self.store.delete(PARTS + name)
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
        """Rewrite the entries of `names` into one new part; how many entries now point at it."""
        located = self.db.read(
            lambda conn: _joined(
                conn, self.db.is_postgres, ("file",), [(n,) for n in names], _ENTRY_COLUMNS
            )
        )
        by_file: dict[str, dict[Key, _Entry]] = defaultdict(dict)
        for h, r, sid, name, n, offset in located:
            by_file[name][(h, r)] = _Entry(sid, name, n, offset)
        if not by_file:
            return 0
        parts: list[tuple[str, _Rows]] = []
        try:
            for name in sorted(by_file):
                with self._source(name) as source:
                    parts.append((name, _file_rows(source, by_file[name], with_t=True)))
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
        series_ids = [by_file[name][key].series_id for name, key in zip(sources, keys, strict=True)]
        table = _table(series_ids, keys, counts, features, t)
        target = f"part-{uuid.uuid4().hex}.parquet"
        self._put(target, table)
        offsets = np.cumsum(counts) - counts
        moves = [
            (h, r, old, int(o))
            for (h, r), old, o in zip(keys, sources, offsets.tolist(), strict=True)
        ]

        def repoint(conn: Connection) -> int:
            # under the sweep's lock, like a writer's commit: another compaction's sweep (with
            # a short grace) may have taken the new part for an orphan; then nothing moves
            if self.store.info(PARTS + target) is None:
                return 0
            _repoint(conn, self.db.is_postgres, moves, target)
            return conn.execute(
                sa.select(sa.func.count()).select_from(entries).where(entries.c.file == target)
            ).scalar_one()

        return self.db.write(repoint, lock=INDEX_LOCK)

    def _sweep_orphans(self, grace_s: float) -> int:
        """Delete parts no entry references that are older than `grace_s`; how many were deleted.

        Holds the lock writers take for their commit while it decides, so no writer commits
        entries of a part between this sweep's look at the index and its delete (write()
        checks that its part still exists under the same lock).
        """
        deadline = time.time() - grace_s

        def sweep(conn: Connection) -> int:
            referenced = {
                name for (name,) in conn.execute(sa.select(entries.c.file).distinct()).all()
            }
            deleted = 0
            for item in self.store.list(PARTS):
                name = item.key[len(PARTS) :]
                if (
                    _is_part_or_leftover(name)
                    and name not in referenced
                    and item.modified < deadline
                    and self.store.delete(item.key)
                ):
                    deleted += 1
            return deleted

        return self.db.write(sweep, lock=INDEX_LOCK)

    def _referenced(self) -> set[str]:
        return self.db.read(
            lambda conn: {
                name for (name,) in conn.execute(sa.select(entries.c.file).distinct()).all()
            }
        )

    def _parts(self) -> dict[str, int]:
        """Part name -> bytes, from one listing of the store."""
        return {
            item.key[len(PARTS) :]: item.size
            for item in self.store.list(PARTS)
            if _is_part(item.key[len(PARTS) :])
        }

    def _put(self, name: str, table: pa.Table) -> None:
        row_groups = _row_group_rows(table.schema.field("feature").type)
        self.store.put(
            PARTS + name,
            lambda out: pq.write_table(table, out, row_group_size=row_groups, compression="zstd"),
        )

    @contextmanager
    def _source(self, name: str) -> Iterator[_Source]:
        """A part to read: its path in a folder, an open object (ranged reads) in a bucket.
        FileNotFoundError when it is gone."""
        path = self.store.local_path(PARTS + name)
        if path is not None:
            yield path
            return
        with self.store.open(PARTS + name) as handle:
            yield handle

    def _entries_of(self, keys: Sequence[Key], columns: str) -> list[tuple[Any, ...]]:
        if not keys:
            return []
        return self.db.read(
            lambda conn: _joined(conn, self.db.is_postgres, _KEY, list(set(keys)), columns)
        )

    def _locate(self, keys: Iterable[Key]) -> dict[Key, _Entry]:
        rows = self._entries_of(list(keys), _ENTRY_COLUMNS)
        return {(h, r): _Entry(sid, name, n, offset) for h, r, sid, name, n, offset in rows}

    def _each_file(
        self,
        keys: list[Key],
        take: Callable[[_Source, dict[Key, _Entry]], None],
        on_located: Callable[[dict[Key, _Entry]], None] | None = None,
    ) -> None:
        """Locate `keys` and call `take(source, entries)` per part; keys whose part was deleted
        between lookup and open (compaction moved them) are located once more."""
        located = self._locate(keys)
        if on_located is not None:
            on_located(located)
        for attempt in (1, 2):
            by_file: dict[str, dict[Key, _Entry]] = defaultdict(dict)
            for key, entry in located.items():
                by_file[entry.file][key] = entry
            gone: list[Key] = []
            for name, found in by_file.items():
                try:
                    with self._source(name) as source:
                        take(source, found)
                except FileNotFoundError as error:
                    if attempt == 2:
                        raise FileNotFoundError(
                            f"{self.store.uri(PARTS + name)}: the index points at a missing part "
                            f"even after a second lookup; its {len(found)} series cannot be read "
                            f"(delete their entries from {self.db.where} and extract them again)"
                        ) from error
                    gone += found
            if not gone:
                return
            located = self._locate(gone)


_KEY = ("content_hash", "recipe_id")


def _joined(
    conn: Connection,
    postgres: bool,
    names: tuple[str, ...],
    wanted: Sequence[tuple[str, ...]],
    columns: str,
    order: str = "",
) -> list[tuple[Any, ...]]:
    """`SELECT columns` of the entries `e` whose `names` equal one row of `wanted`, in one
    query whatever the number of rows: PostgreSQL joins arrays unnested on the server (each
    sent as one array literal: parsed once, where an ARRAY[...] of 100 000 parameters takes
    seconds), SQLite a temp table filled by one executemany and scanned first (CROSS JOIN)."""
    if not wanted:
        return []
    on = " AND ".join(f"e.{n} = w.{n}" for n in names)
    if postgres:
        arrays = ", ".join(f"%({n})s::text[]" for n in names)
        query = (
            f"SELECT {columns} FROM unnest({arrays}) AS w({', '.join(names)})"
            f" JOIN entries e ON {on}{order}"
        )
        params = {n: _pg_array(row[i] for row in wanted) for i, n in enumerate(names)}
        return [tuple(row) for row in conn.exec_driver_sql(query, params).all()]
    conn.exec_driver_sql(f"CREATE TEMP TABLE w ({', '.join(f'{n} TEXT' for n in names)})")
    try:
        marks = ", ".join("?" * len(names))
        conn.exec_driver_sql(f"INSERT INTO w VALUES ({marks})", list(wanted))
        query = f"SELECT {columns} FROM w CROSS JOIN entries e ON {on}{order}"
        return [tuple(row) for row in conn.exec_driver_sql(query).all()]
    finally:
        conn.exec_driver_sql("DROP TABLE w")


def _repoint(
    conn: Connection, postgres: bool, moves: list[tuple[str, str, str, int]], target: str
) -> None:
    """Point the entries (hash, recipe) still in part `old` at `target` and their new offset."""
    if postgres:  # one statement: a row-by-row executemany is one round trip per entry
        conn.exec_driver_sql(
            "UPDATE entries e SET file = %(target)s, row_offset = w.row_offset"
            " FROM unnest(%(h)s::text[], %(r)s::text[], %(old)s::text[], %(o)s::integer[])"
            " AS w(content_hash, recipe_id, file, row_offset)"
            " WHERE e.content_hash = w.content_hash AND e.recipe_id = w.recipe_id"
            " AND e.file = w.file",
            {
                "target": target,
                "h": _pg_array(m[0] for m in moves),
                "r": _pg_array(m[1] for m in moves),
                "old": _pg_array(m[2] for m in moves),
                "o": _pg_array(str(m[3]) for m in moves),
            },
        )
        return
    conn.exec_driver_sql(
        "UPDATE entries SET file = ?, row_offset = ?"
        " WHERE content_hash = ? AND recipe_id = ? AND file = ?",
        [(target, o, h, r, old) for h, r, old, o in moves],
    )


def _pg_array(values: Iterable[str]) -> str:
    """A PostgreSQL array literal of `values`, each quoted: '{"a","b\\"c"}'."""
    quoted = (v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return "{" + ",".join(f'"{v}"' for v in quoted) + "}"


def _is_part(name: str) -> bool:
    return name.startswith("part-") and name.endswith(".parquet") and "/" not in name


def _is_part_or_leftover(name: str) -> bool:
    """A part, or a temp file a crashed local writer left beside the parts."""
    return _is_part(name) or (name.startswith(".tmp-") and "/" not in name)


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


def _schema(source: _Source) -> pa.Schema:
    with pq.ParquetFile(source) as handle:
        return handle.schema_arrow


def _file_rows(source: _Source, entries: dict[Key, _Entry], with_t: bool) -> _Rows:
    """Read the rows of `entries` from one part: the covering row groups when every entry has a
    row offset and the rows there match, else a content-hash filter over the part."""
    columns = ["content_hash", "recipe_id", "frame_index"] + (["t"] if with_t else []) + ["feature"]
    with pq.ParquetFile(source, read_dictionary=_DICTIONARY_COLUMNS) as handle:
        offsets = {k: e.row_offset for k, e in entries.items() if e.row_offset is not None}
        if len(offsets) == len(entries):
            rows = _ranged_rows(handle, entries, offsets, columns)
            if rows is not None:
                return rows
        return _filtered_rows(handle, entries, columns)


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


def _filtered_rows(handle: pq.ParquetFile, entries: dict[Key, _Entry], columns: list[str]) -> _Rows:
    """Every row of the part's wanted content hashes, sorted into series and frame order."""
    table = handle.read(columns=columns)
    hashes = table["content_hash"].cast(pa.string()).to_numpy(zero_copy_only=False)
    table = table.filter(pa.array(np.isin(hashes, sorted({h for h, _ in entries}))))
    table = table.combine_chunks()
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
        part = next(iter(entries.values())).file
        raise ValueError(
            f"{part}: the index says {bad[:3]} have {expected[counts != expected][:3].tolist()} "
            f"frames but the part holds {counts[counts != expected][:3].tolist()}; the part was "
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
