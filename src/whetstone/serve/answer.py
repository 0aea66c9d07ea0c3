"""One completion request from its prompt to its answer: encoded, checked against the context
length, submitted to the engine, returned whole (or streamed, see `streaming`), and captured as
a `production` record however it ends, unless it belongs to no task (`base` without a
`task` field), which `X-Whetstone-Captured: false` says.

The record's reference (`X-Whetstone-Record`, and the completion id `chatcmpl-<ref>`) is
assigned before the store is touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi.responses import JSONResponse

from whetstone import prompts
from whetstone.errors import first_line
from whetstone.models.constrain import Grammar, SchemaError, compile_schema
from whetstone.models.generate import encode_prompts
from whetstone.models.hero import sampling_temperature
from whetstone.predict import answer_schema
from whetstone.records import Input, Record, Source, Task, to_messages
from whetstone.serve import openai_api as api
from whetstone.serve.capture import new_ref
from whetstone.serve.engine import Done, Event, Failed, Job
from whetstone.serve.errors import APIError
from whetstone.serve.routes import Route
from whetstone.serve.state import Services
from whetstone.serve.token_text import TokenLogprob

log = logging.getLogger("whetstone.serve")

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


def answer_grammar(svc: Services, req: api.Sampling, route: Route) -> Grammar | None:
    """The grammar a generated answer keeps (`models.constrain`): the request's
    `response_format` (json_object, json_schema), else an extract task's own schema (any JSON
    object without one) where the `constrain_extract` setting says so; None for free text
    (`{"type": "text"}` asks for that even on an extract task). A request's schema that cannot
    constrain decoding is a 400 naming `response_format`; a task's own that cannot (a keyword
    the grammar engine lacks) leaves its answers free, said once in the log: the client asked
    for nothing, and the task's checks still judge the answer. Compiling takes milliseconds (a
    second the first time, for the tokenizer), so callers run this off the event loop."""
    if req.response_format is not None:
        schema, own = api.response_schema(req.response_format), False
    elif route.task is not None and svc.settings.constrains(route.task.name):
        # An extract task's own (None for the others), in the order an adapter was taught.
        schema, own = answer_schema(route.task, taught=route.adapter is not None), True
    else:
        schema, own = None, False
    if schema is None:
        return None
    try:
        with svc.tokenizer_lock:  # llguidance reads the tokenizer once
            return compile_schema(svc.tokenizer, svc.engine.decoder.stop_ids, schema)
    except SchemaError as e:
        if own:
            assert route.task is not None
            _unconstrained_once(route.task.name, e)
            return None
        raise APIError(
            400,
            f"response_format: the JSON schema cannot constrain decoding: {e}",
            code="invalid_value",
            param="response_format",
        ) from None


_said_unconstrained: set[str] = set()


def _unconstrained_once(task: str, why: SchemaError) -> None:
    if task not in _said_unconstrained:
        _said_unconstrained.add(task)
        log.warning(
            "task %s: its schema cannot constrain decoding, so its answers are free "
            "(constrain_extract): %s",
            task,
            first_line(why),
        )


class Answer:
    """The engine's events for one request (its `n` choices), and what to capture once they
    end."""

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
        grammar: Grammar | None = None,
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
        # A classify answer's label distribution, in the choice's shape; generated answers
        # carry their token log-probabilities in their events instead.
        self.logprobs: dict[str, Any] | None = None
        # Set by `cascade` when the caller may get another answer than the engine's (the
        # hero's): the engine's own end event, which the metrics count; a mark on the record
        # (meta["cascade"], tags); and fields for the body's `whetstone` part.
        self.engine_done: Done | None = None
        self.amend: Callable[[Record], Record] | None = None
        self.whetstone: dict[str, Any] = {}
        self.n = req.choices
        # Several samples of one prompt need randomness: temperature 1 unless asked otherwise.
        self.temperature = sampling_temperature(self.n, req.temperature)
        # The engine's worker thread hands events back to this request's event loop.
        loop = asyncio.get_running_loop()
        self.jobs = [
            Job(
                prompt_ids=ids,
                adapter=route.adapter,
                max_tokens=max_tokens,
                emit=self._emitter(loop, i),
                temperature=self.temperature,
                top_p=req.top_p,
                stop=stops,
                seed=None if req.seed is None else (req.seed + i) % 2**64,
                logprobs=req.token_logprobs,
                model=route.model,
                grammar=grammar,
            )
            for i in range(self.n)
        ]

    def _emitter(self, loop: asyncio.AbstractEventLoop, index: int) -> Callable[[Event], None]:
        def emit(e: Event) -> None:
            e.index = index
            loop.call_soon_threadsafe(self.events.put_nowait, e)

        return emit

    @property
    def job(self) -> Job:
        return self.jobs[0]

    def submit(self) -> None:
        for job in self.jobs:  # queued together, so they are prefilled in one pass
            self.svc.engine.submit(job)

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancelled = True

    def choice_logprobs(self, index: int, tokens: list[TokenLogprob] | None) -> Any:
        """A choice's (or a streamed chunk's) `logprobs`: the label distribution of a
        classify answer, else the generated tokens', where they were asked for."""
        if self.logprobs is not None:
            return self.logprobs if index == 0 else None
        if tokens is None:
            return None
        if self.kind == "chat":
            return api.chat_token_logprobs(tokens)
        return api.completion_token_logprobs(tokens)

    def finish(self, *dones: Done, incomplete: bool = False) -> dict[str, Any]:
        """Count the answer in the metrics and capture it (the first choice as the record's
        output, any others in its meta); return the body's `whetstone` part."""
        route, metrics = self.route, self.svc.metrics
        latency = (time.perf_counter() - self.started) * 1000
        metrics.latency.labels(self.endpoint, route.model).observe(latency / 1000)
        engine = [self.engine_done] if self.engine_done else dones
        metrics.prompt_tokens.labels(route.model).inc(sum(d.prompt_tokens for d in engine))
        metrics.completion_tokens.labels(route.model).inc(sum(d.completion_tokens for d in engine))
        done = dones[0]
        extra = {"record": None, "model": route.model, "confidence": done.confidence}
        if route.task is not None:
            record = self._record(route.task, dones, latency, incomplete)
            self.svc.capture.submit(self.amend(record) if self.amend else record)
            extra["record"] = self.ref
        return {**extra, **self.whetstone}

    def _record(
        self, task: Task, dones: tuple[Done, ...], latency_ms: float, incomplete: bool
    ) -> Record:
        route, req, done = self.route, self.req, dones[0]
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
        if self.temperature:
            meta["sampling"] = {"temperature": self.temperature, "top_p": req.top_p}
            if req.seed is not None:
                meta["sampling"]["seed"] = req.seed
        if len(dones) > 1:  # `n` > 1: the other samples of the same prompt
            meta["choices"] = [
                {
                    "output": prompts.normalise_answer(task, d.text),
                    "confidence": d.confidence,
                    "finish_reason": d.finish_reason,
                    "completion_tokens": d.completion_tokens,
                }
                for d in dones[1:]
            ]
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

    async def dones(self) -> list[Done]:
        """Wait for every choice's end; a client that goes away cancels their rows."""
        dones: list[Done | None] = [None] * self.n
        try:
            while any(d is None for d in dones):
                ev = await self.events.get()
                if isinstance(ev, Failed):
                    self.cancel()
                    raise ev.error
                if isinstance(ev, Done):
                    dones[ev.index] = ev
        except asyncio.CancelledError:
            self.cancel()
            raise
        return [d for d in dones if d is not None]

    async def body(self) -> dict[str, Any]:
        """The whole response body, once every choice has ended."""
        dones = await self.dones()
        extra = self.finish(*dones)
        u = api.usage(dones[0].prompt_tokens, sum(d.completion_tokens for d in dones))
        if self.kind == "chat":
            choices = [
                api.chat_choice(i, d.text, d.finish_reason, self.choice_logprobs(i, d.logprobs))
                for i, d in enumerate(dones)
            ]
            return api.chat_completion(self.cid, self.route.model, choices, u, extra)
        choices = [
            api.text_choice(i, d.text, d.finish_reason, self.choice_logprobs(i, d.logprobs))
            for i, d in enumerate(dones)
        ]
        return api.text_completion(self.cid, self.route.model, choices, u, extra)

    async def whole(self) -> JSONResponse:
        return JSONResponse(await self.body(), headers=self.headers)
