"""Cross-site request forgery, in Debian's Chromium: a browser logged in to the review page
opens a page on another origin (another port of 127.0.0.1: the same *site*, so even a
SameSite=Strict cookie goes along), which tries every way a page can post to the server
without reading its answers. Nothing it sends may change a record.

Needs /usr/bin/chromium (scripts/install_browser.sh), as test_review_page.py does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import whetstone
from serve_helpers import running
from whetstone.project import Project
from whetstone.records import Status
from whetstone.serve.app import create_app
from whetstone.serve.settings import Settings

KEY = "s3cret-review-key"

# Every request a page on another origin can make without a CORS grant: `no-cors` fetches
# (text/plain bodies, the cookie attached), fetches that need a preflight (a JSON body, a
# custom header), and plain HTML forms, whose text/plain encoding can be made to spell JSON.
ATTACK = """<!doctype html><html><head><title>attacking</title></head><body>
<iframe name="sink"></iframe>
<form id="f1" method="post" enctype="text/plain" target="sink" action="TARGET/v1/feedback">
<input name='{"record_id": RID, "rating": -1, "x": "' value='"}'></form>
<form id="f2" method="post" enctype="text/plain" target="sink"
      action="TARGET/review/api/records/RID/reject"><input name='{"x": "' value='"}'></form>
<script>
const target = "TARGET", rid = RID;
const feedback = JSON.stringify({record_id: rid, rating: -1, comment: "forged"});
const attempts = [
  [target + "/v1/feedback", {mode: "no-cors", headers: {"Content-Type": "text/plain"},
                             body: feedback}],
  [target + "/review/api/records/" + rid + "/reject",
   {mode: "no-cors", headers: {"Content-Type": "text/plain"}, body: "{}"}],
  [target + "/v1/feedback", {headers: {"Content-Type": "application/json"}, body: feedback}],
  [target + "/review/api/records/" + rid + "/reject",
   {headers: {"Content-Type": "application/json", "X-Whetstone-CSRF": "guess"}, body: "{}"}],
];
function submitted(id) {
  return new Promise((done) => {
    const sink = document.querySelector("iframe");
    sink.addEventListener("load", done, {once: true});
    document.getElementById(id).submit();
  });
}
(async () => {
  for (const [url, options] of attempts) {
    try {
      await fetch(url, {method: "POST", credentials: "include", ...options});
    } catch (e) {}  // a refused preflight: the point
  }
  await submitted("f1");
  await submitted("f2");
  document.title = "done";
})();
</script></body></html>"""


def serve_page(html: str) -> ThreadingHTTPServer:
    """A one-page web server on a free port of 127.0.0.1: the other origin."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def project(tmp_path: Path, tiny_base_dir: Path) -> Iterator[Project]:
    p = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir))
    p.create_task("sentiment", "classify", labels=["positive", "negative"])
    yield p
    p.close()


def test_a_page_on_another_origin_changes_nothing(project: Project, browser: Any) -> None:
    rid = project.capture("sentiment", "great product", "positive", confidence=0.4)
    with running(create_app(project, Settings(api_key=KEY))) as base:
        context = browser.new_context()
        context.set_default_timeout(15_000)
        page = context.new_page()
        page.goto(f"{base}/review/login")
        page.fill("#key", KEY)
        page.click("button[type=submit]")
        page.wait_for_selector("body[data-ready=true]")
        assert [c["name"] for c in context.cookies()] == ["whetstone_key"]

        attacker = serve_page(ATTACK.replace("TARGET", base).replace("RID", json.dumps(rid)))
        try:
            evil = f"http://127.0.0.1:{attacker.server_address[1]}/"
            assert evil.rstrip("/") != base  # another origin, the same site
            page.goto(evil)
            page.wait_for_function("document.title === 'done'")
        finally:
            attacker.shutdown()
            attacker.server_close()

        rec = project.store.get_record(rid)
        assert (rec.status, rec.tags, rec.history) == (Status.unreviewed, [], [])
        assert "thumbs_down" not in rec.meta

        # The session the attack rode on was live all along: the page itself still decides.
        page.goto(f"{base}/review")
        page.wait_for_selector("body[data-ready=true]")
        page.keyboard.press("a")
        page.wait_for_selector("#message.ok")
        assert project.store.get_record(rid).status == Status.accepted
        context.close()
