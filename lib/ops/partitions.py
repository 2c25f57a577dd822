"""Partitions of a source root, and the durable record of which ones are done (SPEC §2, §4).

A partition is a top-level folder or archive of a root (`2026-11-21/`,
`2026-11-21.tar`, `20261121.zip`, `2026-11/`), named without its archive suffix,
as `SeriesRef.partition` is; a folder and an archive of the same name are one
partition. Its period comes from its name (YYYY-MM-DD, YYYYMMDD, YYYY-MM: a whole
month); a name without a date is an undated partition, which only `--all` selects.
A root in a bucket (`s3://bucket/archive`) has the same partitions: its top-level
prefixes and archive objects.

A partition is *done* for a feature recipe once every series of it has its features
committed to the cache (or its failure recorded): `PartitionRecords` keeps one row per
(root, partition, recipe) in the state database, written only then, with a fingerprint
of what the partition held, taken *before* it was discovered. A partition whose content
changed since is pending again; re-doing it costs only the changed series, since the
cache is keyed by content. A partition recorded done that the root no longer holds is
*missing* (an unmounted volume, a truncated archive): every run over the root and
`lstmpipe status ROOT` report it, with the time a run first found it gone (table `missing`).

Records are keyed by the root's stable name and fingerprints use only facts every host
sees alike, so drivers on different hosts sharing one database agree on what is done:
- a folder: its resolved path; each file's relative path, size and mtime (as always, so
  existing records stay valid);
- a bucket: its `s3://bucket/prefix` URL, never a local mirror of it; each object's key,
  size and ETag, from the bucket's own listing. ETags rather than LastModified: an ETag
  is derived from the content, so an identical re-upload leaves a partition done, and
  no host's clock or mirror enters the fingerprint.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import hashlib
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa

from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.sources.archives import archive_suffix, strip_archive_suffix
from lstmpipe.lib.state.database import Database
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.state.schema import Component, migrate
from lstmpipe.lib.state.store import ObjectInfo, is_remote, open_store

_S = TypeVar("_S", bound="_OfASeries")
# Tried in order on the name; the digits must not run on (`x20261121y` is dated, `120261121`
# is not).
_DAY = re.compile(r"(?<!\d)(\d{4})[-_.]?(\d{2})[-_.]?(\d{2})(?!\d)")
_MONTH = re.compile(r"(?<!\d)(\d{4})[-_.](\d{2})(?![-_.]?\d)")

_META = sa.MetaData()
# The table as partitions.sqlite has always had it (same name, columns and key), so an existing
# home keeps its records: version 1 needs no step from version 0.
done = sa.Table(
    "done",
    _META,
    sa.Column("root", sa.Text, primary_key=True),
    sa.Column("partition", sa.Text, primary_key=True),
    sa.Column("recipe_id", sa.Text, primary_key=True),
    sa.Column("fingerprint", sa.Text),
    sa.Column("series", sa.Integer),
    sa.Column("failed", sa.Integer),
    sa.Column("finished_at", sa.Text),
    sa.Column("run_id", sa.Text),
)
# When a run first found a recorded partition gone from its root; a row is dropped once the
# partition is back. Version 2 adds it (migrate creates a table a version adds: no step).
missing = sa.Table(
    "missing",
    _META,
    sa.Column("root", sa.Text, primary_key=True),
    sa.Column("partition", sa.Text, primary_key=True),
    sa.Column("noticed_at", sa.Text),
)
COMPONENT = Component("partitions", _META, version=2)


@dataclass(frozen=True)
class Partition:
    name: str  # archive suffix stripped: the first component of its series ids, suffix stripped
    entries: tuple[str, ...]  # what lies under the root: ("2026-11-21.tar",)
    start: dt.date | None  # the period its name covers; None for an undated name
    end: dt.date | None
    fingerprint: str  # of what its files or objects held: a change makes it pending again


@dataclass(frozen=True)
class Record:
    """One partition done under one recipe (fields in the table's column order)."""

    root: str  # source_name of the root
    partition: str
    recipe_id: str
    fingerprint: str
    series: int  # series seen (cached, extracted or failed)
    failed: int
    finished_at: str  # ISO 8601 UTC
    run_id: str


@dataclass(frozen=True)
class MissingPartition:
    """A partition recorded done that its root no longer holds: when it was done (the last time
    lstmpipe saw it), by which run, how many series it had; when a run first found it gone
    (None: no run over the root has looked since)."""

    partition: str
    done_at: str
    run_id: str
    series: int
    noticed_at: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "done_at": self.done_at,
            "run_id": self.run_id,
            "series": self.series,
            "noticed_at": self.noticed_at,
        }


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def period(name: str) -> tuple[dt.date, dt.date] | None:
    """The days a partition name covers: one day, a whole month, or None when it names no valid
    date."""
    day = _DAY.search(name)
    if day:
        try:
            date = dt.date(*map(int, day.groups()))
        except ValueError:
            date = None
        if date is not None:
            return date, date
    month = _MONTH.search(name)
    if month:
        year, number = map(int, month.groups())
        if 1 <= number <= 12:
            return dt.date(year, number, 1), dt.date(
                year, number, calendar.monthrange(year, number)[1]
            )
    return None


