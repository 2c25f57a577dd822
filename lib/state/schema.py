"""Schema versions, migrated in one place.

Each holder of state (the cache index, the hash memo, partition records, promotion
history) declares a `Component`: its tables and the ordered steps that bring an older
database up to its current version. `migrate` records each component's version in
`schema_versions` and runs the missing steps in one write transaction, so two processes
opening an old database at once migrate it once. A database newer than this code is
refused rather than written in a shape the code does not know.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from lstmpipe.lib.state.database import Database

_VERSIONS_META = sa.MetaData()
schema_versions = sa.Table(
    "schema_versions",
    _VERSIONS_META,
    sa.Column("component", sa.String, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

Step = Callable[[Connection], None]


@dataclass(frozen=True)
class Component:
    """A holder of state: its tables at `version`, and how each older version is upgraded.

    steps[v] upgrades version v to v + 1; version 0 is "tables as this component's first
    SQLite files had them" (created by create_all when absent).
    """

    name: str
    metadata: sa.MetaData
    version: int = 1
    steps: dict[int, Step] = field(default_factory=dict)


class SchemaTooNew(RuntimeError):
    pass


def migrate(db: Database, component: Component) -> None:
    """Create or upgrade `component`'s tables to its version; cheap when already current."""
    if _current(db, component) == component.version:
        return

    def upgrade(conn: Connection) -> None:
        _VERSIONS_META.create_all(conn, checkfirst=True)
        found = conn.execute(
            sa.select(schema_versions.c.version).where(
                schema_versions.c.component == component.name
            )
        ).scalar()
        fresh = not any(
            sa.inspect(conn).has_table(t.name) for t in component.metadata.sorted_tables
        )
        component.metadata.create_all(conn, checkfirst=True)
        version = component.version if fresh else (found or 0)
        if version > component.version:
            raise SchemaTooNew(
                f"{db.where}: {component.name} tables are at schema version {version}, this "
                f"lstmpipe knows up to {component.version}; upgrade lstmpipe"
            )
        for step in range(version, component.version):
            if step in component.steps:
                component.steps[step](conn)
        if found is None:
            conn.execute(
                schema_versions.insert().values(component=component.name, version=component.version)
            )
        elif found != component.version:
            conn.execute(
                schema_versions.update()
                .where(schema_versions.c.component == component.name)
                .values(version=component.version)
            )

    db.write(upgrade, lock=f"migrate:{component.name}")


def _current(db: Database, component: Component) -> int | None:
    def look(conn: Connection) -> int | None:
        if not sa.inspect(conn).has_table("schema_versions"):
            return None
        return conn.execute(
            sa.select(schema_versions.c.version).where(
                schema_versions.c.component == component.name
            )
        ).scalar()

    return db.read(look)
