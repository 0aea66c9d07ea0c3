"""What the review page asks the store: a page of the queue of records to check, in the order
a person should check them (the order is `store.review.priority_order`), and the error
categories reviewers have already used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from whetstone.records import Record, Status
from whetstone.store import Store
from whetstone.store import review as stored
from whetstone.store.review import error_categories

__all__ = ["QueuePage", "error_categories", "records_in_order", "review_queue"]


@dataclass
class QueuePage:
    records: list[Record]
    total: int  # how many records match the filters, over all pages


def review_queue(
    store: Store,
    *,
    task: str | None = None,
    status: str | None = Status.unreviewed.value,
    limit: int = 50,
    offset: int = 0,
) -> QueuePage:
    ids = stored.queue_ids(store, task=task, status=status, limit=limit, offset=offset)
    return QueuePage(
        records=records_in_order(store, ids), total=store.count_records(task, status=status)
    )


def records_in_order(store: Store, ids: Sequence[int]) -> list[Record]:
    """The records with these ids, in the order given (ids no longer in the store are skipped)."""
    by_id = {rec.id: rec for rec in store.list_records(ids=list(ids))} if ids else {}
    return [by_id[i] for i in ids if i in by_id]
