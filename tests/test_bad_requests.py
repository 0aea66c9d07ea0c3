"""Requests that used to crash the server with a 500 (integer overflow, recursion, a lone
surrogate) are 400s naming what is wrong, on each store backend, and the server keeps
serving."""

from __future__ import annotations

from pathlib import Path

import httpx

import whetstone
from serve_helpers import running
from whetstone.serve.app import create_app
from whetstone.serve.settings import Settings
from whetstone.storable import MAX_ID

HUGE = 2**63  # one past the largest id the store's drivers bind
JSON = {"content-type": "application/json"}


def _error(r: httpx.Response, status: int = 400) -> str:
    assert r.status_code == status, r.text
    return str(r.json()["error"]["message"])


def test_overflow_recursion_and_surrogates_are_400s(
    tiny_base_dir: Path, tmp_path: Path, store_url: str
) -> None:
    p = whetstone.init(str(tmp_path / "proj"), base_model=str(tiny_base_dir), db=store_url)
    p.create_task("t", "generate")
    app = create_app(p, Settings(max_wait_ms=20))
    with running(app) as url:
        h = httpx.Client(base_url=url, timeout=60)
        ok = {"model": "t", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
        assert h.post("/v1/chat/completions", json=ok).status_code == 200

        # /v1/feedback: ids past the store's integers, as numbers and as digits
        for rid in (HUGE, str(HUGE), 10**30, -1):
            msg = _error(h.post("/v1/feedback", json={"record_id": rid, "rating": 1}))
            assert msg == f"record_id: a record id is between 0 and {MAX_ID}"
        r = h.post("/v1/feedback", json={"record_id": MAX_ID, "rating": 1})
        assert r.status_code == 404  # the largest id is a fine id, just not one we have
        assert _error(h.post("/v1/feedback", json={"record_id": "²", "rating": 1}), 404)

        # the review API: a path id and a queue offset past the store's integers
        msg = _error(h.get(f"/review/api/records/{HUGE}"))
        assert "record_id" in msg and str(MAX_ID) in msg
        assert h.get(f"/review/api/records/{MAX_ID}").status_code == 404
        msg = _error(h.get("/review/api/queue", params={"offset": str(10**30)}))
        assert "offset" in msg
        assert h.get("/review/api/queue", params={"offset": MAX_ID - 200}).json()["items"] == []

        # JSON nested 100,000 deep
        deep = b'{"model": "t", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/feedback"):
            msg = _error(h.post(path, content=deep, headers=JSON))
            assert msg == "the request body is nested deeper than 64 levels"
        r = h.post("/review/api/records/1/reject", content=b"[" * 100_000, headers=JSON)
        assert r.status_code in (400, 403)  # 403 where the review API wants a CSRF token first

        # a lone surrogate, as a JSON escape, in the content
        raw = b'{"model": "t", "messages": [{"role": "user", "content": "\\ud800"}]}'
        msg = _error(h.post("/v1/chat/completions", content=raw, headers=JSON))
        assert (
            msg == "messages[0].content contains a lone surrogate (\\ud800), which cannot be stored"
        )

        assert h.get("/healthz").json()["status"] == "ok"
        assert h.post("/v1/chat/completions", json=ok).status_code == 200
        metrics = h.get("/metrics").text
        assert 'status="500"' not in metrics
    p.close()