def source_name(root: str | Path) -> str:
    """The name a root's records are kept under, the same on every host: a bucket's URL (no
    trailing slash), a folder's resolved path."""
    if is_remote(root):
        return str(root).rstrip("/")
    return str(Path(root).resolve())


def list_partitions(root: str | Path, retry_s: float = 120.0) -> list[Partition]:
    """The partitions of `root` (a folder or `s3://bucket/prefix`) in date order (undated ones
    last, by name), each fingerprinted now; `retry_s` bounds retries of a bucket listing."""
    if is_remote(root):
        return _in_order(_bucket_partitions(str(root), retry_s))
    return _in_order(_folder_partitions(Path(root)))


def _folder_partitions(root: Path) -> list[Partition]:
    if (
        not root.is_dir()
    ):  # bad usage, not bad input: nothing to record per series, nothing to retry
        raise ConfigError(
            f"{root}: not a folder; partitions are the dated folders and archives inside one"
        )
    grouped: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(root.iterdir()):
        if not path.name.startswith(".") and (path.is_dir() or archive_suffix(path.name)):
            grouped[strip_archive_suffix(path.name)].append(path)
    return [
        _partition(name, tuple(p.name for p in paths), fingerprint(root, paths))
        for name, paths in grouped.items()
    ]


def _bucket_partitions(url: str, retry_s: float) -> list[Partition]:
    """One listing of the bucket prefix: top-level prefixes and archive objects, as in a folder."""
    grouped: dict[str, dict[str, list[ObjectInfo]]] = defaultdict(lambda: defaultdict(list))
    listed = False
    for item in open_store(url, retry_s).list():
        listed = True
        top, _, below = item.key.partition("/")
        # "" is a key with a leading "/": no partition (the mirror refuses it by name)
        if top and not top.startswith(".") and (below or archive_suffix(top)):
            grouped[strip_archive_suffix(top)][top].append(item)
    if not listed:
        raise ConfigError(
            f"{url}: no objects under this prefix; partitions are the dated prefixes and "
            "archives inside one"
        )
    return [
        _partition(
            name,
            tuple(sorted(entries)),
            objects_fingerprint(item for items in entries.values() for item in items),
        )
        for name, entries in grouped.items()
    ]


def _partition(name: str, entries: tuple[str, ...], fingerprint: str) -> Partition:
    days = period(name)
    return Partition(
        name, entries, days[0] if days else None, days[1] if days else None, fingerprint
    )


def _in_order(found: list[Partition]) -> list[Partition]:
    return sorted(found, key=lambda p: (p.start is None, p.start or dt.date.min, p.name))


def fingerprint(root: Path, paths: Iterable[Path]) -> str:
    """A hash of (relative path, size, mtime) of every file under `paths`: cheap, no content
    read."""
    digest = hashlib.blake2b(digest_size=12)
    for path in paths:
        files = (
            [path]
            if path.is_file()
            else sorted(Path(folder, f) for folder, _, names in os.walk(path) for f in names)
        )
        for file in files:
            stat = file.stat()
            digest.update(
                f"{file.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
            )
    return digest.hexdigest()


def objects_fingerprint(objects: Iterable[ObjectInfo]) -> str:
    """A hash of (key, size, ETag) of every object: what the bucket's listing says, alike on
    every host."""
    digest = hashlib.blake2b(digest_size=12)
    for item in sorted(objects, key=lambda o: o.key):
        digest.update(f"{item.key}\0{item.size}\0{item.etag}\n".encode())
    return digest.hexdigest()


def select(
    found: list[Partition],
    start: dt.date | None = None,
    end: dt.date | None = None,
    every: bool = False,
) -> list[Partition]:
    """`every`: all partitions, undated ones too; else the dated ones whose period overlaps
    [start, end] (an open end is unbounded), so a month partition counts for any of its days."""
    if every:
        return list(found)
    return [
        p
        for p in found
        if p.start is not None
        and p.end is not None
        and (start is None or p.end >= start)
        and (end is None or p.start <= end)
    ]


