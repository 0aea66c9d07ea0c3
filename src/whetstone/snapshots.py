"""Dataset snapshots: a frozen list of record ids with their split, addressed by content hash.

A snapshot hashes the ids, splits, weights *and* the references it froze, so a later correction
of a record makes a new snapshot rather than silently changing an old one.

The test split is stable across snapshots: a record's split is decided by a hash of its
normalised input text, so the same input always lands in the same split and numbers stay
comparable from one flywheel turn to the next.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from whetstone.errors import InvalidInput, NotFound
from whetstone.project import Project
from whetstone.records import Record, Source, Status, canonical_json, utcnow
from whetstone.store import row_by_prefix, schema

SPLITS = ("train", "validation", "test")
# Records with these tags are held out: they may be evaluated on, never trained on.
HELD_OUT_TAGS = {"heldout", "hard-eval"}


@dataclass
class Snapshot:
    id: str
    task: str
    created_at: datetime
    info: dict[str, Any]
    splits: dict[str, list[int]] = field(default_factory=dict)
    weights: dict[int, float] = field(default_factory=dict)

    def ids(self, split: str) -> list[int]:
        if split == "all":
            return [i for s in SPLITS for i in self.splits.get(s, [])]
        if split not in SPLITS:
            raise InvalidInput(f"unknown split {split!r} (choose from {', '.join(SPLITS)}, all)")
        return list(self.splits.get(split, []))

    def counts(self) -> dict[str, int]:
        return {s: len(self.splits.get(s, [])) for s in SPLITS}


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def split_bucket(text: str) -> float:
    """A number in [0, 1) fixed by the normalised text: the record's place in the split."""
    h = hashlib.sha256(normalise_text(text).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def is_held_out(rec: Record) -> bool:
    """Tagged as held-out ground truth: always test, never trained on."""
    return bool(HELD_OUT_TAGS & set(rec.tags))


def trainable(rec: Record) -> bool:
    """Has a trustworthy reference and may be used for training or evaluation."""
    if rec.reference is None or rec.status == Status.rejected:
        return False
    # A model's own unreviewed answer is not ground truth.
    return not (rec.source == Source.production and rec.status == Status.unreviewed)


def default_assignment(
    records: list[Record], *, validation: float = 0.1, test: float = 0.2
) -> dict[int, str]:
    """Hash split: test first (stable), then validation, the rest train."""
    if not 0 <= validation < 1 or not 0 <= test < 1 or validation + test >= 1:
        raise InvalidInput("split fractions must be in [0, 1) and leave room for training")
    out: dict[int, str] = {}
    for r in records:
        assert r.id is not None
        b = split_bucket(r.input_text)
        if b < test or is_held_out(r):
            out[r.id] = "test"
        elif b < test + validation:
            out[r.id] = "validation"
        else:
            out[r.id] = "train"
    return out


def freeze(
    project: Project,
    task: str,
    assignment: dict[int, str],
    *,
    info: dict[str, Any] | None = None,
    weights: dict[int, float] | None = None,
    fingerprint: str | None = None,
) -> Snapshot:
    """Store a snapshot (idempotent: the same content gives the same id). `fingerprint` names
    anything else the content depends on (curation's rewritten texts), so it changes the id."""
    project.task(task)
    bad = {s for s in assignment.values() if s not in SPLITS}
    if bad:
        raise InvalidInput(f"unknown split(s) {sorted(bad)}")
    weights = weights or {}
    recs = {r.id: r for r in project.store.iter_records(task, ids=list(assignment))}
    missing = set(assignment) - set(recs)
    if missing:
        raise NotFound(f"snapshot names records that do not exist: {sorted(missing)[:5]}")
    h = hashlib.sha256(task.encode())
    for rid in sorted(assignment):
        r = recs[rid]
        h.update(
            canonical_json([rid, assignment[rid], weights.get(rid, 1.0), r.reference]).encode()
        )
    if fingerprint:
        h.update(fingerprint.encode())
    sid = h.hexdigest()[:16]
    info = dict(info or {})
    info.setdefault("counts", {s: sum(1 for v in assignment.values() if v == s) for s in SPLITS})
    now = utcnow()
    with project.store.begin() as c:
        if (
            c.execute(sa.select(schema.snapshots.c.id).where(schema.snapshots.c.id == sid)).first()
            is None
        ):
            c.execute(
                schema.snapshots.insert().values(
                    id=sid,
                    task=task,
                    info=json.dumps(info, default=str),
                    created_at=now.isoformat(),
                )
            )
            rows = [
                {
                    "snapshot_id": sid,
                    "record_id": rid,
                    "split": s,
                    "weight": float(weights.get(rid, 1.0)),
                }
                for rid, s in assignment.items()
            ]
            if rows:
                c.execute(schema.snapshot_records.insert(), rows)
    return load(project, sid)


def load(project: Project, snapshot_id: str) -> Snapshot:
    """Load by id or unique id prefix."""
    t = schema.snapshots
    with project.store.begin() as c:
        row = row_by_prefix(c, t, snapshot_id, "snapshot")
        sr = schema.snapshot_records
        members = c.execute(
            sa.select(sr).where(sr.c.snapshot_id == row["id"]).order_by(sr.c.record_id)
        ).mappings()
        splits: dict[str, list[int]] = {s: [] for s in SPLITS}
        weights: dict[int, float] = {}
        for m in members:
            splits[m["split"]].append(m["record_id"])
            if m["weight"] != 1.0:
                weights[m["record_id"]] = m["weight"]
    return Snapshot(
        id=row["id"],
        task=row["task"],
        created_at=datetime.fromisoformat(row["created_at"]),
        info=json.loads(row["info"]),
        splits=splits,
        weights=weights,
    )


def latest(project: Project, task: str) -> Snapshot | None:
    t = schema.snapshots
    with project.store.begin() as c:
        row = c.execute(
            sa.select(t.c.id).where(t.c.task == task).order_by(t.c.created_at.desc()).limit(1)
        ).first()
    return load(project, row[0]) if row else None


def list_snapshots(project: Project, task: str | None = None) -> list[Snapshot]:
    t = schema.snapshots
    q = sa.select(t.c.id).order_by(t.c.created_at)
    if task:
        q = q.where(t.c.task == task)
    with project.store.begin() as c:
        ids = [r[0] for r in c.execute(q)]
    return [load(project, i) for i in ids]


def records(project: Project, snap: Snapshot, split: str) -> list[Record]:
    ids = snap.ids(split)
    if not ids:
        return []
    by_id = {r.id: r for r in project.store.iter_records(snap.task, ids=ids)}
    return [by_id[i] for i in ids if i in by_id]


def test_ids_in_use(project: Project, task: str) -> set[int]:
    """Every record any snapshot of the task has put in its test split: never train on them."""
    sr, t = schema.snapshot_records, schema.snapshots
    with project.store.begin() as c:
        rows = c.execute(
            sa.select(sr.c.record_id)
            .join(t, t.c.id == sr.c.snapshot_id)
            .where(t.c.task == task, sr.c.split == "test")
        )
        return {r[0] for r in rows}


def snapshot_task(
    project: Project,
    task: str,
    *,
    validation: float = 0.1,
    test: float = 0.2,
    info: dict[str, Any] | None = None,
) -> Snapshot:
    """The default snapshot, without curation: every trainable record, hash-split, with the
    test records of earlier snapshots kept in test."""
    recs = [r for r in project.store.iter_records(task, has_reference=True) if trainable(r)]
    if not recs:
        raise InvalidInput(f"task {task!r} has no records with a reference to train or evaluate on")
    assignment = default_assignment(recs, validation=validation, test=test)
    for rid in test_ids_in_use(project, task) & set(assignment):
        assignment[rid] = "test"
    return freeze(
        project,
        task,
        assignment,
        info={"method": "default-split", "validation": validation, "test": test, **(info or {})},
    )
