"""The review page (/review), served by a real uvicorn server and driven in Debian's Chromium.

The browser tests need /usr/bin/chromium (scripts/install_browser.sh installs it). Without it
they are skipped on a workstation and fail under CI, where the browser must be there.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import whetstone
from whetstone.project import Project
from whetstone.records import Status

KEY = "s3cret-review-key"
XSS_INPUT = '<script>window.__xss = 1</script><img src="x" onerror="window.__xss = 2">'
XSS_OUTPUT = '<b onmouseover="window.__xss = 3">bold</b>'
ADDRESS_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}


# ---- a seeded project ---------------------------------------------------------------------
@dataclass
class Seeded:
    project: Project
    ids: dict[str, int]

    @property
    def store(self) -> Any:
        return self.project.store


def seed(root: Path) -> Seeded:
    p = whetstone.init(str(root))
    p.create_task("sentiment", "classify", labels=["positive", "negative", "neutral"])
    p.create_task("address", "extract", schema=ADDRESS_SCHEMA)
    cap = p.capture
    ids = {
        "great": cap("sentiment", "great product", "positive", confidence=0.9, model="sentiment@1"),
        "meh": cap("sentiment", "meh", "positive", confidence=0.3),
        "terrible": cap("sentiment", "terrible", "positive", confidence=0.8, tags=["thumbs-down"]),
        "fine": cap("sentiment", "fine I guess", "neutral"),  # no confidence: after the rest
        "done": cap("sentiment", "ok", "neutral", confidence=0.1),
        "main_st": cap(
            "address",
            "10 Main St, Springfield",
            '{"city": "Shelbyville"}',
            confidence=0.5,
            tags=["hard"],
        ),
        "xss": cap("address", XSS_INPUT, XSS_OUTPUT, confidence=0.95),
    }
    p.accept(ids["done"], annotator="earlier")
    return Seeded(p, ids)


# Unreviewed, most likely wrong first: flagged (thumbs-down / hard) by confidence, then the
# rest by confidence, unknown confidence last.
ALL_ORDER = ["main_st", "terrible", "meh", "great", "xss", "fine"]
SENTIMENT_ORDER = ["terrible", "meh", "great", "fine"]


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[Seeded]:
    s = seed(tmp_path / "proj")
    yield s
    s.project.close()


# ---- a real server ------------------------------------------------------------------------
def make_app(project: Project, base_dir: Path, api_key: str | None) -> Any:
    """The real server app. The review page needs no model, so the tiny random-weight base
    stands in for the bundled one: it loads in milliseconds."""
    from whetstone.serve.app import create_app
    from whetstone.serve.settings import Settings

    return create_app(project, Settings(api_key=api_key), base_model=str(base_dir))


@contextmanager
def running(app: Any) -> Iterator[str]:
    """Serve `app` with uvicorn on a free localhost port, in a background thread."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port; uvicorn serves on this socket
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the review server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def serve(tiny_base_dir: Path) -> Iterator[Callable[..., str]]:
    """serve(project, api_key=None) -> base URL of a running server; stopped after the test."""
    stack: list[Any] = []

    def start(project: Project, api_key: str | None = None) -> str:
        cm = running(make_app(project, tiny_base_dir, api_key))
        stack.append(cm)
        return cm.__enter__()

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


# ---- the browser --------------------------------------------------------------------------
@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def open_review(page: Any, base: str, query: str = "") -> None:
    page.goto(f"{base}/review{query}")
    page.wait_for_selector("body[data-ready=true]")


def queue_ids(page: Any) -> list[int]:
    return [
        int(x)
        for x in page.locator("#queue-list li").evaluate_all("ls => ls.map(l => l.dataset.id)")
    ]


def shown_id(page: Any) -> int:
    return int(page.locator("#record-meta .rid").inner_text().lstrip("#"))


def wait_shown(page: Any, record_id: int) -> None:
    page.wait_for_function(
        "id => document.querySelector('#record-meta .rid')?.textContent === '#' + id", arg=record_id
    )


