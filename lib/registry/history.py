"""The append-only promotion history: one SQLite row per decision (promotion or rollback), never
updated or deleted, one table for every model of a state directory.

SQLite gives atomic appends from concurrent processes and a table readable while written. The
columns (names, types, order) are those of every history written so far: existing state
directories keep appending to their table.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class Action(StrEnum):
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class Outcome(StrEnum):
    """What a decision did; also the `promotion.decision` tag of the version."""

    PROMOTED = "promoted"
    REJECTED = "rejected"
    ROLLED_BACK = "rolled_back"


@dataclass(frozen=True, kw_only=True)
class HistoryRow:
    """One decision as the table holds it (fields in column order; `id` is the table's)."""

    time: str
    model: str
    action: Action
    decision: Outcome
    challenger_version: str | None = None
    champion_version: str | None = None
    champion_after: str | None = None
    reason: str | None = None
    challenger_macro_f1: float | None = None
    champion_macro_f1: float | None = None
    test: str | None = None
    p_value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    run_id: str | None = None
    challenger_run_id: str | None = None
    checks: str | None = None  # JSON, as the version's promotion.checks tag
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The row as `promote --history --json` prints it: id first, then the columns."""
        return {"id": self.id, **{name: getattr(self, name) for name in COLUMNS}}


# column -> SQLite type, in the table's order
COLUMNS = {
    f.name: "REAL" if f.type == "float | None" else "TEXT"
    for f in dataclasses.fields(HistoryRow)
    if f.name != "id"
}


def append_history(path: Path, row: HistoryRow) -> None:
    """Append one decision; creates the table on first use."""
    values = {name: getattr(row, name) for name in COLUMNS if getattr(row, name) is not None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path, timeout=30)) as db, db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            + ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
            + ")"
        )
        db.execute(
            f"INSERT INTO decisions ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})",
            [str(v) if isinstance(v, StrEnum) else v for v in values.values()],
        )


def read_history(path: Path, model: str | None = None) -> list[HistoryRow]:
    """Every recorded decision (of `model`), oldest first; [] when nothing was recorded yet."""
    if not Path(path).is_file():
        return []
    with closing(sqlite3.connect(f"{Path(path).as_uri()}?mode=ro", uri=True, timeout=30)) as db:
        db.row_factory = sqlite3.Row
        query = "SELECT * FROM decisions" + (" WHERE model = ?" if model else "") + " ORDER BY id"
        rows = [dict(row) for row in db.execute(query, (model,) if model else ())]
    return [
        HistoryRow(**row | {"action": Action(row["action"]), "decision": Outcome(row["decision"])})
        for row in rows
    ]
