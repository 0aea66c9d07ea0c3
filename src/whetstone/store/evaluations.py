"""Evaluation rows: `evaluations` and their per-record `predictions`. JSON columns (`metrics`,
`info`, `scores`) go in and come out decoded."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from whetstone.store import row_by_prefix, schema

if TYPE_CHECKING:
    from whetstone.store import Store

_E, _P = schema.evaluations, schema.predictions


def add_evaluation(
    store: Store, evaluation: dict[str, Any], predictions: Sequence[dict[str, Any]]
) -> None:
    """One evaluation row (columns of `evaluations`) and its predictions (columns of
    `predictions` less `evaluation_id`), in one transaction."""
    row = {
        **evaluation,
        "metrics": json.dumps(evaluation["metrics"]),
        "info": json.dumps(evaluation["info"], default=str),
    }
    with store.begin() as c:
        c.execute(_E.insert().values(**row))
        if predictions:
            c.execute(
                _P.insert(),
                [
                    {**p, "evaluation_id": row["id"], "scores": json.dumps(p["scores"])}
                    for p in predictions
                ],
            )


def evaluation_row(store: Store, prefix: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The evaluation whose id is `prefix` or starts with it, and its predictions by record."""
    with store.read() as c:
        row = row_by_prefix(c, _E, prefix, "evaluation")
        preds = c.execute(
            sa.select(_P).where(_P.c.evaluation_id == row["id"]).order_by(_P.c.record_id)
        ).mappings()
        predictions = [{**p, "scores": json.loads(p["scores"])} for p in preds]
    return _decoded(row), predictions


def evaluation_summaries(store: Store, task: str | None = None) -> list[dict[str, Any]]:
    """Evaluations, oldest first, without predictions or info."""
    q = sa.select(
        _E.c.id, _E.c.task, _E.c.model, _E.c.snapshot_id, _E.c.split, _E.c.metrics, _E.c.created_at
    )
    if task:
        q = q.where(_E.c.task == task)
    with store.read() as c:
        rows = c.execute(q.order_by(_E.c.created_at)).mappings().all()
    return [{**r, "metrics": json.loads(r["metrics"])} for r in rows]


def evaluation_infos(
    store: Store, task: str, model: str, split: str, snapshot_id: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(id, info) of the evaluations of `model` on a split (of one snapshot), newest first."""
    q = sa.select(_E.c.id, _E.c.info).where(
        _E.c.task == task, _E.c.model == model, _E.c.split == split
    )
    if snapshot_id:
        q = q.where(_E.c.snapshot_id == snapshot_id)
    with store.read() as c:
        rows = c.execute(q.order_by(_E.c.created_at.desc())).all()
    return [(r[0], json.loads(r[1])) for r in rows]


def _decoded(row: Any) -> dict[str, Any]:
    return {**row, "metrics": json.loads(row["metrics"]), "info": json.loads(row["info"])}
