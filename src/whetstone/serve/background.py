"""Run the server in a background thread of this process: the demo's `--serve` mode and the
tests use it to talk to a real uvicorn server over HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(app: Any, *, timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` (from `create_app`, whose settings set the connection limits) with uvicorn
    on a free localhost port; yield its base URL."""
    import uvicorn

    from whetstone.serve import server as uvicorn_setup

    port = free_port()
    config = uvicorn_setup.config(app, app.state.services.settings, host="127.0.0.1", port=port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
