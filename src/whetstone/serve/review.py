"""`/review`: the web page where a person checks captured records, and its JSON API.

The page (static/review.html + review.js, no build step, nothing from a CDN) shows a queue of
records, most-likely-wrong first; the input beside the model's answer; and accepts, rejects or
corrects each one through `/review/api/...`, which apply the same rules as
`whetstone records correct` (a reference outside the label set or failing the schema is refused
and nothing is stored). This module serves the page and its login; `review_api` the JSON API.

With an API key set, every route here but the login form needs the key: as an
`Authorization: Bearer` header, or as the HttpOnly cookie `/review/login` sets once a person
has typed it (the cookie counts on these routes only). State-changing requests must come from
the page's own origin, and those riding on the cookie carry its CSRF token (see `auth`). The
page itself never sees the key, and record text is only ever inserted as text (never as
HTML), under a Content-Security-Policy that allows no inline script.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from whetstone import pages
from whetstone.serve import auth
from whetstone.serve.errors import APIError

router = APIRouter(tags=["review"])

STATIC = Path(__file__).parent / "static"
# The page's own files; nothing else under static/ is ever served.
ASSETS = {"review.js": "text/javascript", "review.css": "text/css"}
MAX_LOGIN_BODY = 4096
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
    return pages.render("review_login.html", error=error)


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
        throttled = _login_response(
            f"Too many wrong keys. Try again in {e.retry_after} s.", e.status
        )
        throttled.headers.update(e.headers or {})
        return throttled
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
