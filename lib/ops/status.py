"""`lstmpipe status`: what the state holds (home, or the database and bucket in team mode), read
without starting anything."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lstmpipe.lib.features.cache import FeatureCache
from lstmpipe.lib.ops.failures import read_failures
from lstmpipe.lib.ops.partitions import MissingPartition, PartitionRecords, list_partitions
from lstmpipe.lib.registry.runs import recent_runs
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.state.store import Store

RECENT = 10


@dataclass(frozen=True)
class RecentRun:
    """One run record (runs/RUN_ID.json), as status lists it."""

    run_id: str
    command: str
    seconds: float
    finished: str  # ISO 8601 UTC, when the record was written (its modification time)
    failed: int

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "command": self.command,
            "seconds": self.seconds,
            "finished": self.finished,
            "failed": self.failed,
            "outcome": f"{self.failed} series failed (exit 3)" if self.failed else "ok",
        }


@dataclass(frozen=True)
class PartitionsStatus:
    """A root's partitions done and pending under `recipe_id` (None: no record yet), and those
    recorded done that it no longer holds (an unmounted volume, a truncated archive)."""

    root: str
    recipe_id: str | None
    done: list[str]
    pending: list[str]
    missing: list[MissingPartition]

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "recipe_id": self.recipe_id,
            "done": self.done,
            "pending": self.pending,
            "missing": [entry.to_json() for entry in self.missing],
        }


@dataclass(frozen=True)
class Status:
    """What `lstmpipe status` shows. `cache` is FeatureCache.stats(); a champion row names its
    model and, under the alias's own name, the version it points at; failures are rows of the
    failures table, as text."""

    partitions: PartitionsStatus | None
    home: str
    cache: dict[str, Any]
    runs: list[RecentRun]
    champions: list[dict[str, str]]
    failures_total: int
    recent_failures: list[dict[str, str]]

    def to_json(self) -> dict[str, Any]:
        return {
            "partitions": self.partitions.to_json() if self.partitions else None,
            "home": self.home,
            "cache": self.cache,
            "runs": [run.to_json() for run in self.runs],
            "champions": self.champions,
            "failures_total": self.failures_total,
            "recent_failures": self.recent_failures,
        }


def collect(
    state: StatePlaces, client: MlflowClient, alias: str, root: str | Path | None = None
) -> Status:
    """Cache size, the last runs and their outcome, each model's champion, recent failures; with
    `root`, its partitions done and pending."""
    home, outputs = Path(state.home), state.outputs_store()
    failures = read_failures(outputs).to_pylist()
    return Status(
        partitions=_partitions(PartitionRecords.at(state), root) if root is not None else None,
        home=str(home),
        cache=FeatureCache.at(state).stats(),
        runs=_recent_runs(outputs),
        champions=_champions(client, alias),
        failures_total=len(failures),
        recent_failures=[{k: str(v) for k, v in row.items()} for row in failures[-RECENT:]],
    )


def _recent_runs(outputs: Store) -> list[RecentRun]:
    return [
        RecentRun(
            saved.record["run_id"],
            saved.record["command"],
            saved.record["seconds"],
            dt.datetime.fromtimestamp(saved.finished, dt.UTC).isoformat(timespec="seconds"),
            saved.record.get("failed", 0),
        )
        for saved in recent_runs(outputs, RECENT)
    ]


def _partitions(records: PartitionRecords, root: str | Path) -> PartitionsStatus:
    """Partitions of `root` done, pending and missing under the recipe its latest record used
    (the recipe a nightly or backfill last ran with: working out the configured one would mean
    loading the backbone)."""
    rows = records.records(root)
    recipe_id = rows[-1].recipe_id if rows else None
    done = {r.partition: r.fingerprint for r in rows if r.recipe_id == recipe_id}
    found = list_partitions(root, records.db.retry_s)
    return PartitionsStatus(
        str(root),
        recipe_id,
        [p.name for p in found if done.get(p.name) == p.fingerprint],
        [p.name for p in found if done.get(p.name) != p.fingerprint],
        records.missing(root, found, recipe_id) if recipe_id else [],
    )


def _champions(client: MlflowClient, alias: str) -> list[dict[str, str]]:
    """Every registered model with the version `alias` points at ("-" when none)."""
    try:
        models = client.search_registered_models()
    except MlflowException:
        return []  # an empty or unreachable store: nothing registered yet
    return [{"model": m.name, alias: str(m.aliases.get(alias, "-"))} for m in models]
