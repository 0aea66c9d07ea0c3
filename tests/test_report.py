"""The error-analysis report: one self-contained HTML file with its plots also saved as PNG."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import whetstone
from whetstone import registry, snapshots
from whetstone.evaluate.gate import GateConfig
from whetstone.evaluate.report import error_type, write_report
from whetstone.evaluate.runner import evaluate
from whetstone.models.generate import Generation
from whetstone.records import Task

# The task's own decode budget, as the stored evaluations: the gate reuses those.
FAST = GateConfig(resamples=200)
LABELS = ["positive", "negative", "neutral"]
PNG = b"\x89PNG\r\n\x1a\n"


class Answers:
    """A stand-in predictor answering record i with `answer(i, record)`."""

    def __init__(self, name: str, records: list[Any], answer: Callable[[int, Any], str]):
        self.name = name
        self.answers = {r.input: answer(i, r) for i, r in enumerate(records)}

    def __call__(self, inputs: list[Any], **kw: Any) -> list[Generation]:
        # A classify answer comes as label-likelihood scoring gives it (with label
        # probabilities), so the report's gate settings reuse these evaluations.
        probs = {label: 1.0 for label in kw.get("labels") or []} or None
        return [
            Generation(
                text=self.answers[i],
                confidence=0.0,
                output_tokens=1,
                latency_ms=2.0,
                label_probs=probs,
            )
            for i in inputs
        ]


def _project(tmp_path: Path, tiny_base_dir: Path, kind: str, **task: Any) -> Any:
    p = whetstone.init(str(tmp_path / "proj"), base_model=str(tiny_base_dir))
    p.create_task("t", kind, **task)
    return p


def _adapter(p: Any, tmp_path: Path, snap: Any, run_rows: list[dict[str, Any]] | None) -> str:
    from whetstone.models import base

    folder = tmp_path / "artefact"
    folder.mkdir(exist_ok=True)
    (folder / "weights.txt").write_text("stand-in")
    run_id = None
    if run_rows is not None:
        run_id = "t-run-1"
        run_dir = p.home / "runs" / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run_rows))
    b = base.resolve(p.base_model)
    av = registry.register(
        p,
        "t",
        folder,
        method="lora",
        base_model=b.name,
        base_hash=b.hash,
        snapshot_id=snap.id,
        run_id=run_id,
        info={"metric": "accuracy"},
    )
    return av.name


def _store(p: Any, snap: Any, model: str, answer: Callable[[int, Any], str]) -> None:
    from whetstone.models import base

    name = f"base:{base.resolve(p.base_model).name}" if model == "base" else model
    recs = snapshots.records(p, snap, "test")
    evaluate(
        p,
        "t",
        model,
        "test",
        snap.id,
        resamples=200,
        predictor=Answers(name, recs, answer),
    )


CURVE = [
    *({"kind": "train", "step": s, "loss": 3.0 / s} for s in range(1, 41)),
    *(
        {"kind": "validation", "step": s, "val_loss": 2.5 / s**0.5, "metric": 0.2 + s / 60}
        for s in (10, 20, 30, 40)
    ),
]


@pytest.fixture
def classify(tmp_path: Path, tiny_base_dir: Path) -> Any:
    p = _project(tmp_path, tiny_base_dir, "classify", labels=LABELS)
    for i in range(30):
        text = f"review {i}: <script>alert('x{i}')</script> & more" if i == 4 else f"review {i}"
        p.capture(
            "t",
            text,
            reference=LABELS[i % 3],
            source="import",
            tags=["long"] if i < 24 else ["short"],
        )
    recs = p.records("t")
    p.correct(recs[5].id, LABELS[5 % 3], error_category="sarcasm")
    snap = snapshots.freeze(p, "t", {r.id: "test" for r in recs})
    ref = _adapter(p, tmp_path, snap, CURVE)

    def cand(i: int, r: Any) -> str:
        if i in (4, 5):
            return "I think <b>maybe</b>"  # names no label
        if i == 7:
            return "positive"  # reference is negative
        return r.reference

    _store(p, snap, "base", lambda i, r: "positive")
    _store(p, snap, ref, cand)
    yield p, ref
    p.close()


def test_report_is_self_contained_with_sections_escaped_text_and_pngs(classify: Any) -> None:
    p, ref = classify
    path = write_report(p, ref, config=FAST)
    assert path == p.home / "reports" / "t-1" / "report.html"
    page = path.read_text()
    # Self-contained: every src/href is a data: URI, and no script or stylesheet is loaded.
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"' >]+)""", page, flags=re.I)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "<link" not in page.lower() and "@import" not in page
    # Record text is escaped, so the record's <script> is text, not a script.
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#39;x4&#39;)&lt;/script&gt; &amp; more" in page  # Jinja2's escape
    assert "I think &lt;b&gt;maybe&lt;/b&gt;" in page
    for section in (
        "Learning curves",
        "Metrics against base:",
        "Confusion matrix",
        "Per-slice differences",
        "Worst failures by error type",
        "Promotion gate",
    ):
        assert section in page
    assert "accuracy" in page and "macro_f1" in page and "95% CI" in page
    # Failures grouped: unmapped answer, wrong label, and the human's own category.
    for group in ("unmapped_label", "wrong_label", "sarcasm"):
        assert f"<h3>{group} " in page
    assert "3 of 30 records failed" in page
    pngs = sorted(x.name for x in path.parent.glob("*.png"))
    assert pngs == [
        "t-1-confusion.png",
        "t-1-curves.png",
        "t-1-reliability.png",
        "t-1-slices.png",
    ]
    for name in pngs:
        data = (path.parent / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000
    assert page.count("data:image/png;base64,") == 4
    # Every answer was certain (confidence 0): the candidate's calibration error is its error
    # rate; no training split here, so no embedding baseline, and the page says why.
    assert "Calibration and the embedding baseline" in page and "0.100" in page
    assert "No embedding baseline: snapshot" in page and "no labelled training records" in page


def test_report_output_path_and_missing_curves(classify: Any, tmp_path: Path) -> None:
    p, ref = classify
    (p.home / "runs" / "t-run-1" / "metrics.jsonl").unlink()
    out = write_report(p, ref, tmp_path / "elsewhere" / "r.html", config=FAST)
    page = out.read_text()
    assert out.exists() and "No training curves" in page
    assert not (out.parent / "t-1-curves.png").exists() and (out.parent / "t-1-slices.png").exists()


def test_extract_report_has_field_f1_and_extract_error_types(
    tmp_path: Path, tiny_base_dir: Path
) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
    }
    p = _project(tmp_path, tiny_base_dir, "extract", schema=schema)
    for i in range(12):
        p.capture(
            "t",
            f"ship to {i} main st, town{i} {10000 + i}",
            source="import",
            reference=json.dumps({"city": f"town{i}", "zip": str(10000 + i)}),
        )
    snap = snapshots.freeze(p, "t", {r.id: "test" for r in p.records("t")})
    ref = _adapter(p, tmp_path, snap, None)

    def cand(i: int, r: Any) -> str:
        want = json.loads(r.reference)
        return {
            0: "not json",
            1: json.dumps({"city": 5}),
            2: json.dumps({"city": want["city"]}),
            3: json.dumps({**want, "street": "main"}),
            4: json.dumps({**want, "zip": "0"}),
        }.get(i, r.reference)

    _store(p, snap, "base", lambda i, r: "{}")
    _store(p, snap, ref, cand)
    path = write_report(p, ref, config=FAST)
    page = path.read_text()
    assert "Per-field F1" in page and (path.parent / "t-1-fields.png").exists()
    for group in ("invalid_json", "schema_invalid", "missing_field", "extra_field", "wrong_value"):
        assert f"<h3>{group} " in page
    # Extract slices are the fields the reference fills.
    assert "field=city" in page and "field=zip" in page
    # The decode budget both answered under, and how many answers ran into it.
    assert re.search(r"candidate \d+ of 12 answers reached \d+ tokens", page)
    p.close()


def test_error_types_by_kind() -> None:
    gen = Task(name="g", kind="generate")
    assert error_type(gen, "  ", "a") == "empty" and error_type(gen, "b", "a") == "wrong"
    cls = Task(name="c", kind="classify", labels=["yes", "no"])
    assert error_type(cls, "Yes.", "no") == "wrong_label"
    assert error_type(cls, "perhaps", "no") == "unmapped_label"


def test_cli_report(classify: Any, tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from whetstone.cli import common
    from whetstone.cli import registry as registry_cli

    p, ref = classify
    app = typer.Typer()
    registry_cli.register(app)
    common.state.project = str(p.root)
    try:
        res = CliRunner().invoke(app, ["report", ref, "-o", str(tmp_path / "out" / "r.html")])
        assert res.exit_code == 0, res.output
        assert "Wrote" in res.stdout and (tmp_path / "out" / "r.html").exists()
    finally:
        common.state.project = None
