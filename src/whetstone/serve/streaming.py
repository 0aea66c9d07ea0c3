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
    """The events of one streamed answer, and what it had streamed when it stopped."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.streamed = ""
        self.ended: str | None = "disconnected"  # why the stream stopped short; None once done

    def response(self) -> ClosingStream:
        return ClosingStream(
            self.chunks(), self.closed, media_type="text/event-stream", headers=self.answer.headers
        )

    async def chunks(self) -> AsyncIterator[str]:
        a = self.answer
        chat = a.kind == "chat"
        if chat:
            yield sse(self._chat({"role": "assistant", "content": ""}, None))
        while True:
            ev = await a.events.get()
            if isinstance(ev, Failed):
                self.ended = "error"
                yield sse(error_body(ev.error.status, ev.error.message, code=ev.error.code))
                break
            if isinstance(ev, Delta):
                self.streamed += ev.text
                if chat:
                    piece = self._chat({"content": ev.text}, None)
                else:
                    piece = api.text_completion(a.cid, a.route.model, ev.text, None, None)
                piece["choices"][0]["logprobs"] = a.logprobs  # a classify answer's labels
                yield sse(piece)
                continue
            self.ended = None
            for chunk in self._last_chunks(ev):
                yield chunk
            break
        yield "data: [DONE]\n\n"

    def _last_chunks(self, done: Done) -> list[str]:
        a = self.answer
        a.finish(done)
        u = api.usage(done.prompt_tokens, done.completion_tokens)
        include_usage = a.req.include_usage
        if a.kind != "chat":
            last = api.text_completion(
                a.cid, a.route.model, "", done.finish_reason, u if include_usage else None
            )
            return [sse(last)]
        chunks = [sse(self._chat({}, done.finish_reason))]
        if include_usage:
            chunks.append(sse(self._chat({}, None, u)))
        return chunks

    def _chat(
        self, delta: dict[str, Any], finish: str | None, u: dict[str, int] | None = None
    ) -> dict[str, Any]:
        return api.chat_chunk(self.answer.cid, self.answer.route.model, delta, finish, u)

    def closed(self) -> None:
        job = self.answer.job
        job.cancelled = True  # a client that went away stops its row at once
        if self.ended is None:
            return
        # Read across threads: at worst one token off, once cancelled.
        self.answer.finish(job.done(self.streamed, self.ended), incomplete=True)
