"""`/admin/adapters[/load|/unload]`: which adapters sit on the base model, and loading or
unloading one by its registry name (`T@N`, or a task name for its production version). Raw
paths are never accepted."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from whetstone.serve import openai_api as api
from whetstone.serve.auth import require_json, require_key
from whetstone.serve.errors import APIError
from whetstone.serve.state import Svc

router = APIRouter(dependencies=[Depends(require_key), Depends(require_json)])


@router.get("/admin/adapters")
async def adapters(svc: Svc) -> dict[str, Any]:
    return {"loaded": svc.engine.pool.loaded, "max_adapters": svc.settings.max_adapters}


@router.post("/admin/adapters/load")
async def load(request: Request, svc: Svc) -> dict[str, Any]:
    """Load a version now, rather than on its first request."""
    ref = api.parse(api.AdapterRef, await request.body()).model
    route = await run_in_threadpool(svc.router.resolve, ref)
    if route.adapter is None:
        raise APIError(
            400,
            f"{ref!r} names no adapter (a task without a production version, or base)",
            code="invalid_value",
            param="model",
        )
    await run_in_threadpool(svc.engine.load, route.adapter)
    return {"loaded": svc.engine.pool.loaded}


@router.post("/admin/adapters/unload")
async def unload(request: Request, svc: Svc) -> dict[str, Any]:
    ref = api.parse(api.AdapterRef, await request.body()).model
    route = await run_in_threadpool(svc.router.resolve, ref)
    engine = svc.engine
    if route.adapter is None or not await run_in_threadpool(engine.unload, route.adapter.name):
        raise APIError(404, f"{ref!r} is not loaded", code="not_loaded", param="model")
    return {"loaded": engine.pool.loaded}
