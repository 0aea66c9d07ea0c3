"""Who may call what, and what a page on another origin must not be able to make a browser do.

With a key set, every endpoint but /healthz needs it. API clients (`/v1`, `/admin`,
`/metrics`, `/openapi.json`) send it as `Authorization: Bearer KEY`, and only so. The review
page's browser holds instead the HttpOnly `whetstone_key` cookie that `/review/login` sets: a
session signed with the key (never the key itself), which counts on `/review` routes only,
because a browser attaches it to requests that other pages make too. SameSite=Strict does not stop those: another port of the same host is the same
*site*. So a state-changing `/review` request must come from our own origin, and one that rides
on the cookie must also carry the CSRF token that only our own page can read (from
`/review/api/config`). State-changing API bodies must be JSON (`require_json`): a page on
another origin cannot send that without a CORS preflight, which this server never grants.

Wrong keys are throttled per client address (`KeyThrottle`), through the login form and the
Authorization header alike, so that the key cannot be guessed at speed either way.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from whetstone.serve.errors import APIError

KEY_COOKIE = "whetstone_key"
CSRF_HEADER = "X-Whetstone-CSRF"
CSRF_FIELD = "csrf"  # the same token, as a field of the page's logout form
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# ---- throttling wrong keys ----------------------------------------------------------------
@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    blocked_until: float = 0.0


class KeyThrottle:
    """Per client address: `free` wrong keys cost nothing (typos); each one after that blocks
    the address for twice as long as the one before (1 s, 2 s, 4 s ... up to `max_block_s`),
    and while blocked no key is checked at all, right or wrong, so that a block cannot be used
    to test keys. An address with no wrong key for `forget_s` starts afresh.

    Behind a proxy every client has the proxy's address: one client guessing blocks them all,
    which is the price of not trusting a header the client could set."""

    def __init__(
        self,
        free: int = 10,
        max_block_s: float = 300.0,
        forget_s: float = 900.0,
        max_clients: int = 10_000,
    ):
        self.free = free
        self.max_block_s = max_block_s
        self.forget_s = forget_s
        self.max_clients = max_clients
        self._clients: dict[str, _Failures] = {}
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may offer a key again; 0 when it may now."""
        with self._lock:
            f = self._clients.get(client)
            return max(0.0, f.blocked_until - time.monotonic()) if f else 0.0

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            f = self._clients.get(client)
            if f is None or now - f.last > self.forget_s:
                f = self._clients[client] = _Failures()
                self._bound()
            f.count += 1
            f.last = now
            if f.count > self.free:
                f.blocked_until = now + min(2.0 ** (f.count - self.free - 1), self.max_block_s)

    def _bound(self) -> None:
        """Memory stays bounded however many addresses guess: the stalest one goes first."""
        if len(self._clients) > self.max_clients:
            stalest = min(self._clients, key=lambda c: self._clients[c].last)
            del self._clients[stalest]


class Throttled(APIError):
    def __init__(self, retry_after: float):
        self.retry_after = math.ceil(retry_after)
        super().__init__(
            429,
            f"too many wrong API keys from this address; retry in {self.retry_after} s",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(self.retry_after)},
        )


# ---- the key ------------------------------------------------------------------------------
def configured_key(request: Request) -> str | None:
    return request.app.state.services.settings.api_key


def _same(key: str, offered: str) -> bool:
    return hmac.compare_digest(offered.encode(), key.encode())


def _sign(key: str, nonce: str) -> str:
    return hmac.new(
        key.encode(), b"whetstone-session:" + nonce.encode(), hashlib.sha256
    ).hexdigest()


def new_session(key: str) -> str:
    """The login cookie's value: a fresh nonce signed with the key. It proves the key was
    typed without holding it, and each login's differs (so does its CSRF token). Changing the
    key ends every session."""
    nonce = secrets.token_urlsafe(16)
    return f"{nonce}.{_sign(key, nonce)}"


def _valid_session(key: str, cookie: str) -> bool:
    nonce, _, signature = cookie.partition(".")
    return hmac.compare_digest(signature.encode(), _sign(key, nonce).encode())


