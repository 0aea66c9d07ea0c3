"""The server's defences, against a real uvicorn server on the tiny random-weight base: keys
only where they belong, JSON-only bodies, CSRF tokens on the review API, no store details in
errors or logs, throttled key guessing, connections that cannot be held open, and streamed
answers that are stored however the stream ends. (The same attacks from a real browser on
another origin: test_review_csrf.py.)"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

import whetstone
from serve_helpers import free_port, running, wait_for
from whetstone.errors import InvalidInput
from whetstone.project import Project
from whetstone.records import Status
from whetstone.serve.app import create_app
from whetstone.serve.settings import Settings

KEY = "s3cret-key-for-tests"
BEARER = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def project(tmp_path: Path, tiny_base_dir: Path) -> Iterator[Project]:
    p = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir))
    p.create_task("t", "generate")
    yield p
    p.close()


@pytest.fixture
def serve(project: Project) -> Iterator[Callable[..., str]]:
    """serve(**settings) -> the base URL of a real server on `project`, stopped after the
    test."""
    with ExitStack() as stack:

        def start(**settings: Any) -> str:
            return stack.enter_context(running(create_app(project, Settings(**settings))))

        yield start


@contextmanager
def log_in(base: str) -> Iterator[httpx.Client]:
    """A client holding the review page's login cookie, as a browser would after logging in."""
    with httpx.Client(base_url=base) as c:
        r = c.post("/review/login", data={"key": KEY})
        assert r.status_code == 303 and "whetstone_key" in c.cookies
        yield c


def untouched(project: Project, rid: int) -> bool:
    rec = project.store.get_record(rid)
    return rec.status == Status.unreviewed and rec.tags == [] and rec.history == []


# ---- item 4: the key where it belongs, JSON bodies, CSRF ----------------------------------
def test_api_routes_ignore_the_review_cookie(project: Project, serve: Callable[..., str]) -> None:
    rid = project.capture("t", "q", "a")
    with log_in(serve(api_key=KEY)) as c:
        assert c.get("/review/api/config").status_code == 200  # the cookie is good here
        r = c.post("/v1/feedback", json={"record_id": rid, "rating": -1})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        for path in ("/v1/models", "/admin/adapters", "/metrics", "/openapi.json"):
            assert c.get(path).status_code == 401, path
        assert c.post("/admin/adapters/load", json={"model": "t@1"}).status_code == 401
        assert untouched(project, rid)
        # The header still works, and alone counts: a wrong one is not rescued by the cookie.
        assert c.get("/v1/models", headers=BEARER).status_code == 200
        assert (
            c.get("/review/api/config", headers={"Authorization": "Bearer no"}).status_code == 401
        )


