"""Snapshot rows: `snapshots` and their members (`snapshot_records`). `whetstone.snapshots`
decides what a snapshot holds; these only read and write it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from whetstone.store import row_by_prefix, schema

if TYPE_CHECKING:
    from whetstone.store import Store

_S, _SR = schema.snapshots, schema.snapshot_records

# (record id, split, weight)
Member = tuple[int, str, float]


def add_snapshot(
    store: Store,
    snapshot_id: str,
    task: str,
    info: dict[str, Any],
    members: Sequence[Member],
    *,
    now: str,
) -> None:
    """Store a snapshot unless one with this (content-hash) id is already there."""
    with store.begin() as c:
        if c.execute(sa.select(_S.c.id).where(_S.c.id == snapshot_id)).first() is not None:
            return
        c.execute(
            _S.insert().values(
                id=snapshot_id, task=task, info=json.dumps(info, default=str), created_at=now
            )
        )
        rows = [
            {"snapshot_id": snapshot_id, "record_id": rid, "split": split, "weight": weight}
            for rid, split, weight in members
        ]
        if rows:
            c.execute(_SR.insert(), rows)


def snapshot_row(store: Store, prefix: str) -> tuple[dict[str, Any], list[Member]]:
    """The snapshot whose id is `prefix` or starts with it (`info` decoded), and its members
    in record id order."""
    with store.read() as c:
        row = row_by_prefix(c, _S, prefix, "snapshot")
        members = c.execute(
            sa.select(_SR.c.record_id, _SR.c.split, _SR.c.weight)
            .where(_SR.c.snapshot_id == row["id"])
            .order_by(_SR.c.record_id)
        ).all()
    return {**row, "info": json.loads(row["info"])}, [(m[0], m[1], m[2]) for m in members]


def latest_snapshot_id(store: Store, task: str) -> str | None:
    q = sa.select(_S.c.id).where(_S.c.task == task).order_by(_S.c.created_at.desc()).limit(1)
    with store.read() as c:
        row = c.execute(q).first()
    return str(row[0]) if row else None


def snapshot_ids(store: Store, task: str | None = None) -> list[str]:
    """Snapshot ids, oldest first."""
    q = sa.select(_S.c.id).order_by(_S.c.created_at)
    if task:
        q = q.where(_S.c.task == task)
    with store.read() as c:
        return [r[0] for r in c.execute(q)]


def record_splits(store: Store, task: str, split: str | None = None) -> list[tuple[int, str]]:
    """(record id, split) for every member of every snapshot of `task` (of one split)."""
    q = (
        sa.select(_SR.c.record_id, _SR.c.split)
        .join(_S, _S.c.id == _SR.c.snapshot_id)
        .where(_S.c.task == task)
    )
    if split is not None:
        q = q.where(_SR.c.split == split)
    with store.read() as c:
        return [(r[0], r[1]) for r in c.execute(q)]
