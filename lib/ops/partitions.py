"""Partitions of a source root, and the durable record of which ones are done (SPEC §2, §4).

A partition is a top-level folder or archive of a root (`2026-11-21/`,
`2026-11-21.tar`, `20261121.zip`, `2026-11/`), named without its archive suffix,
as `SeriesRef.partition` is; a folder and an archive of the same name are one
partition. Its period comes from its name (YYYY-MM-DD, YYYYMMDD, YYYY-MM: a whole
month); a name without a date is an undated partition, which only `--all` selects.

A partition is *done* for a feature recipe once every series of it has its features
committed to the cache (or its failure recorded): `PartitionRecords` keeps one row per
(root, partition, recipe) in a SQLite file, written only then, with a fingerprint of
what the partition held (names, sizes and mtimes of its files), taken *before* it was
discovered. A partition whose files changed since is pending again; re-doing it costs
only the changed series, since the cache is keyed by content.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import os
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, TypeVar

from lstmpipe.lib.errors import ConfigError
from lstmpipe.lib.sources.archives import archive_suffix, strip_archive_suffix

_S = TypeVar("_S", bound="_OfASeries")
# Tried in order on the name; the digits must not run on (`x20261121y` is dated, `120261121`
# is not).
_DAY = re.compile(r"(?<!\d)(\d{4})[-_.]?(\d{2})[-_.]?(\d{2})(?!\d)")
_MONTH = re.compile(r"(?<!\d)(\d{4})[-_.](\d{2})(?![-_.]?\d)")
# a writer waits this long for another process's commit (they take milliseconds)
BUSY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Partition:
    name: str  # archive suffix stripped: the first component of its series ids, suffix stripped
    entries: tuple[str, ...]  # what lies under the root: ("2026-11-21.tar",)
    start: dt.date | None  # the period its name covers; None for an undated name
    end: dt.date | None
    fingerprint: str  # of the names, sizes and mtimes of its files: a change makes it pending again


@dataclass(frozen=True)
class Record:
    """One partition done under one recipe."""

    root: str
    partition: str
    recipe_id: str
    fingerprint: str
    series: int  # series seen (cached, extracted or failed)
    failed: int
    finished_at: str  # ISO 8601 UTC
    run_id: str


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


def list_partitions(root: Path) -> list[Partition]:
    """The partitions of `root` in date order (undated ones last, by name), each fingerprinted
    now."""
    root = Path(root)
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
    found = []
    for name, paths in grouped.items():
        days = period(name)
        found.append(
            Partition(
                name,
                tuple(p.name for p in paths),
                days[0] if days else None,
                days[1] if days else None,
                fingerprint(root, paths),
            )
        )
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
    """Which partitions are done, per root and recipe: a SQLite file safe for several processes.

    WAL lets readers (status) run beside a writer; the busy timeout makes a second writer
    (a backfill beside a nightly run) wait for the first instead of failing.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS done (root TEXT, partition TEXT, recipe_id TEXT,"
                " fingerprint TEXT, series INTEGER, failed INTEGER, finished_at TEXT, run_id TEXT,"
                " PRIMARY KEY (root, partition, recipe_id))"
            )

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        db.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
        return db

    def mark_done(
        self,
        root: Path,
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
            str(Path(root).resolve()),
            partition.name,
            recipe_id,
            partition.fingerprint,
            series,
            failed,
            dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            run_id,
        )
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.root,
                    record.partition,
                    record.recipe_id,
                    record.fingerprint,
                    record.series,
                    record.failed,
                    record.finished_at,
                    record.run_id,
                ),
            )
        return record

    def records(self, root: Path, recipe_id: str | None = None) -> list[Record]:
        """The records of `root` (of one recipe, if given), oldest first."""
        query, args = "SELECT * FROM done WHERE root = ?", [str(Path(root).resolve())]
        if recipe_id is not None:
            query, args = query + " AND recipe_id = ?", args + [recipe_id]
        with closing(self._connect()) as db:
            return [
                Record(*row) for row in db.execute(query + " ORDER BY finished_at, partition", args)
            ]

    def pending(self, root: Path, found: list[Partition], recipe_id: str) -> list[Partition]:
        """The partitions of `found` not done under `recipe_id`, or changed since they were."""
        done = {r.partition: r.fingerprint for r in self.records(root, recipe_id)}
        return [p for p in found if done.get(p.name) != p.fingerprint]


@dataclass(frozen=True)
class ToDo:
    """The partitions of a root in a run's range, and those of them not yet done."""

    selected: list[Partition]
    pending: list[Partition]


def to_do(
    root: Path,
    records: PartitionRecords,
    recipe_id: str,
    start: dt.date | None = None,
    end: dt.date | None = None,
    every: bool = False,
) -> ToDo:
    """What a run over `root` selects, and what of that is left to do.

    Fingerprints are taken here, before discovery: files that land while a partition is
    extracted change its fingerprint after the record, so the next run looks again.
    """
    selected = select(list_partitions(root), start, end, every)
    return ToDo(selected, records.pending(root, selected, recipe_id))


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


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A Markdown table (Prefect artifacts render it); `|` in values escaped."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(str(row.get(c, "")).replace("|", "\\|") for c in columns) + " |"
        for row in rows
    ]
    return "\n".join(lines)
