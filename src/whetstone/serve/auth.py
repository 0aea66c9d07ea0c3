"""API-key checks. With a key set, every endpoint but /healthz needs it, either as
`Authorization: Bearer KEY` (API clients) or as the `whetstone_key` cookie (the review page,
which sets it from its own login form)."""

from __future__ import annotations

import hmac

from fastapi import Request

from whetstone.serve.errors import APIError

KEY_COOKIE = "whetstone_key"


def configured_key(request: Request) -> str | None:
    return request.app.state.settings.api_key


def key_matches(request: Request, given: str | None) -> bool:
    """True when no key is configured, or `given` is it (compared in constant time)."""
    key = configured_key(request)
    if key is None:
        return True
    return given is not None and hmac.compare_digest(given.encode(), key.encode())


def has_key(request: Request) -> bool:
    """Whether the request carries the key in its Authorization header or its cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and key_matches(request, token.strip()):
        return True
    return key_matches(request, request.cookies.get(KEY_COOKIE))


async def require_key(request: Request) -> None:
    """FastAPI dependency: 401 in the OpenAI shape unless the request carries the key."""
    if not has_key(request):
        raise APIError(
            401,
            "missing or wrong API key: send `Authorization: Bearer <key>`",
            code="invalid_api_key",
        )
