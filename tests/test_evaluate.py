"""`whetstone eval` / `compare` mechanics on a tiny random-weight base model."""

from __future__ import annotations

import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

import whetstone
from whetstone import snapshots
from whetstone.errors import InvalidInput, NotFound, WhetstoneError
from whetstone.evaluate.compare import compare_evaluations
from whetstone.evaluate.runner import (
    evaluate,
    latest_evaluation,
    load_evaluation,
    queue_failures,
)
from whetstone.models.generate import Generation
from whetstone.store import schema

FAST = {"max_new_tokens": 3, "resamples": 200}


@pytest.fixture
def tiny_project(tmp_path: Path, tiny_base_dir: Path) -> Any:
    p = whetstone.init(str(tmp_path / "proj"), base_model=str(tiny_base_dir))
    p.create_task("qa", "generate", instruction="Answer in one word.")
    for i in range(30):
        p.capture(
            "qa",
            f"question number {i}?",
            reference=f"answer{i % 3}",
            source="import",
            tags=["even"] if i % 2 == 0 else [],
        )
    yield p
    p.close()


def _count(p: Any, table: sa.Table) -> int:
    with p.store.begin() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


class Oracle:
    """A stand-in predictor that answers each input with a fixed text (or its reference)."""

    name = "oracle"

    def __init__(self, answers: dict[str, str]):
        self.answers = answers

    def __call__(self, inputs: list[Any], **kw: Any) -> list[Generation]:
        return [
            Generation(text=self.answers[i], confidence=0.0, output_tokens=2, latency_ms=1.0)
            for i in inputs
        ]


def test_eval_stores_evaluation_and_predictions(tiny_project: Any) -> None:
    ev = evaluate(tiny_project, "qa", "base", "all", **FAST)
    assert ev.n == 30 and ev.main_metric == "exact_match"
    assert set(ev.metrics) == {"exact_match", "token_f1", "chrf"}
    for v in ev.metrics.values():
        assert v["low"] <= v["value"] <= v["high"]
    assert all(p.output_tokens and p.output_tokens <= 3 for p in ev.predictions)
    assert ev.info["latency_ms"]["p50"] is not None
    assert _count(tiny_project, schema.predictions) == 30
    again = load_evaluation(tiny_project, ev.id[:8])
    assert again.metrics == ev.metrics and again.main_metric == "exact_match"
    assert [p.prediction for p in again.predictions] == [p.prediction for p in ev.predictions]
    assert again.predictions[0].reference.startswith("answer")
    assert latest_evaluation(tiny_project, "qa", "base", ev.snapshot_id, "all").id == ev.id
    assert latest_evaluation(tiny_project, "qa", "base", ev.snapshot_id, "test") is None


def test_limited_evaluation_is_not_reused_as_complete(tiny_project: Any) -> None:
    ev = evaluate(tiny_project, "qa", "base", "all", limit=4, **FAST)
    assert ev.n == 4
    assert latest_evaluation(tiny_project, "qa", "base", ev.snapshot_id, "all") is None
    assert (
        latest_evaluation(tiny_project, "qa", "base", ev.snapshot_id, "all", complete=False).id
        == ev.id
    )


def test_empty_split_is_a_clear_error(tiny_project: Any) -> None:
    ids = [r.id for r in tiny_project.records("qa")]
    snap = snapshots.freeze(tiny_project, "qa", dict.fromkeys(ids, "train"))
    with pytest.raises(InvalidInput, match=r"test split of snapshot .* has no records"):
        evaluate(tiny_project, "qa", "base", "test", snap.id, **FAST)
    assert _count(tiny_project, schema.evaluations) == 0