def check_key(request: Request, offered: str | None) -> bool:
    """True when no key is configured, or `offered` is it (compared in constant time). A wrong
    key counts against the client's address; raises `Throttled` while that address is blocked.
    `offered` None (nothing sent) is no attempt and costs nothing."""
    return _check(request, offered, _same)


def _check(request: Request, offered: str | None, valid: Callable[[str, str], bool]) -> bool:
    key = configured_key(request)
    if key is None:
        return True
    throttle: KeyThrottle = request.app.state.services.key_throttle
    client = request.client.host if request.client else "?"
    wait = throttle.retry_after(client)
    if wait > 0:
        raise Throttled(wait)
    if offered is None:
        return False
    if valid(key, offered):
        return True
    throttle.failed(client)
    return False


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _by_cookie(request: Request) -> bool:
    """Whether the request would be let in by the cookie: a key is set and no Authorization
    header speaks instead (when one is sent, it alone counts)."""
    return configured_key(request) is not None and "authorization" not in request.headers


def has_key(request: Request) -> bool:
    """The review page's check: the key in the Authorization header, else a login cookie."""
    if _by_cookie(request):
        return _check(request, request.cookies.get(KEY_COOKIE), _valid_session)
    return check_key(request, _bearer(request))


def _unauthorized() -> APIError:
    return APIError(
        401,
        "missing or wrong API key: send `Authorization: Bearer <key>`",
        code="invalid_api_key",
    )


async def require_key(request: Request) -> None:
    """FastAPI dependency of the API routes: 401 in the OpenAI shape unless the request's
    Authorization header carries the key. The review page's cookie does not count here."""
    if not check_key(request, _bearer(request)):
        raise _unauthorized()


async def require_json(request: Request) -> None:
    """FastAPI dependency: a state-changing request's body must say it is JSON (415 else).
    A cross-origin form or `no-cors` fetch can only send text/plain, form or multipart bodies,
    which our parsers would otherwise read as JSON all the same."""
    if request.method not in UNSAFE_METHODS:
        return
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise APIError(
            415,
            "the request body must be JSON, sent with `Content-Type: application/json`",
            code="unsupported_media_type",
        )


# ---- cross-site request forgery on /review ------------------------------------------------
def csrf_token(request: Request) -> str | None:
    """The token bound to this browser's login cookie, for the page's own state-changing
    calls; None when the request does not ride on the cookie. Keyed by a secret made when the
    server starts, so that a token is worth nothing without the cookie it was made for."""
    cookie = request.cookies.get(KEY_COOKIE)
    if not _by_cookie(request) or cookie is None:
        return None
    secret: bytes = request.app.state.services.csrf_secret
    return hmac.new(secret, cookie.encode(), hashlib.sha256).hexdigest()


def same_origin(request: Request) -> bool:
    """Whether the request comes from a page of this server's own origin (scheme, host and
    port). Browsers send Origin on every cross-origin POST; a request without it is from a
    non-browser client, or from a browser whose Sec-Fetch-Site still says where it came from."""
    origin = request.headers.get("origin")
    if origin is None:
        return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


def check_forgery(request: Request, token: str | None) -> None:
    """403 unless a state-changing review request is from our own origin and, when it rides
    on the cookie, carries the cookie's CSRF token."""
    if not same_origin(request):
        raise APIError(403, "cross-origin requests are refused", code="cross_origin")
    expected = csrf_token(request)
    if expected is not None and not hmac.compare_digest((token or "").encode(), expected.encode()):
        raise APIError(
            403,
            "missing or stale CSRF token: reload the review page",
            code="csrf_token_invalid",
        )


async def require_review_key(request: Request) -> None:
    """FastAPI dependency of the review routes: the key (header or cookie), and for a
    state-changing request the forgery checks, its token in the X-Whetstone-CSRF header."""
    if not has_key(request):
        raise _unauthorized()
    if request.method in UNSAFE_METHODS:
        check_forgery(request, request.headers.get(CSRF_HEADER))
