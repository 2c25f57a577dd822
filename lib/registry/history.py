"""The append-only promotion history: one row per decision (promotion or rollback), never
updated or deleted, one table for every model, in the state database.

Local: `promotions/history.sqlite` under home; team: the team's PostgreSQL, so a decision made
on any host is in every host's history. Each append is one transaction, and the table is
readable while written. The columns (names, types, order) are those of every history written
so far: existing state directories keep appending to their table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from lstmpipe.lib.state.database import Database
from lstmpipe.lib.state.places import StatePlaces
from lstmpipe.lib.state.schema import Component, migrate


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


def _column(field: dataclasses.Field[Any]) -> sa.Column[Any]:
    if field.type == "float | None":
        # REAL on SQLite, as the first history files declared it; double precision on PostgreSQL
        return sa.Column(field.name, sa.Float().with_variant(sa.REAL(), "sqlite"))
    return sa.Column(field.name, sa.Text)


_META = sa.MetaData()
# The table as history.sqlite has always had it (INTEGER PRIMARY KEY AUTOINCREMENT, then the
# fields of HistoryRow in order), so version 1 needs no step from version 0.
decisions = sa.Table(
    "decisions",
    _META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *(_column(f) for f in dataclasses.fields(HistoryRow) if f.name != "id"),
    sqlite_autoincrement=True,
)
COMPONENT = Component("promotion_history", _META, version=1)
COLUMNS = [c.name for c in decisions.c if c.name != "id"]


class PromotionHistory:
    """The history table of one state database (whose locks also serialise promotions)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        migrate(db, COMPONENT)

    @classmethod
    def at(cls, state: StatePlaces) -> PromotionHistory:
        return cls(state.history_database())

    def append(self, row: HistoryRow) -> None:
        values = {name: getattr(row, name) for name in COLUMNS}
        insert = decisions.insert().values(
            {k: str(v) if isinstance(v, StrEnum) else v for k, v in values.items()}
        )
        self.db.write(lambda conn: conn.execute(insert))

    def read(self, model: str | None = None) -> list[HistoryRow]:
        """Every recorded decision (of `model`), oldest first."""
        query = sa.select(decisions).order_by(decisions.c.id)
        if model:
            query = query.where(decisions.c.model == model)
        rows = self.db.read(lambda conn: [dict(row._mapping) for row in conn.execute(query)])
        return [
            HistoryRow(
                **row | {"action": Action(row["action"]), "decision": Outcome(row["decision"])}
            )
            for row in rows
        ]
