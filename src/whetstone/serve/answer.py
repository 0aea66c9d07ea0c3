"""One completion request from its prompt to its answer: encoded, checked against the context
length, submitted to the engine, returned whole (or streamed, see `streaming`), and captured as
a `production` record however it ends, unless it belongs to no task (`base` without a
`task` field), which `X-Whetstone-Captured: false` says.

The record's reference (`X-Whetstone-Record`, and the completion id `chatcmpl-<ref>`) is
assigned before the store is touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi.responses import JSONResponse

from whetstone import prompts
from whetstone.models.generate import encode_prompts
from whetstone.records import Input, Record, Source, Task, to_messages
from whetstone.serve import openai_api as api
from whetstone.serve.capture import new_ref
from whetstone.serve.engine import Done, Event, Failed, Job
from whetstone.serve.errors import APIError
from whetstone.serve.routes import Route
from whetstone.serve.state import Services

INCOMPLETE = "incomplete"  # the tag of a streamed answer cut short
Kind = Literal["chat", "completion"]


def encode(svc: Services, route: Route, inp: Input, raw: bool) -> list[int]:
    """The prompt's token ids: `raw` text as it is, anything else through the chat template
    (with the task's instruction, if the route has a task)."""
    messages = to_messages(inp) if route.task is None else prompts.chat(route.task, inp)
    with svc.tokenizer_lock:
        if raw:
            return list(svc.tokenizer(inp, add_special_tokens=False)["input_ids"])
        return encode_prompts(svc.tokenizer, [messages])[0]


def tokens_to_generate(svc: Services, req: api.Sampling, prompt_len: int) -> int:
    """The tokens to generate: as asked (within the server's limit), else as many as fit."""
    settings = svc.settings
    n = req.max_tokens or getattr(req, "max_completion_tokens", None)
    if n is not None and n > settings.max_tokens_limit:
        raise APIError(
            400,
            f"max_tokens is {n}; this server allows at most {settings.max_tokens_limit}",
            code="invalid_value",
            param="max_tokens",
        )
    ctx = svc.engine.context_length
    if n is None:
        n = max(1, min(settings.default_max_tokens, ctx - prompt_len))
    if prompt_len + n > ctx:
        raise APIError(
            400,
            f"this model's maximum context length is {ctx} tokens; the prompt has "
            f"{prompt_len} and {n} more were asked for",
            code="context_length_exceeded",
            param="messages",
        )
    return n


class Answer:
    """The engine's events for one request, and what to capture once they end."""

    def __init__(
        self,
        svc: Services,
        req: api.Sampling,
        inp: Input,
        route: Route,
        ids: list[int],
        kind: Kind,
        started: float,
        *,
        max_tokens: int,
        stops: list[str],
    ):
        self.svc, self.req, self.inp, self.route, self.ids = svc, req, inp, route, ids
        self.kind, self.started = kind, started
        self.ref = new_ref()
        self.cid = ("chatcmpl-" if kind == "chat" else "cmpl-") + self.ref
        self.endpoint = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        self.captured = route.task is not None  # a record belongs to a task
        self.headers = {
            "X-Whetstone-Model": route.model,
            "X-Whetstone-Captured": "true" if self.captured else "false",
        }
        if self.captured:
            self.headers["X-Whetstone-Record"] = self.ref
        if route.fallback:
            self.headers["X-Whetstone-Fallback"] = "base"
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.logprobs: dict[str, Any] | None = None  # the choice's, where the answer has them
        # Set by `cascade` when the caller may get another answer than the engine's (the
        # hero's): the engine's own end event, which the metrics count; a mark on the record
        # (meta["cascade"], tags); and fields for the body's `whetstone` part.
        self.engine_done: Done | None = None
        self.amend: Callable[[Record], Record] | None = None
        self.whetstone: dict[str, Any] = {}
        # The engine's worker thread hands events back to this request's event loop.
        loop = asyncio.get_running_loop()
        self.job = Job(
            prompt_ids=ids,
            adapter=route.adapter,
            max_tokens=max_tokens,
            emit=lambda e: loop.call_soon_threadsafe(self.events.put_nowait, e),
            temperature=req.temperature,
            top_p=req.top_p,
            stop=stops,
        )

    def submit(self) -> None:
        self.svc.engine.submit(self.job)

    def finish(self, done: Done, *, incomplete: bool = False) -> dict[str, Any]:
        """Count the answer in the metrics and capture it; return the body's `whetstone` part."""
        route, metrics = self.route, self.svc.metrics
        latency = (time.perf_counter() - self.started) * 1000
        metrics.latency.labels(self.endpoint, route.model).observe(latency / 1000)
        engine = self.engine_done or done
        metrics.prompt_tokens.labels(route.model).inc(engine.prompt_tokens)
        metrics.completion_tokens.labels(route.model).inc(engine.completion_tokens)
        extra = {"record": None, "model": route.model, "confidence": done.confidence}
        if route.task is not None:
            record = self._record(route.task, done, latency, incomplete)
            self.svc.capture.submit(self.amend(record) if self.amend else record)
            extra["record"] = self.ref
        return {**extra, **self.whetstone}

    def _record(self, task: Task, done: Done, latency_ms: float, incomplete: bool) -> Record:
        route, req = self.route, self.req
        meta: dict[str, Any] = {
            "request_id": self.ref,
            "endpoint": self.endpoint,
            "latency_ms": round(latency_ms, 2),
            "prompt_tokens": done.prompt_tokens,
            "completion_tokens": done.completion_tokens,
            "finish_reason": done.finish_reason,
        }
        if route.fallback:
            meta["fallback"] = "base"
        if req.temperature:
            meta["sampling"] = {"temperature": req.temperature, "top_p": req.top_p}
        return Record(
            task=task.name,
            input=self.inp,
            output=prompts.normalise_answer(task, done.text),
            model=route.model if route.adapter else f"base:{self.svc.base.name}",
            confidence=done.confidence,
            source=Source.production,
            source_key=self.ref,
            tags=[INCOMPLETE] if incomplete else [],
            meta=meta,
        )

    async def whole(self) -> JSONResponse:
        """Wait for the whole answer; a client that goes away cancels its row."""
        try:
            while True:
                ev = await self.events.get()
                if isinstance(ev, Failed):
                    raise ev.error
                if isinstance(ev, Done):
                    break
        except asyncio.CancelledError:
            self.job.cancelled = True
            raise
        extra = self.finish(ev)
        u = api.usage(ev.prompt_tokens, ev.completion_tokens)
        build = api.chat_completion if self.kind == "chat" else api.text_completion
        body = build(self.cid, self.route.model, ev.text, ev.finish_reason, u, extra)
        body["choices"][0]["logprobs"] = self.logprobs
        return JSONResponse(body, headers=self.headers)
