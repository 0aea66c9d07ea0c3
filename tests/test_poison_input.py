"""Text the store cannot hold (a NUL, a lone surrogate) is refused at every door with one line
naming the field, and a record that slips past the doors into capture is moved aside as
poison instead of stalling every record behind it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

import whetstone
from serve_helpers import running, wait_for
from test_serve_capture import FlakyStore
from whetstone import formats
from whetstone.errors import InvalidInput
from whetstone.records import Record
from whetstone.serve.app import create_app
from whetstone.serve.capture import SPOOL_DIR, CaptureQueue, new_ref, poison_files
from whetstone.serve.metrics import Metrics
from whetstone.serve.settings import Settings

NUL_REASON = "contains a NUL character (\\u0000), which cannot be stored"


def served_project(tmp_path: Path, base_dir: Path, db: str) -> Any:
    p = whetstone.init(str(tmp_path / "proj"), base_model=str(base_dir), db=db)
    p.create_task("t", "generate")
    return p


def chat(h: httpx.Client, text: str) -> httpx.Response:
    body = {"model": "t", "max_tokens": 2, "messages": [{"role": "user", "content": text}]}
    return h.post("/v1/chat/completions", json=body)


def whetstone_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "400"}  # one table row per line
    return subprocess.run(
        [sys.executable, "-m", "whetstone", "--project", str(root), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


# ---- the HTTP door --------------------------------------------------------------------------
@pytest.mark.postgres
def test_a_nul_request_is_refused_and_the_records_around_it_are_stored(
    tiny_base_dir: Path, tmp_path: Path, pg_url: str
) -> None:
    p = served_project(tmp_path, tiny_base_dir, pg_url)
    app = create_app(p, Settings(max_wait_ms=20))
    with running(app) as url:
        h = httpx.Client(base_url=url, timeout=60)
        before = chat(h, "before")
        assert before.status_code == 200

        r = chat(h, "a\u0000b")
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["message"] == f"messages[0].content {NUL_REASON}"
        assert err["param"] == "messages[0].content" and err["code"] == "invalid_value"
        # A lone surrogate can only arrive as a JSON escape; it cannot be UTF-8.
        raw = b'{"model": "t", "messages": [{"role": "user", "content": "x\\ud800"}]}'
        r = h.post(
            "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
        assert r.json()["error"]["message"] == (
            "messages[0].content contains a lone surrogate (\\ud800), which cannot be stored"
        )
        parts = [{"type": "text", "text": "fine"}, {"type": "text", "text": "\u0000"}]
        r = h.post(
            "/v1/chat/completions",
            json={"model": "t", "messages": [{"role": "user", "content": parts}]},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[1].text"
        r = h.post("/v1/completions", json={"model": "t", "prompt": "q\u0000"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        ref = before.headers["x-whetstone-record"]
        r = h.post("/v1/feedback", json={"record_id": ref, "reference": "right\u0000"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "reference"

        after = chat(h, "after")
        assert after.status_code == 200
        wait_for(lambda: h.get("/healthz").json()["capture_pending"] == 0, 60)
        assert h.get("/healthz").json()["store_ok"] is True
    assert sorted(r.input_text for r in p.records("t")) == ["after", "before"]
    assert not poison_files(p.home / SPOOL_DIR)
    p.close()


# ---- capture: poison moved aside --------------------------------------------------------------
def _spool_line(rec: Record) -> str:
    return rec.model_dump_json() + "\n"


@pytest.mark.postgres
def test_poison_in_the_spool_and_the_queue_is_moved_aside_and_the_rest_stored(
    tiny_base_dir: Path, tmp_path: Path, pg_url: str
) -> None:
    """A spool left by an earlier process holds records PostgreSQL refuses (a NUL, a task
    deleted since); records also reach the queue without passing the HTTP door. Every good
    record is stored, the bad ones land in the poison file, health returns to ok."""
    p = served_project(tmp_path, tiny_base_dir, pg_url)
    spool = p.home / SPOOL_DIR
    spool.mkdir(parents=True)

    def rec(text: str, task: str = "t") -> Record:
        return Record(task=task, input=text, output="a", source_key=new_ref())

    spooled = [rec("s1"), rec("bad\u0000nul"), rec("s2"), rec("gone", task="deleted"), rec("s3")]
    (spool / "spool-1.jsonl").write_text("".join(_spool_line(r) for r in spooled))
    app = create_app(p, Settings(max_wait_ms=20))
    with running(app) as url:
        h = httpx.Client(base_url=url, timeout=60)
        wait_for(lambda: h.get("/healthz").json()["capture_pending"] == 0, 60)
        capture = app.state.services.capture
        for r in (rec("q1"), rec("q-nul\u0000"), rec("q-sur\udc00"), rec("q2")):
            capture.submit(r)  # past the door, as a bug or a plugin might
        assert chat(h, "live").status_code == 200
        wait_for(lambda: h.get("/healthz").json()["capture_pending"] == 0, 60)
        health = h.get("/healthz").json()
        assert health["store_ok"] is True and health["status"] == "ok"
        metrics = h.get("/metrics").text
        assert "whetstone_capture_poison_total 4.0" in metrics
        assert chat(h, "still serving").status_code == 200
        wait_for(lambda: h.get("/healthz").json()["capture_pending"] == 0, 60)

    stored = sorted(r.input_text for r in p.records("t"))
    assert stored == ["live", "q1", "q2", "s1", "s2", "s3", "still serving"]
    assert not list(spool.glob("spool-*.jsonl"))  # replayed, nothing left owed
    files = poison_files(spool)
    assert sum(files.values()) == 4 and len(files) == 1
    (poison,) = files
    rows = [json.loads(line) for line in poison.read_text().splitlines()]
    assert [r["record"]["input"] for r in rows] == [
        "bad\u0000nul",
        "gone",
        "q-nul\u0000",
        "q-sur\udc00",
    ]
    assert "NUL" in rows[0]["error"] and "foreign key" in rows[1]["error"]

    doctor = whetstone_cli(p.root, "doctor")
    row = next(line for line in doctor.stdout.splitlines() if "capture poison" in line)
    assert "warn" in row and "4 captured record(s)" in row and str(poison) in row
    p.close()


class PickyStore(FlakyStore):
    """Down until told otherwise; refuses (as a data error) any record whose input says so."""

    def write(self, records: Sequence[Record]) -> None:
        if not self.down and any("refuse" in r.input_text for r in records):
            raise ValueError("this record breaks a constraint")
        super().write(records)


def test_a_refused_record_never_holds_back_the_others(tmp_path: Path) -> None:
    store, metrics = PickyStore(), Metrics()
    q = CaptureQueue(store.write, tmp_path / "spool", metrics, spool_after_s=0.05)
    q.start()
    texts = ["a", "refuse me", "b", "lone \ud800", "c"]
    recs = [Record(task="t", input=t, output="x", source_key=new_ref()) for t in texts]
    for r in recs:
        q.submit(r)
    wait_for(lambda: list((tmp_path / "spool").glob("spool-*.jsonl")))
    assert not q.healthy
    # The surrogate cannot be written to the JSON spool: moved aside as it spills, the
    # writer thread carries on.
    assert sum(poison_files(tmp_path / "spool").values()) == 1
    store.down = False
    wait_for(lambda: q.depth == 0 and not list((tmp_path / "spool").glob("spool-*")), 30)
    q.stop()
    assert sorted(r.input for r in store.rows.values()) == ["a", "b", "c"]
    assert sum(poison_files(tmp_path / "spool").values()) == 2
    assert metrics.capture_poison._value.get() == 2 and q.healthy


# ---- imports ----------------------------------------------------------------------------------
GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.postgres
def test_import_with_a_nul_on_postgres_is_one_line_naming_file_and_line(
    tmp_path: Path, pg_url: str
) -> None:
    p = whetstone.init(str(tmp_path / "proj"), db=pg_url)
    p.create_task("t", "generate")
    bad = {"messages": [{"role": "user", "content": "a\u0000b"}, GOOD["messages"][1]]}
    second = {**GOOD, "n": 2}
    f = _jsonl(tmp_path / "data.jsonl", [json.dumps(GOOD), json.dumps(bad), json.dumps(second)])
    r = whetstone_cli(p.root, "import", str(f), "--task", "t")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert f"{f}:2: messages[0].content: {NUL_REASON}" in r.stderr
    assert p.store.count_records("t") == 0
    r = whetstone_cli(p.root, "import", str(f), "--task", "t", "--skip-invalid")
    assert r.returncode == 0, r.stderr
    assert p.store.count_records("t") == 2
    rejects = [
        json.loads(x) for x in (tmp_path / "data.jsonl.rejected.jsonl").read_text().splitlines()
    ]
    assert [x["where"] for x in rejects] == [f"{f}:2"]
    p.close()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}", "(line): nested deeper than 64"),
        (
            '{"messages": [{"role": "user", "content": "x\\udc00"}, '
            '{"role": "assistant", "content": "y"}]}',
            "messages[0].content: contains a lone surrogate (\\udc00), which cannot be stored",
        ),
        (
            json.dumps({**GOOD, "note\u0000": 1}),
            "note\\u0000: is a key that contains a NUL character",
        ),
    ],
    ids=["deep", "surrogate", "nul-key"],
)
def test_import_bad_lines_name_file_and_line(
    project: Any, tmp_path: Path, line: str, message: str
) -> None:
    project.create_task("t", "generate")
    f = _jsonl(tmp_path / "data.jsonl", [json.dumps(GOOD), line, json.dumps({**GOOD, "n": 2})])
    with pytest.raises(InvalidInput) as e:
        formats.import_file(project, f, "t", fmt="openai")
    assert str(e.value).startswith(f"{f}:2: ") and message in str(e.value)
    report = formats.import_file(project, f, "t", fmt="openai", skip_invalid=True)
    assert (report.added, report.rejected) == (2, 1)
    assert report.rejected_path is not None
    assert json.loads(report.rejected_path.read_text())["where"] == f"{f}:2"


def test_import_detects_the_format_of_a_deep_first_line(project: Any, tmp_path: Path) -> None:
    project.create_task("t", "generate")
    f = _jsonl(tmp_path / "data.jsonl", ["[" * 100_000 + "]" * 100_000])
    with pytest.raises(InvalidInput, match=r"data\.jsonl:1: cannot tell the format"):
        formats.import_file(project, f, "t")


def test_invalid_utf8_names_the_line_and_the_byte(project: Any, tmp_path: Path) -> None:
    project.create_task("t", "generate")
    first = json.dumps(GOOD) + "\n"
    f = tmp_path / "data.jsonl"
    f.write_bytes(first.encode() * 3 + b'{"messages": "\xff"}\n')
    for fmt in ("auto", "openai"):
        with pytest.raises(InvalidInput) as e:
            formats.import_file(project, f, "t", fmt=fmt)
        byte = len(first) * 3 + len('{"messages": "')
        assert str(e.value) == f"{f}:4: not UTF-8 text (invalid start byte at byte {byte})"


def test_csv_cells_the_store_cannot_hold_are_rejected_by_line(project: Any, tmp_path: Path) -> None:
    project.create_task("t", "generate")
    f = tmp_path / "data.csv"
    f.write_text("input,reference\nfine,ok\nbad\u0000cell,ok\nalso fine,ok\n")
    with pytest.raises(InvalidInput) as e:
        formats.import_file(project, f, "t")
    assert str(e.value).startswith(f"{f}:3: input: {NUL_REASON}")
    assert formats.import_file(project, f, "t", skip_invalid=True).added == 2


def test_the_store_refuses_what_it_cannot_hold_on_every_backend(store_url: str) -> None:
    """The store's own check, for writers that pass no door (the Python API): one line naming
    the field, the same on SQLite (which could hold a NUL) as on PostgreSQL."""
    from whetstone.records import Task
    from whetstone.store import Store

    s = Store(store_url)
    s.create_task(Task(name="t", kind="generate"))
    with pytest.raises(InvalidInput, match=re.escape(f"input {NUL_REASON}")):
        s.capture("t", "a\u0000")
    with pytest.raises(InvalidInput, match=r"meta\.note contains a lone surrogate"):
        s.add_records([Record(task="t", input="ok", meta={"note": "\ud800"})])
    rid = s.capture("t", "fine", output="x")
    with pytest.raises(InvalidInput, match=f"record {rid}: comment contains a NUL"):
        s.review(rid, "rejected", comment="no\u0000")
    assert s.count_records("t") == 1 and s.get_record(rid).status.value == "unreviewed"
    s.close()
