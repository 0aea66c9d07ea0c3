"""`/review/api/records/...`: one record for the review page, and the decisions on it.
Accepting, rejecting or correcting applies the same rules as `whetstone records correct` (a
reference outside the label set or failing the schema is refused and nothing is stored)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path as PathParam
from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from whetstone.errors import WhetstoneError
from whetstone.project import Project
from whetstone.records import Kind, Record, Status
from whetstone.serve.review_api import json_error, json_ok, new_router, project_of
from whetstone.serve.review_queue import error_categories
from whetstone.storable import MAX_ID

# Bounded so that a huge number is a 400 naming the parameter, not an integer overflow in the
# store's driver.
RecordId = Annotated[int, PathParam(ge=0, le=MAX_ID)]

router = new_router()


def _record_json(project: Project, rec: Record) -> dict[str, Any]:
    task = project.task(rec.task)
    data = rec.model_dump(mode="json")
    data["kind"] = task.kind.value
    data["labels"] = task.labels if task.kind == Kind.classify else None
    data["categories"] = error_categories(project.store, rec.task)
    return data


@router.get("/records/{record_id}")
def record(request: Request, record_id: RecordId) -> Response:
    project = project_of(request)
    try:
        return json_ok(_record_json(project, project.record(record_id)))
    except WhetstoneError as e:
        return json_error(e)


def _blank_is_none(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


class Decision(BaseModel):
    annotator: str | None = Field(default=None, max_length=128)
    error_category: str | None = Field(default=None, max_length=128)
    comment: str | None = Field(default=None, max_length=10_000)


class CorrectionIn(Decision):
    reference: str = Field(max_length=1_000_000)


def _decide(request: Request, record_id: int, status: Status, body: Decision) -> Response:
    project = project_of(request)
    reference = body.reference if isinstance(body, CorrectionIn) else None
    try:
        rec = project.store.review(
            record_id,
            status,
            reference=reference,
            error_category=_blank_is_none(body.error_category),
            annotator=_blank_is_none(body.annotator),
            comment=_blank_is_none(body.comment),
        )
        return json_ok(_record_json(project, rec))
    except WhetstoneError as e:
        return json_error(e)


@router.post("/records/{record_id}/accept")
def accept(request: Request, record_id: RecordId, body: Decision) -> Response:
    return _decide(request, record_id, Status.accepted, body)


@router.post("/records/{record_id}/reject")
def reject(request: Request, record_id: RecordId, body: Decision) -> Response:
    return _decide(request, record_id, Status.rejected, body)


@router.post("/records/{record_id}/correct")
def correct(request: Request, record_id: RecordId, body: CorrectionIn) -> Response:
    return _decide(request, record_id, Status.corrected, body)
