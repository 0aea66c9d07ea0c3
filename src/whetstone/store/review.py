"""What the review page asks of the records: the queue in the order a person should check
it, and the error categories reviewers have already used.

The order puts the records most likely to be wrong first: those a user gave a thumbs-down or
a curator tagged `hard`, then the model's least confident answers. It is one SQL query, so a
store of a million production records pages as fast as one of a hundred.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from whetstone.errors import InvalidInput
from whetstone.records import Status
from whetstone.store import schema

if TYPE_CHECKING:
    from whetstone.store import Store

PRIORITY_TAGS = ("thumbs-down", "hard")
_R = schema.records.c


def _conditions(task: str | None, status: str | None) -> list[Any]:
    conds: list[Any] = []
    if task is not None:
        conds.append(_R.task == task)
    if status is not None:
        try:
            conds.append(_R.status == Status(status).value)
        except ValueError:
            choices = ", ".join(s.value for s in Status)
            raise InvalidInput(f"unknown status {status!r} (choose from {choices})") from None
    return conds


def priority_order() -> list[Any]:
    """Flagged first, then lowest confidence (unknown confidence after every known one),
    then oldest first so that the order is total and pages never overlap."""
    # The quoted JSON string matches a whole tag, as Store's own tag filter does.
    flagged = sa.or_(*(_R.tags.contains(json.dumps(t), autoescape=True) for t in PRIORITY_TAGS))
    return [
        sa.case((flagged, 0), else_=1),
        sa.case((_R.confidence.is_(None), 1), else_=0),
        _R.confidence,
        _R.id,
    ]


def queue_ids(
    store: Store, *, task: str | None, status: str | None, limit: int, offset: int
) -> list[int]:
    """One page of the review queue: record ids, most likely wrong first."""
    q = (
        sa.select(_R.id)
        .where(*_conditions(task, status))
        .order_by(*priority_order())
        .offset(offset)
        .limit(limit)
    )
    with store.read() as c:
        return [int(row[0]) for row in c.execute(q)]


def error_categories(store: Store, task: str | None = None) -> list[str]:
    """Every error category already given to a record (of `task`), most used first: the page
    offers them as suggestions so that reviewers converge on one spelling."""
    conds = [_R.error_category.is_not(None), _R.error_category != ""]
    if task is not None:
        conds.append(_R.task == task)
    uses = sa.func.count().label("uses")
    q = (
        sa.select(_R.error_category, uses)
        .where(*conds)
        .group_by(_R.error_category)
        .order_by(uses.desc(), _R.error_category)
        .limit(200)
    )
    with store.read() as c:
        return [str(row[0]) for row in c.execute(q)]