# ---- the queue, without a browser ---------------------------------------------------------
def test_queue_api_orders_and_pages(seeded: Seeded, serve: Callable[..., str]) -> None:
    base = serve(seeded.project)
    got: list[int] = []
    for offset in (0, 2, 4, 6):
        r = httpx.get(f"{base}/review/api/queue", params={"limit": 2, "offset": offset})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["total"] == len(ALL_ORDER)
        got += [item["id"] for item in body["items"]]
    assert got == [seeded.ids[k] for k in ALL_ORDER]

    r = httpx.get(f"{base}/review/api/queue", params={"task": "sentiment", "status": "all"})
    assert [i["id"] for i in r.json()["items"]] == [
        seeded.ids[k] for k in ["terrible", "done", "meh", "great", "fine"]
    ]
    r = httpx.get(f"{base}/review/api/queue", params={"task": "nope"})
    assert r.status_code == 404 and "unknown task 'nope'" in r.json()["error"]["message"]
    r = httpx.get(f"{base}/review/api/queue", params={"status": "maybe"})
    assert r.status_code == 400 and "unknown status 'maybe'" in r.json()["error"]["message"]


def test_api_correction_follows_the_records_correct_rules(
    seeded: Seeded, serve: Callable[..., str]
) -> None:
    base = serve(seeded.project)
    rid = seeded.ids["main_st"]
    for reference, why in [
        ("not json", "not valid JSON"),
        ('{"town": "Springfield"}', "fails the task schema"),
    ]:
        r = httpx.post(f"{base}/review/api/records/{rid}/correct", json={"reference": reference})
        assert r.status_code == 400 and why in r.json()["error"]["message"], r.text
    rec = seeded.store.get_record(rid)
    assert (rec.status, rec.reference, rec.history) == (Status.unreviewed, None, [])

    r = httpx.post(
        f"{base}/review/api/records/{rid}/correct",
        json={"reference": '{ "city": "Springfield" }', "error_category": "wrong_city"},
    )
    assert r.status_code == 200, r.text
    rec = seeded.store.get_record(rid)
    assert rec.reference == '{"city":"Springfield"}'  # canonical JSON, as the CLI stores it
    assert rec.output == '{"city": "Shelbyville"}'
    r = httpx.post(f"{base}/review/api/records/999999/accept", json={})
    assert r.status_code == 404


def fake_ranking(seeded: Seeded, keys: list[str], calls: list[tuple[str, int]]) -> Any:
    """A stand-in for `curate next` (which embeds every record): the same call, the same
    return shape, a fixed order."""

    def next_to_label(project: Project, task: str, n: int) -> list[Any]:
        calls.append((task, n))
        recs = [project.record(seeded.ids[k]) for k in keys]
        return [(rec, 1.0 - i / 10, {"uncertainty": 0.5}) for i, rec in enumerate(recs)][:n]

    return next_to_label


CURATE_KEYS = ["fine", "great", "terrible", "meh"]


