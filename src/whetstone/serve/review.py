"""`/review`: the web page where a person checks captured records, and its JSON API.

The page (static/review.html + review.js, no build step, nothing from a CDN) shows a queue of
records, most-likely-wrong first; the input beside the model's answer; and accepts, rejects or
corrects each one through `/review/api/...`, which apply the same rules as
`whetstone records correct` (a reference outside the label set or failing the schema is refused
and nothing is stored).

With an API key set, every route here but the login form needs the key: as an
`Authorization: Bearer` header, or as the HttpOnly cookie `/review/login` sets once a person
has typed it (the cookie counts on these routes only). State-changing requests must come from
the page's own origin, and those riding on the cookie carry its CSRF token (see `auth`). The
page itself never sees the key, and record text is only ever inserted as text (never as
HTML), under a Content-Security-Policy that allows no inline script.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from whetstone.errors import InvalidInput, WhetstoneError
from whetstone.records import Kind, Record, Source, Status
from whetstone.serve import auth
from whetstone.serve.errors import APIError, from_whetstone
from whetstone.serve.review_queue import error_categories, review_queue
from whetstone.storable import MAX_ID

router = APIRouter(tags=["review"])

STATIC = Path(__file__).parent / "static"
# The page's own files; nothing else under static/ is ever served.
ASSETS = {"review.js": "text/javascript", "review.css": "text/css"}
MAX_LOGIN_BODY = 4096
QUEUE_PAGE_MAX = 200
# Bounded so that a huge number is a 400 naming the parameter, not an integer overflow in the
# store's driver.
RecordId = Annotated[int, PathParam(ge=0, le=MAX_ID)]
MAX_OFFSET = MAX_ID - QUEUE_PAGE_MAX  # offset + limit must fit too

PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# The login form has no script at all; its few style rules are inline so that it needs
# nothing that sits behind the login.
LOGIN_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Nothing is sent to other origins; our own requests keep their Origin header, which a
    # browser sets to "null" under no-referrer, and which the forgery check reads.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# ---- the page -----------------------------------------------------------------------------
@router.get("/review", include_in_schema=False)
def page(request: Request) -> Response:
    if not auth.has_key(request):
        return RedirectResponse("/review/login", status_code=303)
    return FileResponse(
        STATIC / "review.html",
        media_type="text/html; charset=utf-8",
        headers={**SECURITY_HEADERS, "Content-Security-Policy": PAGE_CSP},
    )


@router.get(
    "/review/static/{name}",
    include_in_schema=False,
    dependencies=[Depends(auth.require_review_key)],
)
def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise APIError(404, f"the review page has no file {name!r}")
    return FileResponse(
        STATIC / name, media_type=f"{media_type}; charset=utf-8", headers=SECURITY_HEADERS
    )


def _login_form(error: str | None = None) -> str:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Whetstone review · log in</title>
<style>
body{{font:15px/1.4 system-ui,sans-serif;background:#f4f5f7;color:#1d2433;display:grid;
place-items:center;min-height:100vh;margin:0}}
form{{background:#fff;padding:28px 32px;border-radius:10px;box-shadow:0 2px 12px #0002;
width:320px}}
h1{{font-size:18px;margin:0 0 16px}}
label{{display:block;font-weight:600;margin-bottom:6px}}
input{{width:100%;box-sizing:border-box;padding:8px;border:1px solid #c5cad3;border-radius:6px;
font:inherit}}
button{{margin-top:14px;width:100%;padding:9px;border:0;border-radius:6px;background:#2f5bea;
color:#fff;font:inherit;font-weight:600;cursor:pointer}}
.error{{color:#b42318;margin:0 0 12px}}
</style></head>
<body><form method="post" action="/review/login">
<h1>Whetstone review</h1>{message}
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="current-password" autofocus required>
<button type="submit">Log in</button>
</form></body></html>"""


def _login_response(error: str | None, status_code: int) -> HTMLResponse:
    return HTMLResponse(
        _login_form(error),
        status_code=status_code,
        headers={**SECURITY_HEADERS, "Content-Security-Policy": LOGIN_CSP},
    )


@router.get("/review/login", include_in_schema=False)
def login_form(request: Request) -> Response:
    if auth.configured_key(request) is None:
        return RedirectResponse("/review", status_code=303)
    return _login_response(None, 200)