def date_range(
    start: str | None, end: str | None, every: bool
) -> tuple[dt.date | None, dt.date | None]:
    """A backfill's --from/--to as days (`--from 2026-11` starts on the 1st, `--to 2026-11` ends
    on the 30th); exactly one of a range or `every` must be given."""
    days = {
        flag: period(value) if value is not None else None
        for flag, value in (("--from", start), ("--to", end))
    }
    for flag, value in (("--from", start), ("--to", end)):
        if value is not None and days[flag] is None:
            raise ConfigError(
                f"backfill {flag} {value!r}: not a date; expected YYYY-MM-DD, YYYYMMDD or YYYY-MM"
            )
    first = days["--from"][0] if days["--from"] else None
    last = days["--to"][1] if days["--to"] else None
    if every == (start is not None or end is not None):
        raise ConfigError("backfill: give --from and/or --to, or --all (not both)")
    if first and last and first > last:
        raise ConfigError(f"backfill: --from {start} is after --to {end}")
    return first, last


def partition_of(series_id: str) -> str:
    """The partition a series id belongs to: its first component, archive suffix stripped."""
    return strip_archive_suffix(PurePosixPath(series_id).parts[0])


class _OfASeries(Protocol):
    @property
    def series_id(self) -> str: ...


def by_partition(items: Iterable[_S]) -> dict[str, list[_S]]:
    """Things of a series (refs, failures), grouped by partition."""
    grouped: dict[str, list[_S]] = defaultdict(list)
    for item in items:
        grouped[partition_of(item.series_id)].append(item)
    return dict(grouped)


class PartitionRecords:
    """Which partitions are done, per source and recipe: the `done` table of the state database.

    Local: `partitions.sqlite` under home (the table as it always was); team: the team's
    PostgreSQL, so every host and node reads and writes the same records.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        migrate(db, COMPONENT)

    @classmethod
    def at(cls, state: StatePlaces) -> PartitionRecords:
        return cls(state.partitions_database())

    def mark_done(
        self,
        root: str | Path,
        partition: Partition,
        recipe_id: str,
        series: int,
        failed: int,
        run_id: str,
    ) -> Record:
        """Record `partition` done; call only once its features are committed and its failures
        recorded.

        Replaces an earlier record of the same partition (a changed partition redone).
        """
        record = Record(
            source_name(root),
            partition.name,
            recipe_id,
            partition.fingerprint,
            series,
            failed,
            _now(),
            run_id,
        )
        insert = self.db.insert(done).values(dataclasses.asdict(record))
        replace = insert.on_conflict_do_update(
            index_elements=[c.name for c in done.primary_key],
            set_={c.name: insert.excluded[c.name] for c in done.c if not c.primary_key},
        )
        self.db.write(lambda conn: conn.execute(replace))
        return record

    def records(self, root: str | Path, recipe_id: str | None = None) -> list[Record]:
        """The records of `root` (of one recipe, if given), oldest first."""
        query = sa.select(done).where(done.c.root == source_name(root))
        if recipe_id is not None:
            query = query.where(done.c.recipe_id == recipe_id)
        query = query.order_by(done.c.finished_at, done.c.partition)
        return self.db.read(lambda conn: [Record(**row._mapping) for row in conn.execute(query)])

    def pending(self, root: str | Path, found: list[Partition], recipe_id: str) -> list[Partition]:
        """The partitions of `found` not done under `recipe_id`, or changed since they were."""
        finished = {r.partition: r.fingerprint for r in self.records(root, recipe_id)}
        return [p for p in found if finished.get(p.name) != p.fingerprint]

    def missing(
        self, root: str | Path, found: list[Partition], recipe_id: str | None = None
    ) -> list[MissingPartition]:
        """The partitions recorded done (under `recipe_id`, if given) that `found`, the root's
        partitions now, lacks; oldest record first. Reads only."""
        present = {p.name for p in found}
        gone = [r for r in self.records(root, recipe_id) if r.partition not in present]
        if not gone:
            return []
        query = sa.select(missing.c.partition, missing.c.noticed_at).where(
            missing.c.root == source_name(root)
        )
        noticed = self.db.read(lambda conn: dict(conn.execute(query).tuples().all()))
        return [
            MissingPartition(
                r.partition, r.finished_at, r.run_id, r.series, noticed.get(r.partition)
            )
            for r in gone
        ]

    def note_missing(
        self, root: str | Path, found: list[Partition], recipe_id: str
    ) -> list[MissingPartition]:
        """`missing`, once the time a run first found each one gone is recorded (a partition
        back under the root is forgotten), so status can say since when it is gone."""
        name, present = source_name(root), {p.name for p in found}
        gone = [m.partition for m in self.missing(root, found, recipe_id)]
        rows = [{"root": name, "partition": p, "noticed_at": _now()} for p in gone]
        noted = sa.select(missing.c.partition).where(missing.c.root == name)

        def write(conn: Any) -> None:
            back = [p for p in conn.execute(noted).scalars() if p in present]
            if back:
                conn.execute(
                    sa.delete(missing).where(missing.c.root == name, missing.c.partition.in_(back))
                )
            self.db.insert_ignore(missing, rows, conn)

        self.db.write(write)
        return self.missing(root, found, recipe_id)


@dataclass(frozen=True)
class ToDo:
    """The partitions of a root in a run's range, those of them not yet done, the series the
    others held when they were done; and the partitions recorded done that the root lost."""

    selected: list[Partition]
    pending: list[Partition]
    series_before: int = 0
    missing: list[MissingPartition] = dataclasses.field(default_factory=list)


def to_do(
    root: str | Path,
    records: PartitionRecords,
    recipe_id: str,
    start: dt.date | None = None,
    end: dt.date | None = None,
    every: bool = False,
) -> ToDo:
    """What a run over `root` selects, and what of that is left to do.

    Fingerprints are taken here, before discovery: files that land while a partition is
    extracted change its fingerprint after the record, so the next run looks again. A
    bucket's listing is retried as long as the records' database would be. Recorded
    partitions the root no longer holds are noted missing (whatever the range).
    """
    found = list_partitions(root, records.db.retry_s)
    selected = select(found, start, end, every)
    pending = records.pending(root, selected, recipe_id)
    done = {p.name for p in selected} - {p.name for p in pending}
    before = sum(r.series for r in records.records(root, recipe_id) if r.partition in done)
    return ToDo(selected, pending, before, records.note_missing(root, found, recipe_id))


@dataclass(frozen=True)
class Newest:
    """A model's newest registered version, as nightly sees it."""

    version: str
    registered: dt.datetime
    decided: bool  # a promotion decision (promoted or rejected) is recorded on it