def test_state_changing_bodies_must_be_json(project: Project, serve: Callable[..., str]) -> None:
    rid = project.capture("t", "q", "a")
    base = serve(api_key=KEY)
    body = f'{{"record_id": {rid}, "rating": -1}}'
    for path in ("/v1/feedback", "/admin/adapters/load", f"/review/api/records/{rid}/reject"):
        for content_type in (
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            None,
        ):
            headers = {**BEARER, **({"Content-Type": content_type} if content_type else {})}
            r = httpx.post(base + path, content=body, headers=headers)
            assert r.status_code == 415, (path, content_type, r.text)
            assert r.json()["error"]["code"] == "unsupported_media_type"
    assert untouched(project, rid)
    r = httpx.post(
        base + "/v1/feedback",
        content=body,
        headers={**BEARER, "Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 200 and "thumbs-down" in r.json()["tags"]


def test_review_decisions_need_the_csrf_token_and_our_origin(
    project: Project, serve: Callable[..., str]
) -> None:
    rid = project.capture("t", "q", "a")
    base = serve(api_key=KEY)
    other_origin = f"http://127.0.0.1:{free_port()}"
    accept = f"/review/api/records/{rid}/accept"
    with log_in(base) as c:
        token = c.get("/review/api/config").json()["csrf_token"]
        assert token
        refused = [
            {},  # no token
            {"X-Whetstone-CSRF": "0" * len(token)},  # a wrong one
            {"X-Whetstone-CSRF": token, "Origin": other_origin},  # the right one, elsewhere
            {"X-Whetstone-CSRF": token, "Origin": "null"},
            {"X-Whetstone-CSRF": token, "Sec-Fetch-Site": "same-site"},
        ]
        for headers in refused:
            r = c.post(accept, json={}, headers=headers)
            assert r.status_code == 403, (headers, r.text)
        assert untouched(project, rid)
        # Logging out is a state change too: the page's form carries the token.
        assert c.post("/review/logout", headers={"Origin": other_origin}).status_code == 403
        assert c.post("/review/logout", data={"csrf": "x"}).status_code == 403
        assert c.get("/review/api/config").status_code == 200  # still logged in

        r = c.post(accept, json={}, headers={"X-Whetstone-CSRF": token, "Origin": base})
        assert r.status_code == 200 and r.json()["status"] == "accepted"
        r = c.post("/review/logout", data={"csrf": token}, headers={"Origin": base})
        assert r.status_code == 303
    # A token is bound to the cookie it was made for; the Authorization header needs none.
    rid2 = project.capture("t", "q2", "a2")
    with log_in(base) as c:
        r = c.post(
            f"/review/api/records/{rid2}/accept", json={}, headers={"X-Whetstone-CSRF": token}
        )
        assert r.status_code == 403
    r = httpx.post(f"{base}/review/api/records/{rid2}/accept", json={}, headers=BEARER)
    assert r.status_code == 200
    # Logging in from another origin is refused too.
    r = httpx.post(base + "/review/login", data={"key": KEY}, headers={"Origin": other_origin})
    assert r.status_code == 403 and "set-cookie" not in r.headers


# ---- item 6: schema, store errors, the key's sources, guessing ----------------------------
def test_schema_and_docs_are_behind_the_key(serve: Callable[..., str]) -> None:
    base = serve(api_key=KEY)
    assert httpx.get(base + "/openapi.json").status_code == 401
    schema = httpx.get(base + "/openapi.json", headers=BEARER)
    assert schema.status_code == 200 and "/v1/chat/completions" in schema.json()["paths"]
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(base + path, headers=BEARER).status_code == 404, path


def test_a_store_outage_shows_clients_nothing_of_the_store(
    project: Project, serve: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    rid = project.capture("t", "q", "a")
    base = serve()
    assert httpx.post(
        base + "/v1/chat/completions", json={"model": "t", "messages": HELLO, "max_tokens": 2}
    ).is_success  # the route to `t` is known now: answers need no store read
    store = project.store
    port = free_port()  # nothing listens there: the store is down
    down = f"postgresql+psycopg://dbuser:dbpass@127.0.0.1:{port}/secretdb"
    real = store.url, store.engine
    store.url, store.engine = down, sa.create_engine(down, connect_args={"connect_timeout": 3})
    caplog.set_level(logging.WARNING)
    try:
        answer = httpx.post(
            base + "/v1/chat/completions", json={"model": "t", "messages": HELLO, "max_tokens": 2}
        )
        assert answer.status_code == 200  # answered, captured for later
        for method, path, body in [
            ("GET", "/v1/models", None),
            ("POST", "/v1/feedback", {"record_id": rid, "rating": 1}),
            ("GET", "/review/api/queue", None),
            ("POST", f"/review/api/records/{rid}/accept", {}),
        ]:
            r = httpx.request(method, base + path, json=body)
            assert r.status_code == 503, (path, r.text)
            error = r.json()["error"]
            assert error["code"] == "store_unavailable"
            assert "store is unavailable" in error["message"]
            for secret in ("dbuser", "dbpass", "secretdb", str(port), "127.0.0.1", "postgres"):
                assert secret not in r.text, (path, secret)
    finally:
        store.engine.dispose()
        store.url, store.engine = real
    # The operator's log names the store, password hidden.
    assert "postgresql+psycopg://dbuser:***@127.0.0.1" in caplog.text
    assert "dbpass" not in caplog.text


def test_store_errors_log_no_record_contents(
    project: Project, serve: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    """A store that refuses every record: what is logged names the error, not the record."""
    with project.store.begin() as c:
        c.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON records "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
    caplog.set_level(logging.INFO)
    base = serve()
    secret = "patient 4471 has condition X"
    r = httpx.post(
        base + "/v1/chat/completions",
        json={"model": "t", "messages": [{"role": "user", "content": secret}], "max_tokens": 2},
    )
    assert r.status_code == 200
    wait_for(lambda: "refused by the test" in caplog.text)
    wait_for(lambda: httpx.get(base + "/healthz").json()["capture_pending"] == 0)
    assert secret not in caplog.text and "4471" not in caplog.text


def test_api_key_from_a_file_or_the_environment_not_the_command_line(
    project: Project, tiny_base_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`whetstone serve --api-key-file` in its own process: the key works, `ps` shows no key,
    and the connection limits of the project's `serve:` settings apply there too."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    with open(project.root / "whetstone.yaml", "a") as f:
        f.write("serve:\n  request_timeout_s: 2\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "WHETSTONE_API_KEY"}
    cmd = [sys.executable, "-m", "whetstone", "--project", str(project.root), "serve"]
    cmd += ["--port", str(port)]
    cmd += ["--api-key-file", str(key_file), "--base-model", str(tiny_base_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(base + "/healthz").status_code == 200
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                return False

        wait_for(up, timeout=120)
        assert KEY not in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert httpx.get(base + "/v1/models").status_code == 401
        assert httpx.get(base + "/v1/models", headers=BEARER).status_code == 200
        assert seconds_until_closed(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n") < 10
    finally:
        proc.terminate()
        proc.wait(30)

    # --api-key still works, with a warning; the environment variable is read as before.
    seen: list[Settings] = []

    def fake_create_app(_: Any, settings: Settings, **__: Any) -> Any:
        seen.append(settings)
        raise SystemExit(0)

    monkeypatch.setattr("whetstone.serve.app.create_app", fake_create_app)
    from whetstone.cli import main

    runner = CliRunner()
    root = ["--project", str(project.root), "serve"]
    result = runner.invoke(main.app, [*root, "--api-key", "on-the-command-line"])
    assert "warning: --api-key shows the key" in result.output
    monkeypatch.setenv("WHETSTONE_API_KEY", "from-the-environment")
    result = runner.invoke(main.app, root)
    assert "warning" not in result.output
    assert [s.api_key for s in seen] == ["on-the-command-line", "from-the-environment"]
    both = runner.invoke(main.app, [*root, "--api-key", "a", "--api-key-file", str(key_file)])
    assert isinstance(both.exception, InvalidInput) and "not both" in str(both.exception)
    assert "--api-key-file" in runner.invoke(main.app, ["serve", "--help"]).output


def test_wrong_keys_are_slowed_down(serve: Callable[..., str]) -> None:
    base = serve(api_key=KEY)
    with httpx.Client(base_url=base) as c:
        for _ in range(11):  # ten are free, the eleventh blocks for a second
            assert c.post("/review/login", data={"key": "guess"}).status_code == 401
        r = c.post("/review/login", data={"key": KEY})  # even the right key waits
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "Try again in 1 s" in r.text and "whetstone_key" not in c.cookies
        r = c.get("/v1/models", headers=BEARER)  # the API is the same door
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        time.sleep(1.1)
        assert c.get("/v1/models", headers={"Authorization": "Bearer guess"}).status_code == 401
        r = c.post("/review/login", data={"key": KEY})
        assert r.status_code == 429 and r.headers["retry-after"] == "2"  # twice as long
        time.sleep(2.1)
        assert c.post("/review/login", data={"key": KEY}).status_code == 303
        assert c.get("/v1/models", headers=BEARER).status_code == 200


# ---- item 7: connections and streams ------------------------------------------------------
def seconds_until_closed(port: int, sent: bytes, limit: float = 20.0) -> float:
    """Open a raw connection, send `sent` and nothing more; the seconds until the server
    closes it (`limit` when it has not by then)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(limit)
        if sent:
            s.sendall(sent)
        try:
            while s.recv(4096):
                pass
        except TimeoutError:
            return limit
        except ConnectionResetError:
            pass
    return time.monotonic() - t0


def test_half_open_connections_are_closed(serve: Callable[..., str]) -> None:
    base = serve(request_timeout_s=2)
    port = int(base.rsplit(":", 1)[1])
    for sent in (
        b"",  # connects, says nothing
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",  # headers never finished
        b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",  # body
    ):
        took = seconds_until_closed(port, sent)
        assert 1.5 < took < 6, (sent, took)
    # A kept-alive connection gets a fresh deadline for each request.
    with httpx.Client(base_url=base) as c:
        for _ in range(3):
            assert c.get("/healthz").status_code == 200
            time.sleep(1.5)
        assert c.get("/healthz").status_code == 200


def test_a_stream_cut_short_is_stored_and_takes_feedback(
    project: Project, serve: Callable[..., str]
) -> None:
    base = serve()
    body = {"model": "t", "messages": HELLO, "max_tokens": 400, "stream": True}
    with (
        httpx.Client(base_url=base) as c,
        c.stream("POST", "/v1/chat/completions", json=body) as r,
    ):
        ref = r.headers["x-whetstone-record"]
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]  # a few chunks, then the client goes away
    assert any('"content"' in line for line in got)
    rid = wait_for(lambda: project.store.find_source_key(ref))
    rec = project.store.get_record(rid)
    assert rec.tags == ["incomplete"] and rec.meta["finish_reason"] == "disconnected"
    assert 0 < rec.meta["completion_tokens"] < 400
    r = httpx.post(base + "/v1/feedback", json={"record_id": f"chatcmpl-{ref}", "rating": -1})
    assert r.status_code == 200 and set(r.json()["tags"]) == {"incomplete", "thumbs-down"}
