"""Running the server: `/healthz` (no key), `/metrics` (Prometheus), `/openapi.json`, the
gauges `/metrics` shows, and the middleware that counts every request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response

from whetstone.serve.auth import require_json, require_key
from whetstone.serve.state import Services, Svc

# The request counter's `endpoint` label: these paths as they are, the review page as one.
ENDPOINTS = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/feedback",
    "/healthz",
    "/metrics",
    "/admin/adapters",
    "/admin/adapters/load",
    "/admin/adapters/unload",
}

router = APIRouter()
keyed = [Depends(require_key), Depends(require_json)]


@router.get("/healthz")
async def healthz(svc: Svc) -> dict[str, Any]:
    return {"status": "ok", "capture_pending": svc.capture.depth, "store_ok": svc.capture.healthy}


@router.get("/metrics", dependencies=keyed)
async def prometheus(svc: Svc) -> Response:
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")


# The schema lists every path: it is served here, behind the key, like the rest.
@router.get("/openapi.json", dependencies=keyed, include_in_schema=False)
async def openapi(request: Request) -> dict[str, Any]:
    return request.app.openapi()


def add_gauges(svc: Services) -> None:
    engine, capture = svc.engine, svc.capture
    svc.metrics.gauge(
        "whetstone_queue_depth", "Requests waiting for a batch.", lambda: engine.depth
    )
    svc.metrics.gauge(
        "whetstone_capture_pending", "Records not yet in the store.", lambda: capture.depth
    )
    svc.metrics.gauge(
        "whetstone_adapters_loaded", "Adapters loaded on the base.", lambda: len(engine.pool.loaded)
    )


def count_requests(app: FastAPI, svc: Services) -> None:
    """Count every response by endpoint, model (when a route set `request.state.model`) and
    status."""

    @app.middleware("http")
    async def count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        path = request.url.path
        endpoint = (
            path if path in ENDPOINTS else ("/review" if path.startswith("/review") else "other")
        )
        model = getattr(request.state, "model", "-")
        svc.metrics.requests.labels(endpoint, model, str(response.status_code)).inc()
        return response
