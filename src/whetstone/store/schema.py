"""The store's current tables, for the store's own queries (nothing outside `store/` uses
them). Changes go through a new migration in `migrations.py`; these definitions must match
what the migrations build (a test compares them)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("instruction", sa.Text),
    sa.Column("labels", sa.Text),  # JSON list
    sa.Column("schema", sa.Text),  # JSON Schema
    sa.Column("metric", sa.String(128)),
    sa.Column("created_at", sa.String(40), nullable=False),
)

records = sa.Table(
    "records",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task", sa.String(64), sa.ForeignKey("tasks.name"), nullable=False),
    sa.Column("input", sa.Text, nullable=False),  # JSON: a string or a list of messages
    sa.Column("input_text", sa.Text, nullable=False),  # the user's text, for search and dedup
    sa.Column("output", sa.Text),
    sa.Column("reference", sa.Text),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_category", sa.String(128)),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("model", sa.String(128)),
    sa.Column("confidence", sa.Float),
    sa.Column("tags", sa.Text, nullable=False),  # JSON list
    sa.Column("annotator", sa.String(128)),
    sa.Column("meta", sa.Text, nullable=False),  # JSON object
    sa.Column("source_key", sa.String(64)),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
    sa.Index("ix_records_task_status", "task", "status"),
    sa.Index("ix_records_task_source", "task", "source"),
    # Re-importing the same source row must not add it twice; NULL keys (captures) never clash.
    sa.Index("ux_records_source_key", "task", "source_key", unique=True),
)

record_events = sa.Table(
    "record_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("record_id", sa.Integer, sa.ForeignKey("records.id"), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reference", sa.Text),
    sa.Column("error_category", sa.String(128)),
    sa.Column("annotator", sa.String(128)),
    sa.Column("comment", sa.Text),
    sa.Column("rating", sa.Integer),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Index("ix_record_events_record", "record_id"),
)

# Derived, immutable things (snapshots, adapter versions, evaluations) keep their lineage here;
# their bulky artefacts (weights, reports) live as files under .whetstone/.
snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # content hash
    sa.Column("task", sa.String(64), sa.ForeignKey("tasks.name"), nullable=False),
    sa.Column("info", sa.Text, nullable=False),  # JSON: how it was made, counts, report
    sa.Column("created_at", sa.String(40), nullable=False),
)

snapshot_records = sa.Table(
    "snapshot_records",
    metadata,
    sa.Column("snapshot_id", sa.String(64), sa.ForeignKey("snapshots.id"), primary_key=True),
    sa.Column("record_id", sa.Integer, sa.ForeignKey("records.id"), primary_key=True),
    sa.Column("split", sa.String(16), nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Index("ix_snapshot_records_record", "record_id"),
)

adapters = sa.Table(
    "adapters",
    metadata,
    sa.Column("task", sa.String(64), sa.ForeignKey("tasks.name"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("path", sa.Text, nullable=False),  # relative to the project's .whetstone/
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("base_model", sa.Text, nullable=False),
    sa.Column("base_hash", sa.String(64), nullable=False),
    sa.Column("snapshot_id", sa.String(64)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("info", sa.Text, nullable=False),  # JSON: config, metrics, curves, versions
    sa.Column("created_at", sa.String(40), nullable=False),
)

registry_events = sa.Table(
    "registry_events",
    metadata,
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

evaluations = sa.Table(
    "evaluations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("task", sa.String(64), sa.ForeignKey("tasks.name"), nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("snapshot_id", sa.String(64)),
    sa.Column("split", sa.String(16), nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),  # JSON with confidence intervals
    sa.Column("info", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("evaluation_id", sa.String(64), sa.ForeignKey("evaluations.id"), primary_key=True),
    sa.Column("record_id", sa.Integer, sa.ForeignKey("records.id"), primary_key=True),
    sa.Column("prediction", sa.Text, nullable=False),
    sa.Column("scores", sa.Text, nullable=False),  # JSON: per-record metric values
    sa.Column("latency_ms", sa.Float),
    sa.Column("output_tokens", sa.Integer),
    sa.Column("confidence", sa.Float),  # m004: log-probability of the answer, 0 = certain
)

# Curation (m003): why each record is in or out of a snapshot, and features kept for re-use.
curation_decisions = sa.Table(
    "curation_decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("snapshot_id", sa.String(64), sa.ForeignKey("snapshots.id"), nullable=False),
    sa.Column("record_id", sa.Integer, sa.ForeignKey("records.id"), nullable=False),
    sa.Column("step", sa.String(32), nullable=False),
    # kept | removed | flagged | redacted | normalised | upweighted
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("detail", sa.Text, nullable=False),  # JSON object
    sa.Index("ix_curation_decisions_record", "record_id"),
    sa.Index("ix_curation_decisions_snapshot", "snapshot_id"),
)

record_features = sa.Table(
    "record_features",
    metadata,
    sa.Column("record_id", sa.Integer, sa.ForeignKey("records.id"), primary_key=True),
    sa.Column("kind", sa.String(160), primary_key=True),  # hash | minhash:… | embedding:<model>
    sa.Column("input_hash", sa.String(64), nullable=False),  # of the text the value came from
    sa.Column("value", sa.LargeBinary, nullable=False),
)