async def _form_field(request: Request, name: str) -> str | None:
    """One field of a small url-encoded form; None when the body is over MAX_LOGIN_BODY."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_BODY:
            return None
    fields = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=8)
    return (fields.get(name) or [""])[0]


@router.post("/review/login", include_in_schema=False)
async def login(request: Request) -> Response:
    key = auth.configured_key(request)
    if key is None:
        return RedirectResponse("/review", status_code=303)
    if not auth.same_origin(request):
        return _login_response("Log in from this server's own page.", 403)
    offered = await _form_field(request, "key")
    if offered is None:
        return _login_response("That is far longer than any key.", 413)
    try:
        if not auth.check_key(request, offered):
            return _login_response("Wrong key.", 401)
    except auth.Throttled as e:
        response = _login_response(
            f"Too many wrong keys. Try again in {e.retry_after} s.", e.status
        )
        response.headers.update(e.headers or {})
        return response
    response = RedirectResponse("/review", status_code=303)
    response.set_cookie(
        auth.KEY_COOKIE,
        auth.new_session(key),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/review/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    auth.check_forgery(request, await _form_field(request, auth.CSRF_FIELD))
    response = RedirectResponse("/review/login", status_code=303)
    response.delete_cookie(auth.KEY_COOKIE, path="/", httponly=True, samesite="strict")
    return response


# ---- the JSON API -------------------------------------------------------------------------
api = APIRouter(
    prefix="/review/api",
    dependencies=[Depends(auth.require_review_key), Depends(auth.require_json)],
)


def _project(request: Request) -> Any:
    return request.app.state.project


def _error(e: WhetstoneError) -> JSONResponse:
    response = from_whetstone(e).response()
    response.headers.update(SECURITY_HEADERS)
    return response


def _json(data: Any) -> JSONResponse:
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


@api.get("/config")
def config(request: Request) -> Response:
    project = _project(request)
    tasks = project.store.list_tasks()
    return _json(
        {
            "tasks": [{"name": t.name, "kind": t.kind.value, "labels": t.labels} for t in tasks],
            "statuses": [s.value for s in Status],
            "curate_available": _next_to_label() is not None,
            "categories": error_categories(project.store),
            "login": auth.configured_key(request) is not None,
            "csrf_token": auth.csrf_token(request),
        }
    )


@api.get("/queue")
def queue(
    request: Request,
    task: str | None = None,
    status: str | None = Status.unreviewed.value,
    order: str = Query("priority", pattern="^(priority|curate)$"),
    limit: int = Query(50, ge=1, le=QUEUE_PAGE_MAX),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> Response:
    project = _project(request)
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
        return _error(e)
    return _json({"items": [_summary(r) for r in records], "total": total, "offset": offset})


def _curate_page(
    project: Any, task: str | None, status: str | None, limit: int, offset: int
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


def _record_json(project: Any, rec: Record) -> dict[str, Any]:
    task = project.task(rec.task)
    data = rec.model_dump(mode="json")
    data["kind"] = task.kind.value
    data["labels"] = task.labels if task.kind == Kind.classify else None
    data["categories"] = error_categories(project.store, rec.task)
    return data


@api.get("/records/{record_id}")
def record(request: Request, record_id: RecordId) -> Response:
    project = _project(request)
    try:
        return _json(_record_json(project, project.record(record_id)))
    except WhetstoneError as e:
        return _error(e)


def _blank_is_none(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


class Decision(BaseModel):
    annotator: str | None = Field(default=None, max_length=128)
    error_category: str | None = Field(default=None, max_length=128)
    comment: str | None = Field(default=None, max_length=10_000)


class CorrectionIn(Decision):
    reference: str = Field(max_length=1_000_000)


def _decide(request: Request, record_id: int, status: Status, body: Decision) -> Response:
    project = _project(request)
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
        return _json(_record_json(project, rec))
    except WhetstoneError as e:
        return _error(e)


@api.post("/records/{record_id}/accept")
def accept(request: Request, record_id: RecordId, body: Decision) -> Response:
    return _decide(request, record_id, Status.accepted, body)


@api.post("/records/{record_id}/reject")
def reject(request: Request, record_id: RecordId, body: Decision) -> Response:
    return _decide(request, record_id, Status.rejected, body)


@api.post("/records/{record_id}/correct")
def correct(request: Request, record_id: RecordId, body: CorrectionIn) -> Response:
    return _decide(request, record_id, Status.corrected, body)


router.include_router(api)