def newest_version(client: Any, model: str) -> Newest | None:
    """`model`'s newest registered version; None when it has none."""
    from lstmpipe.lib.registry.mlflow_store import filter_value  # late: MLflow is slow to import

    versions = client.search_model_versions(f"name = {filter_value(model)}")
    if not versions:
        return None
    newest = max(versions, key=lambda v: int(v.version))
    return Newest(
        str(newest.version),
        dt.datetime.fromtimestamp(newest.creation_timestamp / 1000, dt.UTC),
        "promotion.decision" in (newest.tags or {}),
    )


def why_train(records: list[Record], newest: Newest | None) -> str | None:
    """Why nightly should train, or None: no partition was done since the newest version was
    registered.

    Comparing with the registry, not with this run, also retrains after a night whose
    partitions were extracted (or backfilled) but whose training crashed.
    """
    if newest is None:
        return "no version registered yet"
    fresh = [
        r.partition for r in records if dt.datetime.fromisoformat(r.finished_at) > newest.registered
    ]
    if fresh:
        return (
            f"{len(fresh)} partition(s) done since v{newest.version} was registered: "
            f"{', '.join(sorted(fresh)[:5])}"
        )
    return None


def undecided(newest: Newest | None) -> str | None:
    """The newest version when no promotion decision was recorded on it: a night stopped between
    registering and promoting it, so the next night promotes it (else it would never be judged,
    and a first model would leave no champion to infer with)."""
    return newest.version if newest is not None and not newest.decided else None


@dataclass(frozen=True)
class NightlyPlan:
    """Why nightly trains (None: nothing new since the model's newest version), and the newest
    version left without a promotion decision (None when there is none)."""

    train: str | None
    promote: str | None


def plan_night(records: list[Record], newest: Newest | None) -> NightlyPlan:
    return NightlyPlan(why_train(records, newest), undecided(newest))


@dataclass(frozen=True)
class Night:
    """What a night does once its partitions are extracted: whether it trains, the reason its
    summary gives either way, and whether it predicts."""

    train: bool
    reason: str
    infer: bool


def decide_night(
    plan: NightlyPlan, retrain: bool, no_series: str | None, infer_elsewhere: bool
) -> Night:
    """A root without series (`no_series` says so) is a quiet night: nothing to train on, even
    with --retrain, and nothing of it to predict (its first night may have no model yet), so
    only an `infer_elsewhere` source is predicted. Else train when asked to, or when `plan`
    found a partition done since the newest version."""
    if no_series:
        return Night(False, f"skipped: {no_series}", infer_elsewhere)
    if retrain:
        return Night(True, "asked for (--retrain)", True)
    if plan.train:
        return Night(True, plan.train, True)
    return Night(
        False, "skipped: no partition done since the newest version (retrain forces it)", True
    )


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table (Prefect artifacts render it); `|` in values escaped."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(str(row.get(c, "")).replace("|", "\\|") for c in columns) + " |"
        for row in rows
    ]
    return "\n".join(lines)