def test_curate_next_ranking_is_offered_when_installed(
    seeded: Seeded, serve: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from whetstone.curate.next import next_to_label
    from whetstone.serve import review_api

    assert review_api._next_to_label() is next_to_label
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(
        review_api, "_next_to_label", lambda: fake_ranking(seeded, CURATE_KEYS, calls)
    )
    base = serve(seeded.project)
    assert httpx.get(f"{base}/review/api/config").json()["curate_available"] is True
    ranking = [seeded.ids[k] for k in CURATE_KEYS]
    got = []
    for offset in (0, 2):
        r = httpx.get(
            f"{base}/review/api/queue",
            params={"task": "sentiment", "order": "curate", "limit": 2, "offset": offset},
        )
        assert r.json()["total"] == 4  # the task's unreviewed production records
        got += [i["id"] for i in r.json()["items"]]
    assert got == ranking
    assert calls == [("sentiment", 2), ("sentiment", 4)]
    r = httpx.get(f"{base}/review/api/queue", params={"order": "curate"})
    assert r.status_code == 400 and "choose a task" in r.json()["error"]["message"]

    monkeypatch.setattr(review_api, "_next_to_label", lambda: None)
    assert httpx.get(f"{base}/review/api/config").json()["curate_available"] is False


def test_key_guards_every_review_route(seeded: Seeded, serve: Callable[..., str]) -> None:
    base = serve(seeded.project, api_key=KEY)
    with httpx.Client(base_url=base) as c:
        r = c.get("/review")
        assert r.status_code == 303 and r.headers["location"] == "/review/login"
        for path in ["/review/api/config", "/review/api/queue", "/review/static/review.js"]:
            assert c.get(path).status_code == 401, path
        rid = seeded.ids["meh"]
        assert c.post(f"/review/api/records/{rid}/accept", json={}).status_code == 401
        assert seeded.store.get_record(rid).status == Status.unreviewed

        assert c.post("/review/login", data={"key": "wrong"}).status_code == 401
        assert c.post("/review/login", data={"key": KEY[:-1]}).status_code == 401
        assert "whetstone_key" not in c.cookies
        r = c.post("/review/login", data={"key": KEY})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/review/api/config").status_code == 200  # the cookie now goes along

    bearer = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(f"{base}/review/api/queue", headers=bearer).status_code == 200
    big = httpx.post(f"{base}/review/login", content=b"key=" + b"x" * 10_000)
    assert big.status_code == 413


def test_page_serves_only_its_own_files_under_a_strict_policy(
    seeded: Seeded, serve: Callable[..., str]
) -> None:
    base = serve(seeded.project)
    r = httpx.get(f"{base}/review")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert httpx.get(f"{base}/review/static/review.css").status_code == 200
    for name in ["review.html", "..%2Freview.py", "%2e%2e%2fauth.py"]:
        assert httpx.get(f"{base}/review/static/{name}").status_code == 404, name
    html = (Path(review_static()) / "review.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing from a CDN


def review_static() -> Path:
    from whetstone.serve import review

    return review.STATIC


# ---- in the browser -----------------------------------------------------------------------
def test_queue_order_and_filters(seeded: Seeded, serve: Callable[..., str], page: Any) -> None:
    open_review(page, serve(seeded.project))
    assert queue_ids(page) == [seeded.ids[k] for k in ALL_ORDER]
    assert shown_id(page) == seeded.ids["main_st"]
    # An extract answer is shown pretty-printed.
    assert page.locator("#output").inner_text() == json.dumps({"city": "Shelbyville"}, indent=2)

    page.select_option("#task-filter", "sentiment")
    wait_shown(page, seeded.ids["terrible"])
    assert queue_ids(page) == [seeded.ids[k] for k in SENTIMENT_ORDER]
    assert page.locator("#label-choices button").all_inner_texts() == [
        "positive",
        "negative",
        "neutral",
    ]

    page.select_option("#status-filter", "accepted")
    wait_shown(page, seeded.ids["done"])
    assert queue_ids(page) == [seeded.ids["done"]]


def test_curate_toggle_reorders_the_queue(
    seeded: Seeded, serve: Callable[..., str], page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from whetstone.serve import review_api

    monkeypatch.setattr(review_api, "_next_to_label", lambda: fake_ranking(seeded, CURATE_KEYS, []))
    open_review(page, serve(seeded.project))
    assert page.is_disabled("#curate-order")  # the ranking is per task
    page.select_option("#task-filter", "sentiment")
    wait_shown(page, seeded.ids["terrible"])
    page.check("#curate-order")
    wait_shown(page, seeded.ids["fine"])
    assert queue_ids(page) == [seeded.ids[k] for k in CURATE_KEYS]
    page.uncheck("#curate-order")
    wait_shown(page, seeded.ids["terrible"])
    assert queue_ids(page) == [seeded.ids[k] for k in SENTIMENT_ORDER]


def test_correction_with_the_keyboard_is_stored(
    seeded: Seeded, serve: Callable[..., str], page: Any
) -> None:
    base = serve(seeded.project)
    open_review(page, base, "?task=sentiment")
    rid = seeded.ids["terrible"]
    wait_shown(page, rid)
    assert page.input_value("#answer") == "positive"  # pre-filled with the model's answer
    page.fill("#annotator", "ada")

    page.fill("#answer", "negative")
    page.keyboard.press("Escape")  # leave the text box, so that keys are shortcuts again
    page.keyboard.press("e")  # focuses the error category, without typing an "e" in it
    page.keyboard.type("wrong_label")
    assert page.input_value("#category") == "wrong_label"
    page.fill("#comment", "sarcasm")
    page.keyboard.press("Control+Enter")

    wait_shown(page, seeded.ids["meh"])  # moved on to the next record
    assert f"Record #{rid} corrected" in page.inner_text("#message")
    rec = seeded.store.get_record(rid)
    assert rec.status == Status.corrected
    assert rec.reference == "negative"
    assert rec.error_category == "wrong_label"
    assert rec.annotator == "ada"
    assert rec.output == "positive"  # the model's answer is kept
    assert [(ev.status, ev.comment) for ev in rec.history] == [(Status.corrected, "sarcasm")]

    # The annotator's name is remembered; the category used is now suggested.
    open_review(page, base, "?task=sentiment&status=all")
    assert page.input_value("#annotator") == "ada"
    suggestions = page.locator("#category-list option").evaluate_all("os => os.map(o => o.value)")
    assert "wrong_label" in suggestions


def test_an_escalated_record_shows_both_answers_and_takes_the_heros_in_one_click(
    seeded: Seeded, serve: Callable[..., str], page: Any
) -> None:
    hero = '{"city":"Springfield"}'
    cascade = {
        "route": "cascade",
        "answered_by": "hero",
        "reason": "check",
        "threshold": None,
        "workhorse": {"output": "Springfield, no JSON", "confidence": -2.5},
        "hero": {"output": hero, "model": "stub-large", "cost": 0.02},
    }
    rid = seeded.project.capture(
        "address", "1 Elm St, Springfield", hero, tags=["escalated"], meta={"cascade": cascade}
    )
    base = serve(seeded.project)
    open_review(page, base, "?task=address")
    wait_shown(page, seeded.ids["main_st"])
    assert page.locator("#cascade").is_hidden()  # no cascade, no second pair of answers
    page.click(f'#queue-list li[data-id="{rid}"]')
    wait_shown(page, rid)
    assert "Springfield, no JSON" in page.inner_text("#cascade-workhorse")
    assert '"city": "Springfield"' in page.inner_text("#cascade-hero")
    assert page.text_content("#cascade-hero-model") == "(stub-large)"
    page.click("#use-hero")
    page.wait_for_function(
        "id => document.querySelector('#message').textContent.includes('#' + id + ' corrected')",
        arg=rid,
    )
    rec = seeded.store.get_record(rid)
    assert (rec.status, rec.reference) == (Status.corrected, hero)


def test_accept_reject_and_navigation_by_key(
    seeded: Seeded, serve: Callable[..., str], page: Any
) -> None:
    open_review(page, serve(seeded.project))
    first, second, third, fourth = (seeded.ids[k] for k in ALL_ORDER[:4])
    wait_shown(page, first)
    page.keyboard.press("a")
    wait_shown(page, second)
    page.fill("#category", "off_topic")
    page.click("#reject")  # the button does what the key does
    wait_shown(page, third)
    page.keyboard.press("j")
    wait_shown(page, fourth)
    page.keyboard.press("k")
    wait_shown(page, third)

    accepted = seeded.store.get_record(first)
    assert accepted.status == Status.accepted
    assert accepted.reference == '{"city":"Shelbyville"}'  # the model's answer, as truth
    rejected = seeded.store.get_record(second)
    assert (rejected.status, rejected.error_category) == (Status.rejected, "off_topic")
    assert rejected.reference is None
    untouched = seeded.store.get_record(third)
    assert untouched.status == Status.unreviewed
    assert page.locator("#queue-list li.done").count() == 2


def test_invalid_correction_shows_the_error_and_stores_nothing(
    seeded: Seeded, serve: Callable[..., str], page: Any
) -> None:
    open_review(page, serve(seeded.project), "?task=sentiment")
    rid = seeded.ids["terrible"]
    wait_shown(page, rid)
    page.fill("#answer", "furious")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#message.error")
    assert "label 'furious' is not one of the task's labels" in page.inner_text("#message")
    assert shown_id(page) == rid  # still on the record, the reviewer's text kept
    assert page.input_value("#answer") == "furious"

    page.select_option("#task-filter", "address")
    wait_shown(page, seeded.ids["main_st"])
    page.fill("#answer", '{"town": "Springfield"}')
    page.click("#correct")
    page.wait_for_selector("#message.error")
    assert "fails the task schema" in page.inner_text("#message")

    for key in ("terrible", "main_st"):
        rec = seeded.store.get_record(seeded.ids[key])
        assert (rec.status, rec.reference, rec.history) == (Status.unreviewed, None, [])


def test_paging_past_decisions_skips_and_repeats_nothing(
    seeded: Seeded, serve: Callable[..., str], page: Any
) -> None:
    p = seeded.project
    p.create_task("bulk", "generate")
    ids = [p.capture("bulk", f"question {i}", f"answer {i}", confidence=i / 100) for i in range(53)]
    open_review(page, serve(p), "?task=bulk")
    assert queue_ids(page) == ids[:50]  # one page
    page.keyboard.press("a")
    wait_shown(page, ids[1])
    page.keyboard.press("a")
    wait_shown(page, ids[2])
    # Two records have left the unreviewed queue: the next page starts after the 48 still in it.
    page.click("#load-more")
    page.wait_for_function("() => document.querySelectorAll('#queue-list li').length === 53")
    assert queue_ids(page) == ids
    assert page.is_hidden("#load-more")


def test_record_text_is_rendered_as_text(
    seeded: Seeded, serve: Callable[..., str], page: Any
) -> None:
    open_review(page, serve(seeded.project), "?task=address")
    rid = seeded.ids["xss"]
    page.click(f'#queue-list li[data-id="{rid}"]')
    wait_shown(page, rid)
    assert page.locator("#input").inner_text() == XSS_INPUT
    assert page.locator("#output").inner_text() == XSS_OUTPUT
    assert page.input_value("#answer") == XSS_OUTPUT
    assert page.locator("#input img, #input script, #output b, #queue-list img").count() == 0
    page.hover("#output")
    assert page.evaluate("window.__xss") is None


def test_login_is_required_with_a_key(seeded: Seeded, serve: Callable[..., str], page: Any) -> None:
    base = serve(seeded.project, api_key=KEY)
    page.goto(f"{base}/review")
    assert page.url == f"{base}/review/login"

    page.fill("#key", "not-the-key")
    page.click("button[type=submit]")
    assert "Wrong key." in page.inner_text(".error")
    assert page.context.cookies() == []

    page.fill("#key", KEY)
    page.click("button[type=submit]")
    page.wait_for_selector("body[data-ready=true]")
    assert page.url == f"{base}/review"
    (cookie,) = page.context.cookies()
    assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
        "whetstone_key",
        True,
        "Strict",
    )
    assert page.evaluate("document.cookie") == ""  # the page's script never sees the key
    assert queue_ids(page) == [seeded.ids[k] for k in ALL_ORDER]

    # The API calls the page makes carry the cookie: a decision goes through.
    page.keyboard.press("a")
    wait_shown(page, seeded.ids[ALL_ORDER[1]])
    assert seeded.store.get_record(seeded.ids[ALL_ORDER[0]]).status == Status.accepted

    page.click("#logout button")
    page.wait_for_url(f"{base}/review/login")
    page.goto(f"{base}/review")
    assert page.url == f"{base}/review/login"
