"""The server end to end: the official `openai` client against a real uvicorn server on a
tiny random-weight base model with tiny random LoRA adapters."""

from __future__ import annotations

import concurrent.futures as cf
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import whetstone
from serve_helpers import register_lora, running, wait_for
from whetstone import registry
from whetstone.serve.app import create_app
from whetstone.serve.settings import Settings

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def served(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One project, three tasks, adapters; one server for the tests that share it."""
    tmp = tmp_path_factory.mktemp("serve")
    p = whetstone.init(tmp / "proj", base_model=str(tiny_base_dir))
    p.create_task("support", "generate", instruction="Answer briefly.")
    p.create_task("sentiment", "classify", labels=["pos", "neg"])
    p.create_task("fresh", "generate")
    avs = [register_lora(p, "support", tiny_base_dir, seed, tmp) for seed in (1, 2, 3)]
    registry.set_stage(p, avs[0].name, "production", action="promote")
    sent = register_lora(p, "sentiment", tiny_base_dir, 4, tmp)
    registry.set_stage(p, sent.name, "production", action="promote")
    app = create_app(p, Settings(max_wait_ms=150, max_adapters=8))  # routes polled each 1 s
    with running(app) as url:
        yield p, url, app
    p.close()


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def chat(url: str, model: str, messages: list[dict[str, str]] = HELLO, **kw: Any) -> Any:
    kw.setdefault("max_tokens", 8)
    return client(url).chat.completions.with_raw_response.create(
        model=model, messages=messages, **kw
    )


def test_chat_completions_models_and_streaming(served: Any) -> None:
    _, url, _ = served
    raw = chat(url, "support")
    done = raw.parse()
    ref = raw.headers["x-whetstone-record"]
    assert done.id == f"chatcmpl-{ref}"
    assert done.model == "support@1" and raw.headers["x-whetstone-model"] == "support@1"
    assert done.usage.completion_tokens == 8 and done.choices[0].finish_reason == "length"
    # Streaming gives the same greedy answer, chunk by chunk, ending with [DONE].
    chunks = list(
        client(url).chat.completions.create(
            model="support",
            messages=HELLO,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == done.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 8
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    # Completions, plain and streamed.
    comp = client(url).completions.create(model="support@2", prompt="hello there", max_tokens=6)
    assert comp.id.startswith("cmpl-") and comp.usage.completion_tokens == 6
    streamed = client(url).completions.create(
        model="support@2", prompt="hello there", max_tokens=6, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == comp.choices[0].text
    ids = {m.id for m in client(url).models.list()}
    assert {"base", "support", "sentiment", "support@1", "support@2", "support@3"} <= ids


def test_every_answer_is_captured_with_its_reference(served: Any) -> None:
    p, url, _ = served
    raw = chat(url, "support", max_tokens=5)
    ref = raw.headers["x-whetstone-record"]
    rid = wait_for(lambda: p.store.find_source_key(ref))
    rec = p.record(rid)
    assert rec.source.value == "production" and rec.task == "support"
    assert rec.model == "support@1" and rec.input[0].content == "hello there"
    assert rec.output == raw.parse().choices[0].message.content.strip()
    assert rec.confidence == pytest.approx(raw.parse().whetstone["confidence"])
    assert rec.meta["completion_tokens"] == 5 and rec.meta["latency_ms"] > 0
    assert rec.meta["request_id"] == ref and rec.meta["prompt_tokens"] > 0


def test_mixed_adapter_batch_gives_each_adapter_its_own_answer(served: Any) -> None:
    """Requests for different adapters (and the base) run in ONE forward pass, and each gets
    exactly what it gets alone (greedy)."""
    _, url, app = served
    models = ["support@1", "support@2", "support@3", "sentiment@1", "base"]
    alone = {m: chat(url, m, max_tokens=10).parse().choices[0].message.content for m in models}
    assert len(set(alone.values())) >= 4, "the adapters should change the answers"
    before = app.state.services.metrics.batch_adapters.collect()[0].samples
    with cf.ThreadPoolExecutor(len(models) * 2) as pool:
        together = list(pool.map(lambda m: (m, chat(url, m, max_tokens=10)), models * 2))
    for m, raw in together:
        assert raw.parse().choices[0].message.content == alone[m], m
    after = app.state.services.metrics.batch_adapters.collect()[0].samples

    def mixed(samples: list[Any]) -> float:
        count = next(s.value for s in samples if s.name.endswith("_count"))
        single = next(s.value for s in samples if s.labels.get("le") == "1.0")
        return count - single

    assert mixed(after) > mixed(before), "no batch held more than one adapter"


def test_feedback_corrects_accepts_and_flags(served: Any) -> None:
    p, url, _ = served
    h = httpx.Client(base_url=url)
    ref = chat(url, "sentiment").headers["x-whetstone-record"]
    wait_for(lambda: p.store.find_source_key(ref))
    # A reference outside the label set is refused, as by `whetstone records correct`.
    bad = h.post("/v1/feedback", json={"record_id": ref, "reference": "meh"})
    assert bad.status_code == 400 and "labels" in bad.json()["error"]["message"]
    ok = h.post(
        "/v1/feedback",
        json={
            "record_id": f"chatcmpl-{ref}",
            "reference": "pos",
            "error_category": "wrong-label",
            "comment": "c",
        },
    )
    assert ok.status_code == 200 and ok.json()["status"] == "corrected"
    rec = p.record(p.store.find_source_key(ref))
    assert rec.reference == "pos" and rec.error_category == "wrong-label"
    assert rec.history[-1].comment == "c"

    up = chat(url, "support").headers["x-whetstone-record"]
    assert (
        h.post("/v1/feedback", json={"record_id": up, "rating": 1}).json()["status"] == "accepted"
    )
    down = chat(url, "support").headers["x-whetstone-record"]
    r = h.post("/v1/feedback", json={"record_id": down, "rating": "down", "comment": "rude"})
    assert r.json()["status"] == "unreviewed" and "thumbs-down" in r.json()["tags"]
    # The numeric id works too.
    rid = p.store.find_source_key(down)
    assert h.post("/v1/feedback", json={"record_id": rid, "rating": 1}).status_code == 200

    for unknown in ("0123456789abcdef0123456789abcdef", 999999):
        r = h.post("/v1/feedback", json={"record_id": unknown, "rating": 1})
        assert r.status_code == 404 and r.json()["error"]["code"] == "record_not_found"
    assert h.post("/v1/feedback", json={"record_id": rid}).status_code == 400


def test_bad_input_gives_openai_errors_and_the_server_keeps_serving(served: Any) -> None:
    _, url, _ = served
    with pytest.raises(openai.NotFoundError) as e:
        chat(url, "no-such-task")
    assert e.value.body["code"] == "model_not_found"
    for name in ("../../etc/passwd", "support/../../x", "support@1/..", "..", "a b"):
        with pytest.raises(openai.NotFoundError):
            chat(url, name)
    h = httpx.Client(base_url=url)
    r = h.post(
        "/v1/chat/completions",
        content=b'{"model": "support", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = h.post("/v1/chat/completions", json={"model": "support", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    long = [{"role": "user", "content": "word " * 600}]  # the tiny model's context is 512
    with pytest.raises(openai.BadRequestError) as e:
        chat(url, "support", long)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        chat(url, "support", max_tokens=100_000)
    with pytest.raises(openai.BadRequestError):
        chat(url, "support", n=100)  # more samples than a request may ask for
    assert h.get("/healthz").json()["status"] == "ok"
    assert chat(url, "support").parse().usage.completion_tokens == 8


def test_promotion_is_picked_up_without_restart(served: Any) -> None:
    """With no traffic at all after a promotion (a request a minute), the server learns of it
    by itself: the very next single request is answered by the new production adapter."""
    p, url, app = served
    router = app.state.services.router
    fallback = chat(url, "fresh")  # a task with no production adapter: the base answers
    assert fallback.headers["x-whetstone-fallback"] == "base"
    assert fallback.headers["x-whetstone-model"] == "base"
    assert chat(url, "support").headers["x-whetstone-model"] == "support@1"
    registry.set_stage(p, "support@2", "production", action="promote")
    try:
        # No request in between: only the server's own watcher can read the registry.
        wait_for(lambda: router.generation == registry.generation(p), timeout=10)
        assert chat(url, "support").headers["x-whetstone-model"] == "support@2"
    finally:
        registry.set_stage(p, "support@1", "production", action="rollback")
    wait_for(lambda: router.generation == registry.generation(p), timeout=10)
    assert chat(url, "support").headers["x-whetstone-model"] == "support@1"


def test_base_answers_without_a_task_and_creates_none(served: Any) -> None:
    """`base` alone is the base model with no task instruction: it belongs to no task, so it is
    not captured (and says so); with a `task` it is captured under that task."""
    p, url, _ = served
    tasks = [t.name for t in p.store.list_tasks()]
    raw = chat(url, "base")
    assert raw.headers["x-whetstone-captured"] == "false"
    assert "x-whetstone-record" not in raw.headers
    assert raw.parse().model == "base" and raw.parse().whetstone["record"] is None
    streamed = list(
        client(url).chat.completions.create(model="base", messages=HELLO, max_tokens=4, stream=True)
    )
    assert streamed and client(url).completions.create(model="base", prompt="hi", max_tokens=4)
    assert [t.name for t in p.store.list_tasks()] == tasks
    assert "base" in {m.id for m in client(url).models.list()}
    hinted = chat(url, "base", extra_body={"task": "support"})
    assert hinted.headers["x-whetstone-captured"] == "true"
    rec = p.record(wait_for(lambda: p.store.find_source_key(hinted.headers["x-whetstone-record"])))
    assert rec.task == "support" and rec.model.startswith("base:")
    with pytest.raises(openai.NotFoundError) as e:
        chat(url, "base", extra_body={"task": "nope"})
    assert e.value.body["code"] == "task_not_found"
    assert [t.name for t in p.store.list_tasks()] == tasks


def test_promoted_adapter_with_deleted_files_is_a_clear_error(
    served: Any, tiny_base_dir: Path, tmp_path: Path
) -> None:
    import shutil

    p, url, _ = served
    p.create_task("gone", "generate")
    av = register_lora(p, "gone", tiny_base_dir, 9, tmp_path)
    registry.set_stage(p, av.name, "production", action="promote")
    shutil.rmtree(av.path)
    with pytest.raises(openai.InternalServerError) as e:
        chat(url, "gone")
    assert "missing" in e.value.body["message"]
    assert chat(url, "support").parse().usage.completion_tokens == 8


def test_metrics_and_health(served: Any) -> None:
    _, url, _ = served
    chat(url, "support")
    text = httpx.get(url + "/metrics").text
    for name in (
        "whetstone_requests_total",
        "whetstone_request_latency_seconds_bucket",
        "whetstone_completion_tokens_total",
        "whetstone_queue_depth",
        "whetstone_capture_pending",
        "whetstone_adapters_loaded",
    ):
        assert name in text
    assert 'model="support@1"' in text


def test_adapters_load_on_use_and_evict_least_recently_used(
    tiny_base_dir: Path, tmp_path: Path
) -> None:
    p = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir))
    p.create_task("t", "generate")
    for seed in range(3):
        register_lora(p, "t", tiny_base_dir, seed, tmp_path)
    app = create_app(p, Settings(max_adapters=2, max_wait_ms=0))
    with running(app) as url:
        h = httpx.Client(base_url=url)
        for v in (1, 2, 3):
            chat(url, f"t@{v}")
        assert h.get("/admin/adapters").json()["loaded"] == ["t@2", "t@3"]
        assert h.post("/admin/adapters/load", json={"model": "t@1"}).json()["loaded"] == [
            "t@3",
            "t@1",
        ]
        assert h.post("/admin/adapters/unload", json={"model": "t@3"}).json()["loaded"] == ["t@1"]
        assert h.post("/admin/adapters/unload", json={"model": "t@3"}).status_code == 404
        # Only registry names: never a path.
        for bad in ("../t/1", str(p.home / "adapters" / "t" / "1"), "t@1/../../.."):
            r = h.post("/admin/adapters/load", json={"model": bad})
            assert r.status_code == 404, bad
        assert h.post("/admin/adapters/load", json={"path": "/tmp"}).status_code == 400
        # One copy of the base: the adapters hang off the same model object.
        assert app.state.services.engine.pool.model.base_model.model is not None
    p.close()


def test_api_key_is_required_everywhere_but_healthz(tiny_base_dir: Path, tmp_path: Path) -> None:
    p = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir))
    p.create_task("t", "generate")
    app = create_app(p, Settings(api_key="s3cret"))
    with running(app) as url:
        h = httpx.Client(base_url=url)
        calls = [
            ("GET", "/v1/models", None),
            ("POST", "/v1/chat/completions", {"model": "t", "messages": HELLO, "max_tokens": 2}),
            ("POST", "/v1/completions", {"model": "t", "prompt": "hi", "max_tokens": 2}),
            ("POST", "/v1/feedback", {"record_id": 1, "rating": 1}),
            ("GET", "/metrics", None),
            ("GET", "/admin/adapters", None),
            ("POST", "/admin/adapters/load", {"model": "t@1"}),
            ("POST", "/admin/adapters/unload", {"model": "t@1"}),
        ]
        for method, path, body in calls:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                r = h.request(method, path, json=body, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"]["code"] == "invalid_api_key"
            r = h.request(method, path, json=body, headers={"Authorization": "Bearer s3cret"})
            assert r.status_code != 401, path
        assert h.get("/healthz").status_code == 200
        assert h.get("/review", follow_redirects=False).status_code in (303, 307, 401)
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        assert client(url, "s3cret").models.list().data
    p.close()


def test_bodies_over_the_limit_are_refused_before_parsing(
    tiny_base_dir: Path, tmp_path: Path
) -> None:
    p = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir))
    p.create_task("t", "generate")
    app = create_app(p, Settings(max_body_bytes=2000))
    with running(app) as url:
        h = httpx.Client(base_url=url)
        junk = b"{" * 5000  # not JSON: a parser would answer 400, the limit answers first
        r = h.post("/v1/chat/completions", content=junk)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks() -> Any:  # no Content-Length: the limit is enforced as bytes arrive
            for _ in range(10):
                yield b"{" * 500

        r = h.post("/v1/chat/completions", content=chunks())
        assert r.status_code == 413
        big = {"model": "t", "messages": [{"role": "user", "content": "x" * 3000}]}
        with pytest.raises(openai.APIStatusError) as e:
            client(url).chat.completions.create(**big)
        assert e.value.status_code == 413
        assert chat(url, "t", max_tokens=2).parse().usage.completion_tokens == 2
    p.close()


def test_store_outage_loses_no_record(tiny_base_dir: Path, tmp_path: Path) -> None:
    """While another process holds the store's write lock, requests are answered (they never
    wait for the store); once it lets go, every answer is in the store."""
    p = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir))
    p.create_task("t", "generate")
    app = create_app(p, Settings(max_wait_ms=20))
    with running(app) as url:
        chat(url, "t", max_tokens=2)  # warm the routes: a locked store then holds nothing up
        wait_for(lambda: app.state.services.capture.depth == 0)
        lock = sqlite3.connect(p.home / "whetstone.db", timeout=30, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            with cf.ThreadPoolExecutor(8) as pool:
                refs = list(
                    pool.map(
                        lambda i: chat(
                            url, "t", [{"role": "user", "content": f"q{i}"}], max_tokens=3
                        ).headers["x-whetstone-record"],
                        range(24),
                    )
                )
            health = httpx.get(url + "/healthz").json()
            assert health["capture_pending"] == 24  # answered, none written: the store is locked
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_for(lambda: httpx.get(url + "/healthz").json()["capture_pending"] == 0, 60)
    recs = p.records("t")
    assert {r.source_key for r in recs} >= set(refs) and len(recs) == 25
    assert {r.input[0].content for r in recs} >= {f"q{i}" for i in range(24)}
    p.close()
