"""`/v1/feedback`: a rating or a corrected reference for a captured answer, named by its
reference (`X-Whetstone-Record`, or the completion id `chatcmpl-<ref>`) or its numeric id."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from whetstone.errors import InvalidInput, NotFound
from whetstone.records import Record, Status
from whetstone.serve import openai_api as api
from whetstone.serve.auth import require_json, require_key
from whetstone.serve.errors import APIError
from whetstone.serve.state import Services, Svc

THUMBS_DOWN = "thumbs-down"

router = APIRouter(dependencies=[Depends(require_key), Depends(require_json)])


@router.post("/v1/feedback")
async def feedback(request: Request, svc: Svc) -> dict[str, Any]:
    fb = api.parse(api.Feedback, await request.body())
    return await run_in_threadpool(apply_feedback, svc, fb)


def record_id(svc: Services, ref: int | str) -> int:
    """The store id of the record `ref` names; waits a little for one still being captured."""
    if isinstance(ref, int):  # api.Feedback turns an id given as digits into a bounded int
        return ref
    key = ref.removeprefix("chatcmpl-").removeprefix("cmpl-")
    if svc.capture.is_pending(key) and not svc.capture.wait_stored(key, timeout=5.0):
        raise APIError(
            503,
            f"record {ref} is not in the store yet (the store is down); retry later",
            code="store_unavailable",
            param="record_id",
        )
    rid = svc.project.store.find_source_key(key)
    if rid is None:
        raise APIError(404, f"unknown record {ref}", code="record_not_found", param="record_id")
    return rid


def apply_feedback(svc: Services, fb: api.Feedback) -> dict[str, Any]:
    rid = record_id(svc, fb.record_id)
    try:
        rec = _apply(svc, rid, fb)
    except NotFound as e:
        raise APIError(404, str(e), code="record_not_found", param="record_id") from None
    except InvalidInput as e:
        raise APIError(400, str(e), code="invalid_value", param="reference") from None
    return {"id": rec.id, "object": "feedback", "status": rec.status.value, "tags": rec.tags}


def _apply(svc: Services, rid: int, fb: api.Feedback) -> Record:
    store = svc.project.store
    if fb.reference is not None:
        return store.review(
            rid,
            Status.corrected,
            reference=fb.reference,
            error_category=fb.error_category,
            annotator=fb.annotator,
            comment=fb.comment,
            rating=fb.thumbs,
        )
    if fb.thumbs == 1:
        return store.review(
            rid,
            Status.accepted,
            error_category=fb.error_category,
            annotator=fb.annotator,
            comment=fb.comment,
            rating=1,
        )
    if fb.thumbs == -1:
        # A thumbs down says the answer is wrong, not what is right: the record stays
        # unreviewed, tagged, first in the review queue.
        store.add_tags(rid, THUMBS_DOWN)
        store.update_meta(
            rid,
            thumbs_down={
                "error_category": fb.error_category,
                "comment": fb.comment,
                "annotator": fb.annotator,
                "at": time.time(),
            },
        )
        return store.get_record(rid)
    raise APIError(400, "feedback needs a rating or a reference", code="invalid_value")
