"""A streamed answer (`"stream": true`): server-sent events in OpenAI's chunk format.

The client holds the record's reference from the first byte on, so a stream that ends early
(the client gone, the row failed) still stores what it generated, tagged `incomplete`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from whetstone.serve import openai_api as api
from whetstone.serve.answer import Answer
from whetstone.serve.engine import Delta, Done, Failed
from whetstone.serve.errors import error_body


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


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class Stream:
    """The events of one streamed answer (its `n` choices, each chunk naming its choice's
    index), and what each choice had streamed when it stopped."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.streamed = [""] * answer.n
        self.dones: list[Done | None] = [None] * answer.n
        self.ended: str | None = "disconnected"  # why the stream stopped short; None once done

    def response(self) -> ClosingStream:
        return ClosingStream(
            self.chunks(), self.closed, media_type="text/event-stream", headers=self.answer.headers
        )

    async def chunks(self) -> AsyncIterator[str]:
        a = self.answer
        chat = a.kind == "chat"
        if chat:
            for i in range(a.n):
                yield sse(self._chat({"role": "assistant", "content": ""}, None, index=i))
        while any(d is None for d in self.dones):
            ev = await a.events.get()
            if isinstance(ev, Failed):
                self.ended = "error"
                yield sse(error_body(ev.error.status, ev.error.message, code=ev.error.code))
                break
            if isinstance(ev, Delta):
                self.streamed[ev.index] += ev.text
                yield sse(self._piece(ev.index, ev.text, None, ev.logprobs))
                continue
            self.dones[ev.index] = ev
            yield sse(self._piece(ev.index, "", ev.finish_reason, None))
        else:
            self.ended = None
            dones = [d for d in self.dones if d is not None]
            a.finish(*dones)
            if a.req.include_usage:
                u = api.usage(dones[0].prompt_tokens, sum(d.completion_tokens for d in dones))
                yield sse(self._chat({}, None, u) if chat else self._text([], u))
        yield "data: [DONE]\n\n"

    def _piece(self, index: int, text: str, finish: str | None, tokens: Any) -> dict[str, Any]:
        """One choice's chunk: its new text (or its end), with its tokens' logprobs."""
        a = self.answer
        # A classify answer's label distribution goes with its one delta, not its end.
        logprobs = a.choice_logprobs(index, tokens) if finish is None else None
        if a.kind == "chat":
            delta = {"content": text} if finish is None else {}
            return self._chat(delta, finish, index=index, logprobs=logprobs)
        return self._text([api.text_choice(index, text, finish, logprobs)], None)

    def _chat(
        self,
        delta: dict[str, Any],
        finish: str | None,
        u: dict[str, int] | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        return api.chat_chunk(self.answer.cid, self.answer.route.model, delta, finish, u, **kw)

    def _text(self, choices: list[dict[str, Any]], u: dict[str, int] | None) -> dict[str, Any]:
        return api.text_completion(self.answer.cid, self.answer.route.model, choices, u)

    def closed(self) -> None:
        a = self.answer
        a.cancel()  # a client that went away stops its rows at once
        if self.ended is None:
            return
        # Read across threads: at worst one token off, once cancelled.
        dones = [
            d if d is not None else job.done(self.streamed[i], self.ended)
            for i, (d, job) in enumerate(zip(self.dones, a.jobs, strict=True))
        ]
        a.finish(*dones, incomplete=True)
