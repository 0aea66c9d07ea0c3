"""Schema migrations: a numbered list of small functions, applied in order, each once.

`MIGRATIONS[i]` brings the schema from version i to i+1 and runs inside one transaction with
an Alembic `Operations` object, so the same code works on SQLite and PostgreSQL. Tables come
from `schema.py`; a migration that adds a column to an existing table must also add it there
and use `add_column` below, which skips columns the table already has (a fresh store builds
tables from the current definitions).
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from whetstone.store import schema

Migration = Callable[[Operations, sa.Connection], None]


def _create(conn: sa.Connection, *tables: sa.Table) -> None:
    for t in tables:
        t.create(conn, checkfirst=True)


def add_column(op: Operations, conn: sa.Connection, table: str, column: sa.Column) -> None:
    have = {c["name"] for c in sa.inspect(conn).get_columns(table)}
    if column.name not in have:
        op.add_column(table, column)


def m001_core(op: Operations, conn: sa.Connection) -> None:
    _create(conn, schema.tasks, schema.records, schema.record_events)
    op.create_index("ix_records_task_status", "records", ["task", "status"])
    op.create_index("ix_records_task_source", "records", ["task", "source"])
    # Re-importing the same source row must not add it twice; NULL keys (captures) never clash.
    op.create_index("ux_records_source_key", "records", ["task", "source_key"], unique=True)
    op.create_index("ix_record_events_record", "record_events", ["record_id"])


def m002_lineage(op: Operations, conn: sa.Connection) -> None:
    _create(
        conn,
        schema.snapshots,
        schema.snapshot_records,
        schema.adapters,
        schema.registry_events,
        schema.evaluations,
        schema.predictions,
    )
    op.create_index("ix_snapshot_records_record", "snapshot_records", ["record_id"])


def m003_curation(op: Operations, conn: sa.Connection) -> None:
    _create(conn, schema.curation_decisions, schema.record_features)
    op.create_index("ix_curation_decisions_record", "curation_decisions", ["record_id"])
    op.create_index("ix_curation_decisions_snapshot", "curation_decisions", ["snapshot_id"])


MIGRATIONS: list[Migration] = [m001_core, m002_lineage, m003_curation]
LATEST = len(MIGRATIONS)


def current_version(conn: sa.Connection) -> int:
    if not sa.inspect(conn).has_table(schema.meta.name):
        return 0
    row = conn.execute(
        sa.select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
    ).first()
    return int(row[0]) if row else 0


def migrate(engine: sa.Engine) -> int:
    """Bring the store to the latest version; return the version it was at before."""
    from whetstone.errors import StoreError

    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # One migrator at a time when several processes open a fresh store together. Taken
            # before the first CREATE TABLE, which races too; SQLite's BEGIN IMMEDIATE already
            # serialises them.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7401)"))
        schema.meta.create(conn, checkfirst=True)
        before = current_version(conn)
        if before > LATEST:
            raise StoreError(
                f"the store is at schema version {before}, newer than this Whetstone "
                f"understands ({LATEST}); upgrade whetstone to use it"
            )
        op = Operations(MigrationContext.configure(conn))
        for version in range(before, LATEST):
            MIGRATIONS[version](op, conn)
        if before != LATEST:
            value = str(LATEST)
            if before == 0:
                conn.execute(schema.meta.insert().values(key="schema_version", value=value))
            else:
                conn.execute(
                    schema.meta.update()
                    .where(schema.meta.c.key == "schema_version")
                    .values(value=value)
                )
    return before
