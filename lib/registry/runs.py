"""Run records: `runs/<run id>.json` in the outputs store (a folder under home, or the bucket in
team mode), the document `--json` printed for each command run. `lstmpipe status` lists the last
ones; `lstmpipe report RUN_ID` finds through one the MLflow run it trained or promoted.

Light on purpose (json and the store only): the CLI writes one after every command, cheap ones
too, and must not load MLflow for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lstmpipe.lib.state.store import Store

PREFIX = "runs"


@dataclass(frozen=True)
class SavedRun:
    """A run record read back, and when it was written (its object's modification time,
    seconds since the epoch)."""

    record: dict[str, Any]
    finished: float


def record_key(run_id: str) -> str:
    """The record's key; the caller has checked `run_id` is a plain name (lib/names.py)."""
    return f"{PREFIX}/{run_id}.json"


def save_run(store: Store, record: dict[str, Any]) -> str:
    """Write the record of a run (the document `--json` printed): its key."""
    key = record_key(record["run_id"])
    text = json.dumps(record, indent=2, default=str).encode()
    store.put(key, lambda out: out.write(text))
    return key


def read_run(store: Store, run_id: str) -> dict[str, Any] | None:
    """The record of `run_id`; None when there is none."""
    try:
        return json.loads(store.read_bytes(record_key(run_id)))
    except FileNotFoundError:
        return None


def recent_runs(store: Store, count: int) -> list[SavedRun]:
    """The `count` records written last, oldest first (what `lstmpipe status` lists)."""
    found = sorted(
        (info for info in store.list(PREFIX) if _is_record(info.key)),
        key=lambda info: (info.modified, info.key),
    )[-count:]
    return [SavedRun(json.loads(store.read_bytes(info.key)), info.modified) for info in found]


def _is_record(key: str) -> bool:
    """runs/<id>.json itself: not a `.tmp-*` file a killed writer left, nor anything deeper."""
    name = key.removeprefix(f"{PREFIX}/")
    return name.endswith(".json") and "/" not in name and not name.startswith(".")
