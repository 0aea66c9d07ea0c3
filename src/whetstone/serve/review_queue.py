"""What the review page asks the store: the queue of records to check, in the order a person
should check them, and the error categories reviewers have already used.

The order puts the records most likely to be wrong first: those a user gave a thumbs-down or
a curator tagged `hard`, then the model's least confident answers. It is one SQL query, so a
store of a million production records pages as fast as one of a hundred.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from whetstone.errors import InvalidInput
from whetstone.records import Record, Status
from whetstone.store import Store, schema

PRIORITY_TAGS = ("thumbs-down", "hard")


@dataclass
class QueuePage:
    records: list[Record]
    total: int  # how many records match the filters, over all pages


def _conditions(task: str | None, status: str | None) -> list[Any]:
    r = schema.records.c
    conds: list[Any] = []
    if task is not None:
        conds.append(r.task == task)
    if status is not None:
        try:
            conds.append(r.status == Status(status).value)
        except ValueError:
            choices = ", ".join(s.value for s in Status)
            raise InvalidInput(f"unknown status {status!r} (choose from {choices})") from None
    return conds


def priority_order() -> list[Any]:
    """Flagged first, then lowest confidence (unknown confidence after every known one),
    then oldest first so that the order is total and pages never overlap."""
    r = schema.records.c
    # The quoted JSON string matches a whole tag, as Store's own tag filter does.
    flagged = sa.or_(*(r.tags.contains(json.dumps(t), autoescape=True) for t in PRIORITY_TAGS))
    return [
        sa.case((flagged, 0), else_=1),
        sa.case((r.confidence.is_(None), 1), else_=0),
        r.confidence,
        r.id,
    ]


def review_queue(
    store: Store,
    *,
    task: str | None = None,
    status: str | None = Status.unreviewed.value,
    limit: int = 50,
    offset: int = 0,
) -> QueuePage:
    conds = _conditions(task, status)
    ids_query = (
        sa.select(schema.records.c.id)
        .where(*conds)
        .order_by(*priority_order())
        .offset(offset)
        .limit(limit)
    )
    with store.begin() as c:
        ids = [int(row[0]) for row in c.execute(ids_query)]
    return QueuePage(
        records=records_in_order(store, ids), total=store.count_records(task, status=status)
    )


def records_in_order(store: Store, ids: Sequence[int]) -> list[Record]:
    """The records with these ids, in the order given (ids no longer in the store are skipped)."""
    by_id = {rec.id: rec for rec in store.list_records(ids=list(ids))} if ids else {}
    return [by_id[i] for i in ids if i in by_id]


def error_categories(store: Store, task: str | None = None) -> list[str]:
    """Every error category already given to a record (of `task`), most used first: the page
    offers them as suggestions so that reviewers converge on one spelling."""
    r = schema.records.c
    conds = [r.error_category.is_not(None), r.error_category != ""]
    if task is not None:
        conds.append(r.task == task)
    uses = sa.func.count().label("uses")
    query = (
        sa.select(r.error_category, uses)
        .where(*conds)
        .group_by(r.error_category)
        .order_by(uses.desc(), r.error_category)
        .limit(200)
    )
    with store.begin() as c:
        return [str(row[0]) for row in c.execute(query)]
