"""A stand-in for a paid hero API: a real FastAPI app speaking the OpenAI chat API on a local
port, that the tests make right, slow, failing or garbage-returning at will, and that records
what it was sent (to check that keys and money are handled as promised)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from whetstone.serve.background import free_port


@dataclass
class StubHero:
    """Behaviour: `mode` is ok | slow | fail | garbage; `answer(user_text, sample_index)` is
    the reply in ok mode (default: the user's text upper-cased)."""

    mode: str = "ok"
    delay_s: float = 2.0
    answer: Callable[[str, int], str] = lambda text, i: text.upper()
    prompt_tokens: int = 10
    completion_tokens: int = 5
    honour_n: bool = True  # False: one choice per call, as endpoints that ignore `n` do
    calls: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Any:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            with self.lock:
                self.calls.append(body)
                self.auth.append(request.headers.get("authorization", ""))
            if self.mode == "slow":
                await asyncio.sleep(self.delay_s)
            if self.mode == "fail":
                return JSONResponse({"error": {"message": "boom"}}, status_code=500)
            if self.mode == "garbage":
                return PlainTextResponse("<html>not json</html>")
            user = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
            n = int(body.get("n") or 1) if self.honour_n else 1
            return {
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": self.answer(user, i)},
                        "finish_reason": "stop",
                    }
                    for i in range(n)
                ],
                "usage": {
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens * n,
                    "total_tokens": self.prompt_tokens + self.completion_tokens * n,
                },
            }

        return app


@contextlib.contextmanager
def serving(stub: StubHero) -> Iterator[str]:
    """Serve `stub` with uvicorn on a free localhost port; yield its OpenAI base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(stub.app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the stub hero did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