def test_custom_metric_that_raises_stores_nothing(
    tiny_project: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    (tmp_path / "badmetric.py").write_text(
        "def score(pred, ref, rec):\n    if rec.id == 3:\n        raise KeyError('no field')\n    return 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InvalidInput, match=r"badmetric:score' raised on record 3: KeyError"):
        evaluate(tiny_project, "qa", "base", "all", metric="badmetric:score", **FAST)
    assert _count(tiny_project, schema.evaluations) == 0
    assert _count(tiny_project, schema.predictions) == 0


def test_custom_metric_becomes_a_metric_with_interval(
    tiny_project: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    (tmp_path / "okmetric.py").write_text(
        "def short(pred, ref, rec):\n    return float(len(pred) < 1000)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ev = evaluate(tiny_project, "qa", "base", "all", metric="okmetric:short", **FAST)
    assert ev.metrics["short"]["value"] == 1.0 and ev.predictions[0].scores["short"] == 1.0


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_judge_stores_nothing(tiny_project: Any) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    with pytest.raises(WhetstoneError, match="unreachable"):
        evaluate(tiny_project, "qa", "base", "all", limit=3, judge=url, **FAST)
    assert _count(tiny_project, schema.evaluations) == 0


class _Judge(BaseHTTPRequestHandler):
    answer = "4"
    seen: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(body)
        payload = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": self.answer}}]}
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def judge_server() -> Any:
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_judge_scores_are_a_metric(tiny_project: Any, judge_server: Any) -> None:
    _Judge.answer, _Judge.seen = " 4 ", []
    url = f"http://127.0.0.1:{judge_server.server_port}/v1#grader"
    ev = evaluate(
        tiny_project, "qa", "base", "all", limit=3, judge=url, rubric="5 if right", **FAST
    )
    assert ev.metrics["judge"]["value"] == 4.0
    assert len(_Judge.seen) == 3 and _Judge.seen[0]["model"] == "grader"
    assert "5 if right" in _Judge.seen[0]["messages"][1]["content"]


def test_judge_answering_junk_is_a_clear_error(tiny_project: Any, judge_server: Any) -> None:
    _Judge.answer, _Judge.seen = "This answer deserves a 4, mostly.", []
    url = f"http://127.0.0.1:{judge_server.server_port}"
    with pytest.raises(WhetstoneError, match=r"judge answered .*expected a score 1\.\.5"):
        evaluate(tiny_project, "qa", "base", "all", limit=3, judge=url, **FAST)
    assert _count(tiny_project, schema.evaluations) == 0


def test_queue_failures_adds_unreviewed_hard_records_without_reference(tiny_project: Any) -> None:
    ev = evaluate(tiny_project, "qa", "base", "test", **FAST)
    failed = ev.failures()
    assert failed, "a random-weight model should miss at least one answer"
    n = queue_failures(tiny_project, ev)
    assert n == len(failed)
    queued = tiny_project.records("qa", source="evaluation")
    assert len(queued) == n
    for rec in queued:
        assert rec.status.value == "unreviewed" and rec.tags == ["hard"]
        assert rec.reference is None and rec.model == ev.model
        original = tiny_project.record(rec.meta["heldout_record"])
        assert "heldout" in original.tags and rec.input == original.input
    assert queue_failures(tiny_project, ev) == 0  # the same failures are not queued twice


def test_compare_paired_oracle_beats_tiny_model(tiny_project: Any) -> None:
    t = tiny_project.task("qa")
    recs = tiny_project.records("qa")
    snap = snapshots.snapshot_task(tiny_project, "qa")
    oracle = Oracle({r.input: r.reference for r in recs})
    ev_a = evaluate(tiny_project, "qa", "base", "all", snap.id, predictor=oracle, **FAST)
    ev_b = evaluate(tiny_project, "qa", "base", "all", snap.id, **FAST)
    c = compare_evaluations(tiny_project, t, ev_a, ev_b, resamples=200)
    assert c.main_metric == "exact_match" and len(c.record_ids) == 30
    main = c.main
    assert main["a"] == 1.0 and main["diff"] == 1.0 - main["b"] and main["low"] > 0
    assert main["mcnemar"]["only_b"] == 0
    even = next(s for s in c.slices if s.name == "tag=even")
    assert even.n == 15 and even.a == 1.0
    assert c.cost["a"]["output_tokens_mean"] == 2.0


def test_adapter_of_another_base_is_refused_before_loading(
    tiny_project: Any, tmp_path: Path
) -> None:
    from whetstone import registry

    art = tmp_path / "art"
    art.mkdir()
    (art / "adapter_config.json").write_text("{}")
    tiny_project.create_task("other", "generate")
    registry.register(
        tiny_project,
        "qa",
        art,
        method="lora",
        base_model=tiny_project.base_model,
        base_hash="0" * 64,
    )
    registry.register(
        tiny_project,
        "other",
        art,
        method="lora",
        base_model=tiny_project.base_model,
        base_hash="0" * 64,
    )
    with pytest.raises(InvalidInput, match="qa@1 was trained on base model"):
        evaluate(tiny_project, "qa", "qa@1", "all", **FAST)
    with pytest.raises(InvalidInput, match="other@1 is an adapter of task 'other'"):
        evaluate(tiny_project, "qa", "other@1", "all", **FAST)
    with pytest.raises(NotFound):
        evaluate(tiny_project, "qa", "qa@9", "all", **FAST)


def test_cli_eval_and_compare(tiny_project: Any) -> None:
    import typer
    from typer.testing import CliRunner

    from whetstone.cli import common
    from whetstone.cli import evaluate as eval_cli

    app = typer.Typer()
    eval_cli.register(app)
    common.state.project = str(tiny_project.root)
    try:
        res = CliRunner().invoke(
            app, ["eval", "--task", "qa", "--split", "all", "--max-new-tokens", "2", "--json"]
        )
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert data["n"] == 30 and "exact_match" in data["metrics"]
        res = CliRunner().invoke(app, ["compare", "--task", "qa", "base", "base", "--split", "all"])
        assert res.exit_code == 0, res.output
        assert "exact_match" in res.stdout and "latency" in res.stdout
    finally:
        common.state.project = None


def _lm_eval_agreement() -> Any:
    """The peer check module, benchmarks/lm_eval_agreement.py (not a package)."""
    import importlib.util

    path = Path(__file__).parent.parent / "benchmarks" / "lm_eval_agreement.py"
    spec = importlib.util.spec_from_file_location("lm_eval_agreement", path)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.slow
def test_exact_match_agrees_with_lm_evaluation_harness(tmp_path: Path) -> None:
    """The peer check in benchmarks/lm_eval_agreement.py: same model, records, prompt, stop."""
    bench = _lm_eval_agreement()
    result = bench.run_generate(tmp_path)
    assert bench.agrees_generate(result), result


def test_label_likelihood_agrees_with_lm_evaluation_harness(tmp_path: Path) -> None:
    """Multiple choice, same model, records and prompt: scored as lm-eval scores a choice (no
    end-of-turn token), Whetstone picks the same label on every record with the same
    log-likelihoods; its default adds the end token (the rest of the difference)."""
    bench = _lm_eval_agreement()
    mc = bench.run_multiple_choice(tmp_path)
    assert bench.agrees_like_for_like(mc), mc["like_for_like"]
    assert mc["whetstone_answered_by"] == "label_likelihood"
    assert 0 < mc["lm_eval_accuracy"] < 1  # a set that tells models apart


def test_decode_budget_comes_from_the_references_and_can_be_overridden(
    tiny_project: Any,
) -> None:
    from whetstone.models import base
    from whetstone.models.decoding import BUDGET_FLOOR, answer_budget

    tok = base.load_tokenizer(base.resolve(tiny_project.base_model))
    task = tiny_project.task("qa")
    long = " ".join(["word"] * 60)
    lengths = [len(tok(long, add_special_tokens=False)["input_ids"]) + 1]
    # The p99 of 2 long and 98 short answers is the long ones' length (end token counted); of
    # 1 long and 99 short, a short one's.
    examples = [("q", long)] * 2 + [("q", "yes")] * 98
    assert answer_budget(tok, task, examples) == math.ceil(lengths[0] * 1.5)
    assert answer_budget(tok, task, [("q", long)] + [("q", "yes")] * 99) == BUDGET_FLOOR
    assert answer_budget(tok, task, []) == BUDGET_FLOOR

    derived = evaluate(tiny_project, "qa", "base", "all", resamples=200)
    assert derived.info["max_new_tokens"] >= BUDGET_FLOOR
    assert derived.info["hit_budget"] == sum(
        p.output_tokens == derived.info["max_new_tokens"] for p in derived.predictions
    )
    given = evaluate(tiny_project, "qa", "base", "all", max_new_tokens=3, resamples=200)
    assert given.info["max_new_tokens"] == 3 and given.id != derived.id
    assert all(p.output_tokens <= 3 for p in given.predictions)
    # The same settings again: the stored evaluation is reused, not run.
    assert evaluate(tiny_project, "qa", "base", "all", max_new_tokens=3, resamples=200).reused
