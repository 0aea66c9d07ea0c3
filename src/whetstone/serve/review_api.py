"""`/review/api/...`: the review page's JSON API; here its settings (`/config`) and its queue
(`/queue`), in `review_records` the records and the decisions on them. Every route needs the key
(header or the page's cookie) and state-changing ones a JSON body from the page's own origin
(see `auth`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from whetstone.errors import InvalidInput, WhetstoneError
from whetstone.project import Project
from whetstone.records import Record, Source, Status
from whetstone.serve import auth
from whetstone.serve.errors import from_whetstone
from whetstone.serve.review import SECURITY_HEADERS
from whetstone.serve.review_queue import error_categories, review_queue
from whetstone.serve.state import services
from whetstone.storable import MAX_ID

QUEUE_PAGE_MAX = 200
MAX_OFFSET = MAX_ID - QUEUE_PAGE_MAX  # offset + limit must fit too


def new_router() -> APIRouter:
    return APIRouter(
        prefix="/review/api",
        tags=["review"],
        dependencies=[Depends(auth.require_review_key), Depends(auth.require_json)],
    )


router = new_router()


def project_of(request: Request) -> Project:
    return services(request).project


def json_error(e: WhetstoneError) -> JSONResponse:
    response = from_whetstone(e).response()
    response.headers.update(SECURITY_HEADERS)
    return response


def json_ok(data: Any) -> JSONResponse:
    return JSONResponse(data, headers=SECURITY_HEADERS)


def _next_to_label() -> Any:
    """The `curate next` ranking, when the curate stage is installed; None otherwise."""
    try:
        from whetstone.curate.next import next_to_label
    except ImportError:
        return None
    return next_to_label


def _summary(rec: Record) -> dict[str, Any]:
    text = " ".join(rec.input_text.split())
    return {
        "id": rec.id,
        "task": rec.task,
        "status": rec.status.value,
        "confidence": rec.confidence,
        "tags": rec.tags,
        "preview": text[:120],
    }


@router.get("/config")
def config(request: Request) -> Response:
    project = project_of(request)
    tasks = project.store.list_tasks()
    return json_ok(
        {
            "tasks": [{"name": t.name, "kind": t.kind.value, "labels": t.labels} for t in tasks],
            "statuses": [s.value for s in Status],
            "curate_available": _next_to_label() is not None,
            "categories": error_categories(project.store),
            "login": auth.configured_key(request) is not None,
            "csrf_token": auth.csrf_token(request),
        }
    )


@router.get("/queue")
def queue(
    request: Request,
    task: str | None = None,
    status: str | None = Status.unreviewed.value,
    order: str = Query("priority", pattern="^(priority|curate)$"),
    limit: int = Query(50, ge=1, le=QUEUE_PAGE_MAX),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> Response:
    project = project_of(request)
    task = task or None
    status = None if status in (None, "", "all") else status
    try:
        if task is not None:
            project.task(task)
        if order == "curate":
            records, total = _curate_page(project, task, status, limit, offset)
        else:
            page = review_queue(project.store, task=task, status=status, limit=limit, offset=offset)
            records, total = page.records, page.total
    except WhetstoneError as e:
        return json_error(e)
    return json_ok({"items": [_summary(r) for r in records], "total": total, "offset": offset})


def _curate_page(
    project: Project, task: str | None, status: str | None, limit: int, offset: int
) -> tuple[list[Record], int]:
    next_to_label = _next_to_label()
    if next_to_label is None:
        raise InvalidInput("the `curate next` ranking is not installed")
    if task is None:
        raise InvalidInput("choose a task: the `curate next` ranking is made per task")
    if status not in (None, Status.unreviewed.value):
        return [], 0  # the ranking is of records nobody has reviewed yet
    ranked = next_to_label(project, task, offset + limit)  # [(record, score, parts)]
    records = [item[0] for item in ranked[offset : offset + limit]]
    # What `curate next` ranks: the task's unreviewed production records.
    total = project.store.count_records(
        task, status=Status.unreviewed.value, source=Source.production.value
    )
    return records, total
