"""Schema migrations: a list of named steps, applied in order, each once, and recorded by name
in `whetstone_migrations`.

Each migration is frozen: it spells out the DDL of its day (table and column definitions
written inside it, never today's `schema.py` objects), so a store built step by step and a
fresh one end alike, and a later rename or new column is simply one more migration. They run
inside one transaction with an Alembic `Operations` object, which speaks both SQLite and
PostgreSQL. Never edit a migration that has shipped: add a new one, and change `schema.py`
(the tables queries use) to match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from whetstone.errors import StoreError
from whetstone.records import utcnow

# The bookkeeping table, created before any migration runs (and never changed by one).
APPLIED = sa.Table(
    "whetstone_migrations",
    sa.MetaData(),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("applied_at", sa.String(40), nullable=False),
)
# Stores made before migrations had names kept one integer here: version N = the first N.
_LEGACY = "whetstone_meta"


def m001_core(op: Operations) -> None:
    op.create_table(
        "tasks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("instruction", sa.Text),
        sa.Column("labels", sa.Text),
        sa.Column("schema", sa.Text),
        sa.Column("metric", sa.String(128)),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "records",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(64), sa.ForeignKey("tasks.name"), nullable=False),
        sa.Column("input", sa.Text, nullable=False),
        sa.Column("input_text", sa.Text, nullable=False),
        sa.Column("output", sa.Text),
        sa.Column("reference", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_category", sa.String(128)),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("model", sa.String(128)),
        sa.Column("confidence", sa.Float),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("annotator", sa.String(128)),
        sa.Column("meta", sa.Text, nullable=False),
        sa.Column("source_key", sa.String(64)),
        sa.Column("created_at", sa.String(40), nullable=False),
        sa.Column("updated_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "record_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("record_id", sa.Integer, sa.ForeignKey("records.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reference", sa.Text),
        sa.Column("error_category", sa.String(128)),
        sa.Column("annotator", sa.String(128)),
        sa.Column("comment", sa.Text),
        sa.Column("rating", sa.Integer),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.create_index("ix_records_task_status", "records", ["task", "status"])
    op.create_index("ix_records_task_source", "records", ["task", "source"])
    # Re-importing the same source row must not add it twice; NULL keys (captures) never clash.
    op.create_index("ux_records_source_key", "records", ["task", "source_key"], unique=True)
    op.create_index("ix_record_events_record", "record_events", ["record_id"])


def m002_lineage(op: Operations) -> None:
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("task", sa.String(64), sa.ForeignKey("tasks.name"), nullable=False),
        sa.Column("info", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "snapshot_records",
        sa.Column("snapshot_id", sa.String(64), sa.ForeignKey("snapshots.id"), primary_key=True),
        sa.Column("record_id", sa.Integer, sa.ForeignKey("records.id"), primary_key=True),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
    )
    op.create_table(
        "adapters",
        sa.Column("task", sa.String(64), sa.ForeignKey("tasks.name"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("base_model", sa.Text, nullable=False),
        sa.Column("base_hash", sa.String(64), nullable=False),
        sa.Column("snapshot_id", sa.String(64)),
        sa.Column("run_id", sa.String(64)),
        sa.Column("info", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "registry_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("from_stage", sa.String(16)),
        sa.Column("to_stage", sa.String(16)),
        sa.Column("actor", sa.String(128)),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("task", sa.String(64), sa.ForeignKey("tasks.name"), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("snapshot_id", sa.String(64)),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("info", sa.Text, nullable=False),
        sa.Column("created_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "predictions",
        sa.Column(
            "evaluation_id", sa.String(64), sa.ForeignKey("evaluations.id"), primary_key=True
        ),
        sa.Column("record_id", sa.Integer, sa.ForeignKey("records.id"), primary_key=True),
        sa.Column("prediction", sa.Text, nullable=False),
        sa.Column("scores", sa.Text, nullable=False),
        sa.Column("latency_ms", sa.Float),
        sa.Column("output_tokens", sa.Integer),
    )
    op.create_index("ix_snapshot_records_record", "snapshot_records", ["record_id"])


def m003_curation(op: Operations) -> None:
    op.create_table(
        "curation_decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("snapshot_id", sa.String(64), sa.ForeignKey("snapshots.id"), nullable=False),
        sa.Column("record_id", sa.Integer, sa.ForeignKey("records.id"), nullable=False),
        sa.Column("step", sa.String(32), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_table(
        "record_features",
        sa.Column("record_id", sa.Integer, sa.ForeignKey("records.id"), primary_key=True),
        sa.Column("kind", sa.String(160), primary_key=True),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
    )
    op.create_index("ix_curation_decisions_record", "curation_decisions", ["record_id"])
    op.create_index("ix_curation_decisions_snapshot", "curation_decisions", ["snapshot_id"])


def m004_prediction_confidence(op: Operations) -> None:
    # Nullable, so evaluations stored before it simply have no confidence (and SQLite can add
    # it with a plain ALTER TABLE, no table copy).
    op.add_column("predictions", sa.Column("confidence", sa.Float))


@dataclass(frozen=True)
class Migration:
    name: str
    apply: Callable[[Operations], None]


# Append only: a store records which of these it has, by name.
MIGRATIONS: list[Migration] = [
    Migration("m001_core", m001_core),
    Migration("m002_lineage", m002_lineage),
    Migration("m003_curation", m003_curation),
    Migration("m004_prediction_confidence", m004_prediction_confidence),
]
NAMES = [m.name for m in MIGRATIONS]


def applied(conn: sa.Connection) -> list[str]:
    """The names of the migrations this store has, in the order they were applied."""
    if not sa.inspect(conn).has_table(APPLIED.name):
        return []
    rows = conn.execute(sa.select(APPLIED.c.name, APPLIED.c.applied_at)).all()
    order = {name: i for i, name in enumerate(NAMES)}
    return [r.name for r in sorted(rows, key=lambda r: (order.get(r.name, len(order)), r[1]))]


def _adopt_legacy_version(conn: sa.Connection) -> None:
    """A store that counted its migrations as one integer N has the first N by name."""
    if not sa.inspect(conn).has_table(_LEGACY):
        return
    legacy = sa.table(_LEGACY, sa.column("key"), sa.column("value"))
    row = conn.execute(sa.select(legacy.c.value).where(legacy.c.key == "schema_version")).first()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise StoreError(
            f"the store is at schema version {version}, newer than this Whetstone "
            f"understands ({len(MIGRATIONS)}); upgrade whetstone to use it"
        )
    _record(conn, NAMES[:version])
    conn.execute(sa.text(f"DROP TABLE {_LEGACY}"))


def _record(conn: sa.Connection, names: list[str]) -> None:
    now = utcnow().isoformat(timespec="microseconds")
    for name in names:
        conn.execute(APPLIED.insert().values(name=name, applied_at=now))


def migrate(engine: sa.Engine, *, upto: str | None = None) -> list[str]:
    """Apply the migrations this store lacks, in order (up to and including `upto`, for
    tests that build an older store); return the names applied now."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # One migrator at a time when several processes open a fresh store together. Taken
            # before the first CREATE TABLE, which races too; SQLite's BEGIN IMMEDIATE already
            # serialises them.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7401)"))
        if not sa.inspect(conn).has_table(APPLIED.name):
            APPLIED.create(conn)
            _adopt_legacy_version(conn)
        have = applied(conn)
        unknown = [n for n in have if n not in NAMES]
        if unknown:
            raise StoreError(
                f"the store has migration(s) {', '.join(unknown)} that this Whetstone does "
                "not know; upgrade whetstone to use it"
            )
        wanted = NAMES[: NAMES.index(upto) + 1] if upto is not None else NAMES
        todo = [m for m in MIGRATIONS if m.name in wanted and m.name not in have]
        op = Operations(MigrationContext.configure(conn))
        for m in todo:
            m.apply(op)
        _record(conn, [m.name for m in todo])
    return [m.name for m in todo]
