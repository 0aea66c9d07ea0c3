"""Every HTML page shows captured text as text: a `<script>` in a record's input, reference or
output (or anything else a page prints) is escaped in the evaluation report, the data card,
the demo report and the review log-in form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_report import FAST, _adapter, _project, _store
from whetstone import pages, snapshots
from whetstone.curate import curate
from whetstone.demo import DemoResult, TurnRow
from whetstone.demo_report import write_demo_report
from whetstone.evaluate.report import write_report

INPUT = "<script>alert(1)</script> what is the capital?"
REFERENCE = "<script>alert(2)</script> paris"
OUTPUT = "<script>alert(3)</script> rome"


def _escaped_everywhere(page: str, *texts: str) -> None:
    assert "<script" not in page.lower()
    for text in texts:
        shown = text.replace("<", "&lt;").replace(">", "&gt;")
        assert shown in page, f"{shown!r} is not on the page"


def test_evaluation_report_escapes_input_reference_and_output(
    tmp_path: Path, tiny_base_dir: Path
) -> None:
    p = _project(tmp_path, tiny_base_dir, "generate")
    for i in range(6):
        p.capture("t", f"{INPUT} {i}", reference=REFERENCE, source="import")
    snap = snapshots.freeze(p, "t", {r.id: "test" for r in p.records("t")})
    ref = _adapter(p, tmp_path, snap, None)
    _store(p, snap, "base", lambda i, r: "")
    _store(p, snap, ref, lambda i, r: OUTPUT)
    page = write_report(p, ref, config=FAST).read_text()
    _escaped_everywhere(page, INPUT, REFERENCE, OUTPUT)


def test_data_card_escapes_record_text(project: Any) -> None:
    project.create_task("qa", "generate")
    # Copies of one input: the card lists the duplicate cluster with its text.
    for _ in range(3):
        project.capture("qa", INPUT, reference=REFERENCE, source="import")
    for i in range(8):
        project.capture("qa", f"an ordinary question number {i}", reference="a", source="import")
    res = curate(project, "qa", {"steps": ["validate", "dedup", "split"]})
    assert res.card_path is not None
    _escaped_everywhere(res.card_path.read_text(), INPUT)


def test_demo_report_escapes_what_it_prints(tmp_path: Path) -> None:
    score = {"value": 0.5, "low": 0.4, "high": 0.6}
    row = TurnRow("curate-next", 1, 10, score, score, OUTPUT, "<b>addr@1</b>", 1.0, 2.0)
    result = DemoResult(
        folder=str(tmp_path),
        baseline={"exact_match": score, "field_f1": score},
        rows=[row],
        report="",
        curve_png="",
        seconds=60.0,
        machine={"date": "today", "cpu": INPUT, "cores": 2, "torch": REFERENCE},
    )
    report, _ = write_demo_report(tmp_path, result)
    page = Path(report).read_text()
    _escaped_everywhere(page, INPUT, REFERENCE, OUTPUT, "<b>addr@1</b>")
    assert "<b>" not in page


def test_review_login_form_escapes_its_error() -> None:
    page = pages.render("review_login.html", error=INPUT)
    _escaped_everywhere(page, INPUT)
    assert 'role="alert"' in page
    assert 'role="alert"' not in pages.render("review_login.html", error=None)
