"""The server: `create_app(project, settings)` builds a FastAPI app around one base model.

Endpoints, one router per concern: the OpenAI-compatible API (`openai_routes`:
`/v1/chat/completions`, `/v1/completions`, `/v1/models`), `/v1/feedback` (`feedback`),
`/admin/adapters[/load|/unload]` (`admin`), `/healthz` (no key), `/metrics` and
`/openapi.json` (`operations`), and the review page (`review`, with its JSON API in
`review_api` and `review_records`). What they share (project, engine, router, capture,
metrics, settings) is one `Services` object on `app.state.services` (`state`). Every answer of
a task is captured as a `production` record (`answer`, `streaming`); `base` without a task is
not (`routes`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from whetstone.errors import WhetstoneError, from_validation
from whetstone.project import Project
from whetstone.serve import (
    admin,
    cascade,
    feedback,
    openai_routes,
    operations,
    review,
    review_api,
    review_records,
)
from whetstone.serve.body_limit import BodyLimit
from whetstone.serve.capture import SPOOL_DIR, CaptureQueue
from whetstone.serve.engine import Engine
from whetstone.serve.errors import APIError, error_response, from_whetstone
from whetstone.serve.metrics import Metrics
from whetstone.serve.routes import Router
from whetstone.serve.settings import Settings
from whetstone.serve.state import Services

log = logging.getLogger("whetstone.serve")


def create_app(
    project: Project, settings: Settings | None = None, *, base_model: str | None = None
) -> FastAPI:
    """Load the base model (once) and build the app. Background workers start with the app
    (uvicorn's lifespan) and stop with it, writing or spooling every pending capture."""
    svc = load_services(project, settings or Settings.load(project.section("serve")), base_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.engine.start()
        svc.capture.start()
        svc.router.start()
        try:
            yield
        finally:
            svc.router.stop()
            svc.engine.stop()
            svc.capture.stop()

    # No public docs: `operations` serves the schema behind the key, like the rest.
    app = FastAPI(
        title="Whetstone", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.services = svc
    _install_errors(app)
    operations.count_requests(app, svc)
    app.add_middleware(BodyLimit, limit=svc.settings.max_body_bytes)
    routers = (openai_routes, feedback, admin, operations, review, review_api, review_records)
    for module in routers:
        app.include_router(module.router)
    return app


def load_services(project: Project, settings: Settings, base_model: str | None) -> Services:
    """The base model, its engine, the capture queue and the router, with their gauges, and
    the hero where whetstone.yaml has one (`cascade`)."""
    from whetstone.models import base as base_models

    # The hero first: a key variable that is not set stops the start before the model loads.
    hero = cascade.load_hero(project)
    base = base_models.resolve(base_model or project.base_model)
    model, tok = base_models.load(base)
    metrics = Metrics()
    capture = CaptureQueue(
        project.store.add_records,
        project.home / SPOOL_DIR,
        metrics,
        spool_after_s=settings.spool_after_s,
        spool_max_bytes=settings.spool_max_bytes,
        max_memory=settings.capture_max_memory,
    )
    svc = Services(
        project=project,
        settings=settings,
        base=base,
        tokenizer=tok,
        engine=Engine(model, tok, base.hash, settings, metrics),
        capture=capture,
        router=Router(project, settings.route_poll_s),
        metrics=metrics,
        hero=hero,
    )
    if hero is not None:
        svc.router.on_change = cascade.Announcer(hero.config)
    operations.add_gauges(svc)
    return svc


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(WhetstoneError)
    async def whetstone_error(_: Request, e: WhetstoneError) -> JSONResponse:
        return from_whetstone(e).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        bad = from_validation(e, skip=("body",))
        return error_response(400, str(bad), code="invalid_value", param=bad.field or None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(
            e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None
        )

    @app.exception_handler(Exception)
    async def crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(e).__name__}", code="server_error")
