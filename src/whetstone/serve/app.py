"""The server: `create_app(project, settings)` builds a FastAPI app around one base model.

Endpoints: `/v1/chat/completions`, `/v1/completions`, `/v1/models` (OpenAI-compatible),
`/v1/feedback`, `/admin/adapters[/load|/unload]`, `/healthz` (no key), `/metrics`, and the
review page (`serve/review.py`). Every answer is captured as a `production` record whose
reference (`X-Whetstone-Record`, and the completion id `chatcmpl-<ref>`) is assigned before
the store is touched; `/v1/feedback` takes it, or the record's numeric id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from whetstone import prompts, registry
from whetstone.errors import InvalidInput, NotFound, WhetstoneError
from whetstone.project import Project
from whetstone.records import Input, Record, Source, Status
from whetstone.serve import openai_api as api
from whetstone.serve.auth import KeyThrottle, require_json, require_key
from whetstone.serve.capture import SPOOL_DIR, CaptureQueue, new_ref
from whetstone.serve.engine import Delta, Done, Engine, Event, Failed, Job
from whetstone.serve.errors import APIError, error_body, error_response, from_whetstone
from whetstone.serve.metrics import Metrics
from whetstone.serve.routes import Route, Router
from whetstone.serve.settings import Settings

log = logging.getLogger("whetstone.serve")

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
THUMBS_DOWN = "thumbs-down"
INCOMPLETE = "incomplete"  # the tag of a streamed answer cut short


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413 before anything parses them: at once from
    Content-Length, else while the body streams in (chunked uploads)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(scope, receive, send)
            return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # http.disconnect, for streaming responses

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            f"the request body is larger than {self.limit} bytes",
            code="request_too_large",
        )
        await response(scope, receive, send)


class ClosingStream(StreamingResponse):
    """A streaming response that calls `on_close` however it ends: finished, failed, or cut
    off by the client going away, after which Starlette never resumes the body's iterator
    (so the iterator's own `finally` is not a place to rely on)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], **kw: Any):
        super().__init__(content, **kw)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def create_app(
    project: Project, settings: Settings | None = None, *, base_model: str | None = None
) -> FastAPI:
    """Load the base model (once) and build the app. Background workers start with the app
    (uvicorn's lifespan) and stop with it, writing or spooling every pending capture."""
    from whetstone.models import base as base_models

    settings = settings or Settings.load(project.section("serve"))
    base = base_models.resolve(base_model or project.base_model)
    model, tok = base_models.load(base)
    metrics = Metrics()
    engine = Engine(model, tok, base.hash, settings, metrics)
    capture = CaptureQueue(
        project.store.add_records,
        project.home / SPOOL_DIR,
        metrics,
        spool_after_s=settings.spool_after_s,
        spool_max_bytes=settings.spool_max_bytes,
        max_memory=settings.capture_max_memory,
    )
    router = Router(project, settings.route_ttl_s)
    metrics.gauge("whetstone_queue_depth", "Requests waiting for a batch.", lambda: engine.depth)
    metrics.gauge(
        "whetstone_capture_pending", "Records not yet in the store.", lambda: capture.depth
    )
    metrics.gauge(
        "whetstone_adapters_loaded",
        "Adapters loaded on the base.",
        lambda: len(engine.pool.loaded),
    )
    tok_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        capture.start()
        try:
            yield
        finally:
            engine.stop()
            capture.stop()

    # The schema lists every path: it is served below, behind the key, like the rest.
    app = FastAPI(
        title="Whetstone", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.project = project
    app.state.settings = settings
    app.state.engine = engine
    app.state.capture = capture
    app.state.router = router
    app.state.metrics = metrics
    app.state.base = base
    app.state.key_throttle = KeyThrottle()
    app.state.csrf_secret = secrets.token_bytes(32)
    _install_errors(app)
    _install_metrics(app, metrics)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    keyed = [Depends(require_key), Depends(require_json)]

    # ---- completions -----------------------------------------------------------------
    def encode(route: Route, inp: Input, raw: bool) -> list[int]:
        with tok_lock:
            if raw:
                return list(tok(inp, add_special_tokens=False)["input_ids"])
            ids = tok.apply_chat_template(
                prompts.chat(route.task, inp), add_generation_prompt=True, tokenize=True
            )
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def max_tokens(req: api.Sampling, prompt_len: int, param: str) -> int:
        n = req.max_tokens or getattr(req, "max_completion_tokens", None)
        if n is not None and n > settings.max_tokens_limit:
            raise APIError(
                400,
                f"max_tokens is {n}; this server allows at most {settings.max_tokens_limit}",
                code="invalid_value",
                param=param,
            )
        ctx = engine.context_length
        if n is None:
            n = max(1, min(settings.default_max_tokens, ctx - prompt_len))
        if prompt_len + n > ctx:
            raise APIError(
                400,
                f"this model's maximum context length is {ctx} tokens; the prompt has "
                f"{prompt_len} and {n} more were asked for",
                code="context_length_exceeded",
                param="messages" if param != "prompt" else param,
            )
        return n

    async def run(
        request: Request, req: api.Sampling, inp: Input, raw: bool, kind: str
    ) -> Response:
        t0 = time.perf_counter()
        route = await run_in_threadpool(router.resolve, req.model, req.task)
        request.state.model = route.model
        stops = req.stops
        ids = await run_in_threadpool(encode, route, inp, raw)
        if not ids:
            raise APIError(400, "the prompt is empty", code="invalid_value", param="prompt")
        n = max_tokens(req, len(ids), "max_tokens")
        ref = new_ref()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        job = Job(
            prompt_ids=ids,
            adapter=route.adapter,
            max_tokens=n,
            emit=lambda e: loop.call_soon_threadsafe(events.put_nowait, e),
            temperature=req.temperature,
            top_p=req.top_p,
            stop=stops,
        )
        engine.submit(job)
        cid = ("chatcmpl-" if kind == "chat" else "cmpl-") + ref
        headers = {"X-Whetstone-Record": ref, "X-Whetstone-Model": route.model}
        if route.fallback:
            headers["X-Whetstone-Fallback"] = "base"
        endpoint = "/v1/chat/completions" if kind == "chat" else "/v1/completions"

        def finish(done: Done, *, incomplete: bool = False) -> dict[str, Any]:
            latency = (time.perf_counter() - t0) * 1000
            metrics.latency.labels(endpoint, route.model).observe(latency / 1000)
            metrics.prompt_tokens.labels(route.model).inc(done.prompt_tokens)
            metrics.completion_tokens.labels(route.model).inc(done.completion_tokens)
            output = prompts.normalise_answer(route.task, done.text)
            meta = {
                "request_id": ref,
                "endpoint": endpoint,
                "latency_ms": round(latency, 2),
                "prompt_tokens": done.prompt_tokens,
                "completion_tokens": done.completion_tokens,
                "finish_reason": done.finish_reason,
            }
            if route.fallback:
                meta["fallback"] = "base"
            if req.temperature:
                meta["sampling"] = {"temperature": req.temperature, "top_p": req.top_p}
            capture.submit(
                Record(
                    task=route.task.name,
                    input=inp,
                    output=output,
                    model=route.model if route.adapter else f"base:{base.name}",
                    confidence=done.confidence,
                    source=Source.production,
                    source_key=ref,
                    tags=[INCOMPLETE] if incomplete else [],
                    meta=meta,
                )
            )
            return {"record": ref, "model": route.model, "confidence": done.confidence}

        if not req.stream:
            text = ""
            try:
                while True:
                    ev = await events.get()
                    if isinstance(ev, Failed):
                        raise ev.error
                    if isinstance(ev, Done):
                        break
                    text += ev.text
            except asyncio.CancelledError:
                job.cancelled = True
                raise
            extra = finish(ev)
            u = api.usage(ev.prompt_tokens, ev.completion_tokens)
            if kind == "chat":
                body = api.chat_completion(cid, route.model, ev.text, ev.finish_reason, u, extra)
            else:
                body = api.text_completion(cid, route.model, ev.text, ev.finish_reason, u, extra)
            return JSONResponse(body, headers=headers)

        def sse(obj: dict[str, Any]) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        # The client holds the record's reference from the first byte on, so a stream that
        # ends early (the client gone, the row failed) still stores what it generated.
        streamed = ""
        ended: str | None = "disconnected"  # why the stream stopped short; None once done

        async def stream() -> AsyncIterator[str]:
            nonlocal streamed, ended
            if kind == "chat":
                yield sse(
                    api.chat_chunk(cid, route.model, {"role": "assistant", "content": ""}, None)
                )
            while True:
                ev = await events.get()
                if isinstance(ev, Failed):
                    ended = "error"
                    yield sse(error_body(ev.error.status, ev.error.message, code=ev.error.code))
                    break
                if isinstance(ev, Delta):
                    streamed += ev.text
                    if kind == "chat":
                        yield sse(api.chat_chunk(cid, route.model, {"content": ev.text}, None))
                    else:
                        yield sse(api.text_completion(cid, route.model, ev.text, None, None))
                    continue
                ended = None
                finish(ev)
                u = api.usage(ev.prompt_tokens, ev.completion_tokens)
                if kind == "chat":
                    yield sse(api.chat_chunk(cid, route.model, {}, ev.finish_reason))
                    if req.include_usage:
                        yield sse(api.chat_chunk(cid, route.model, {}, None, u))
                else:
                    yield sse(
                        api.text_completion(
                            cid,
                            route.model,
                            "",
                            ev.finish_reason,
                            u if req.include_usage else None,
                        )
                    )
                break
            yield "data: [DONE]\n\n"

        def closed() -> None:
            job.cancelled = True  # a client that went away stops its row at once
            if ended is None:
                return
            n = len(job.tokens)  # read across threads: at worst one token off, once cancelled
            cut_short = Done(
                text=streamed,
                finish_reason=ended,
                prompt_tokens=len(ids),
                completion_tokens=n,
                confidence=job.logprob_sum / n if n else 0.0,  # as the engine's Done has it
            )
            finish(cut_short, incomplete=True)

        return ClosingStream(stream(), closed, media_type="text/event-stream", headers=headers)

    @app.post("/v1/chat/completions", dependencies=keyed)
    async def chat_completions(request: Request) -> Response:
        req = api.parse(api.ChatRequest, await request.body())
        inp = [m.to_message(i) for i, m in enumerate(req.messages)]
        return await run(request, req, inp, raw=False, kind="chat")

    @app.post("/v1/completions", dependencies=keyed)
    async def completions(request: Request) -> Response:
        """A task model sees the prompt as the user's turn of its chat (the way it was
        trained); `base` continues the raw text."""
        req = api.parse(api.CompletionRequest, await request.body())
        raw = req.model == "base" and req.task is None
        return await run(request, req, req.text, raw=raw, kind="completion")

    # ---- models ----------------------------------------------------------------------
    @app.get("/v1/models", dependencies=keyed)
    async def models() -> dict[str, Any]:
        def listing() -> list[dict[str, Any]]:
            created = int(time.time())
            data = [
                {
                    "id": "base",
                    "object": "model",
                    "created": created,
                    "owned_by": "whetstone",
                    "base_model": base.name,
                }
            ]
            for task in project.store.list_tasks():
                if task.name == "base":
                    continue  # the model `base` is the base model, whatever the task
                prod = registry.production(project, task.name)
                data.append(
                    {
                        "id": task.name,
                        "object": "model",
                        "created": created,
                        "owned_by": "whetstone",
                        "production": prod.name if prod else None,
                    }
                )
            for av in registry.list_versions(project):
                data.append(
                    {
                        "id": av.name,
                        "object": "model",
                        "created": int(av.created_at.timestamp()),
                        "owned_by": "whetstone",
                        "stage": av.stage,
                        "method": av.method,
                    }
                )
            return data

        return {"object": "list", "data": await run_in_threadpool(listing)}

    # ---- feedback --------------------------------------------------------------------
    @app.post("/v1/feedback", dependencies=keyed)
    async def feedback(request: Request) -> dict[str, Any]:
        fb = api.parse(api.Feedback, await request.body())
        return await run_in_threadpool(apply_feedback, fb)

    def record_id(ref: int | str) -> int:
        if isinstance(ref, int):  # api.Feedback turns an id given as digits into a bounded int
            return ref
        key = ref.removeprefix("chatcmpl-").removeprefix("cmpl-")
        if capture.is_pending(key) and not capture.wait_stored(key, timeout=5.0):
            raise APIError(
                503,
                f"record {ref} is not in the store yet (the store is down); retry later",
                code="store_unavailable",
                param="record_id",
            )
        rid = project.store.find_source_key(key)
        if rid is None:
            raise APIError(404, f"unknown record {ref}", code="record_not_found", param="record_id")
        return rid

    def apply_feedback(fb: api.Feedback) -> dict[str, Any]:
        rid = record_id(fb.record_id)
        store = project.store
        try:
            if fb.reference is not None:
                rec = store.review(
                    rid,
                    Status.corrected,
                    reference=fb.reference,
                    error_category=fb.error_category,
                    annotator=fb.annotator,
                    comment=fb.comment,
                    rating=fb.thumbs,
                )
            elif fb.thumbs == 1:
                rec = store.review(
                    rid,
                    Status.accepted,
                    error_category=fb.error_category,
                    annotator=fb.annotator,
                    comment=fb.comment,
                    rating=1,
                )
            elif fb.thumbs == -1:
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
                rec = store.get_record(rid)
            else:
                raise APIError(400, "feedback needs a rating or a reference", code="invalid_value")
        except NotFound as e:
            raise APIError(404, str(e), code="record_not_found", param="record_id") from None
        except InvalidInput as e:
            raise APIError(400, str(e), code="invalid_value", param="reference") from None
        return {"id": rec.id, "object": "feedback", "status": rec.status.value, "tags": rec.tags}

    # ---- admin -----------------------------------------------------------------------
    @app.get("/admin/adapters", dependencies=keyed)
    async def adapters() -> dict[str, Any]:
        return {"loaded": engine.pool.loaded, "max_adapters": settings.max_adapters}

    @app.post("/admin/adapters/load", dependencies=keyed)
    async def load(request: Request) -> dict[str, Any]:
        """Load a registry version (`T@N`, or a task name for its production version) now,
        rather than on its first request. Raw paths are never accepted."""
        ref = api.parse(api.AdapterRef, await request.body()).model
        route = await run_in_threadpool(router.resolve, ref)
        if route.adapter is None:
            raise APIError(
                400,
                f"{ref!r} names no adapter (a task without a production version, or base)",
                code="invalid_value",
                param="model",
            )
        await run_in_threadpool(engine.load, route.adapter)
        return {"loaded": engine.pool.loaded}

    @app.post("/admin/adapters/unload", dependencies=keyed)
    async def unload(request: Request) -> dict[str, Any]:
        ref = api.parse(api.AdapterRef, await request.body()).model
        route = await run_in_threadpool(router.resolve, ref)
        if route.adapter is None or not await run_in_threadpool(engine.unload, route.adapter.name):
            raise APIError(404, f"{ref!r} is not loaded", code="not_loaded", param="model")
        return {"loaded": engine.pool.loaded}

    # ---- operations ------------------------------------------------------------------
    @app.get("/openapi.json", dependencies=keyed, include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "capture_pending": capture.depth, "store_ok": capture.healthy}

    @app.get("/metrics", dependencies=keyed)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    from whetstone.serve import review

    app.include_router(review.router)
    return app


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(WhetstoneError)
    async def whetstone_error(_: Request, e: WhetstoneError) -> JSONResponse:
        return from_whetstone(e).response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if p != "body") or None
        return error_response(400, f"{where}: {err['msg']}", code="invalid_value", param=where)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(
            e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None
        )

    @app.exception_handler(Exception)
    async def crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(e).__name__}", code="server_error")


def _install_metrics(app: FastAPI, metrics: Metrics) -> None:
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
        metrics.requests.labels(endpoint, model, str(response.status_code)).inc()
        return response
