"""Curation rows: why each record is in or out of a snapshot (`curation_decisions`) and
features kept across runs (`record_features`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from whetstone.store import schema

if TYPE_CHECKING:
    from whetstone.store import Store

_D, _S, _F = schema.curation_decisions, schema.snapshots, schema.record_features
# SQLite limits the number of bound parameters per statement.
_CHUNK = 500


def replace_decisions(store: Store, snapshot_id: str, decisions: Sequence[dict[str, Any]]) -> None:
    """Store a snapshot's decisions (record_id, step, action, reason, detail as a dict). The
    same content gives the same snapshot: its decisions are replaced, not doubled."""
    rows = [
        {
            **d,
            "snapshot_id": snapshot_id,
            "detail": json.dumps(d["detail"], default=str, ensure_ascii=False),
        }
        for d in decisions
    ]
    with store.begin() as c:
        c.execute(_D.delete().where(_D.c.snapshot_id == snapshot_id))
        for i in range(0, len(rows), 5000):
            c.execute(_D.insert(), rows[i : i + 5000])


def record_decisions(store: Store, record_id: int) -> list[dict[str, Any]]:
    """A record's decisions in every snapshot, newest snapshot first, `detail` decoded."""
    q = (
        sa.select(_D.c.snapshot_id, _D.c.step, _D.c.action, _D.c.reason, _D.c.detail)
        .join(_S, _S.c.id == _D.c.snapshot_id)
        .where(_D.c.record_id == record_id)
        .order_by(_S.c.created_at.desc(), _D.c.id)
    )
    with store.read() as c:
        rows = c.execute(q).mappings().all()
    return [{**r, "detail": json.loads(r["detail"])} for r in rows]


def snapshot_decisions(store: Store, snapshot_id: str) -> list[dict[str, Any]]:
    """Every decision of one snapshot, in the order they were made, `detail` decoded."""
    q = (
        sa.select(_D.c.record_id, _D.c.step, _D.c.action, _D.c.reason, _D.c.detail)
        .where(_D.c.snapshot_id == snapshot_id)
        .order_by(_D.c.id)
    )
    with store.read() as c:
        rows = c.execute(q).mappings().all()
    return [{**r, "detail": json.loads(r["detail"])} for r in rows]


def decision_details(store: Store, snapshot_id: str, action: str) -> dict[int, dict[str, Any]]:
    """record id -> detail of a snapshot's decisions with this action."""
    q = sa.select(_D.c.record_id, _D.c.detail).where(
        _D.c.snapshot_id == snapshot_id, _D.c.action == action
    )
    with store.read() as c:
        return {rid: json.loads(detail) for rid, detail in c.execute(q)}


def load_features(store: Store, kind: str, wanted: dict[int, str]) -> dict[int, bytes]:
    """Stored values of `kind` for the records in `wanted` (id -> input hash) that still match."""
    found: dict[int, bytes] = {}
    ids = list(wanted)
    with store.read() as c:
        for i in range(0, len(ids), _CHUNK):
            rows = c.execute(
                sa.select(_F.c.record_id, _F.c.input_hash, _F.c.value).where(
                    _F.c.kind == kind, _F.c.record_id.in_(ids[i : i + _CHUNK])
                )
            )
            for rid, h, value in rows:
                if wanted.get(rid) == h:
                    found[rid] = bytes(value)
    return found


def save_features(store: Store, kind: str, values: dict[int, tuple[str, bytes]]) -> None:
    """Store (input hash, value) per record id, replacing older values of the same kind."""
    ids = list(values)
    with store.begin() as c:
        for i in range(0, len(ids), _CHUNK):
            part = ids[i : i + _CHUNK]
            c.execute(_F.delete().where(_F.c.kind == kind, _F.c.record_id.in_(part)))
            c.execute(
                _F.insert(),
                [
                    {
                        "record_id": r,
                        "kind": kind,
                        "input_hash": values[r][0],
                        "value": values[r][1],
                    }
                    for r in part
                ],
            )
