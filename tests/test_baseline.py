"""The embedding baseline (logistic regression on MiniLM embeddings) of classify tasks: fitted
on the training split, stored and reused as an evaluation, shown in the report and judged by
the gate's `beats-embedding-baseline` rule in its three modes."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest

import whetstone
from whetstone import registry, snapshots
from whetstone.errors import InvalidInput
from whetstone.evaluate.baseline import BASELINE_MODEL, beats, embedding_baseline
from whetstone.evaluate.gate import GateConfig, gate
from whetstone.evaluate.report import write_report
from whetstone.evaluate.runner import Evaluation, evaluate, latest_evaluation, load_evaluation
from whetstone.models.generate import Generation

SPORT = ["football", "goal", "match", "team", "score", "player", "coach", "stadium", "league"]
FOOD = ["soup", "bread", "salt", "pepper", "oven", "recipe", "butter", "garlic", "onion"]
N_TRAIN, N_TEST = 20, 20


def _config(mode: str) -> GateConfig:
    return GateConfig(max_new_tokens=3, resamples=200, batch_size=8, embedding_baseline=mode)


class Answers:
    """A stand-in predictor: the reference on even test records (confidence 0.9), else the
    other label (confidence 0.6)."""

    def __init__(self, name: str, recs: list[Any]):
        self.name = name
        self.answers = {
            r.input: (r.reference, 0.9) if i % 2 == 0 else (_other(r.reference), 0.6)
            for i, r in enumerate(recs)
        }

    def __call__(self, inputs: list[Any], **kw: Any) -> list[Generation]:
        return [
            Generation(
                text=self.answers[i][0],
                confidence=math.log(self.answers[i][1]),
                output_tokens=1,
                latency_ms=1.0,
                # As label-likelihood scoring answers, so the gate reuses these evaluations.
                label_probs={
                    self.answers[i][0]: self.answers[i][1],
                    _other(self.answers[i][0]): 1 - self.answers[i][1],
                },
            )
            for i in inputs
        ]


def _other(label: str) -> str:
    return "food" if label == "sport" else "sport"


@pytest.fixture
def topics(tmp_path: Path, tiny_base_dir: Path) -> Any:
    """Two labels whose texts share no words: 20 training and 20 test records, an adapter,
    and stored evaluations of it (right on half the records) and of the base model."""
    from whetstone.models import base

    p = whetstone.init(str(tmp_path / "proj"), base_model=str(tiny_base_dir))
    p.create_task("topic", "classify", labels=["sport", "food"])
    rng = random.Random(3)
    for i in range(N_TRAIN + N_TEST):
        label, words = ("sport", SPORT) if i % 2 == 0 else ("food", FOOD)
        p.capture(
            "topic", " ".join(rng.sample(words, 5)) + f" {i}", reference=label, source="import"
        )
    recs = p.records("topic")
    snap = snapshots.freeze(
        p, "topic", {r.id: "train" if i < N_TRAIN else "test" for i, r in enumerate(recs)}
    )
    folder = tmp_path / "artefact"
    folder.mkdir()
    (folder / "weights.txt").write_text("stand-in")
    b = base.resolve(p.base_model)
    av = registry.register(
        p, "topic", folder, method="lora", base_model=b.name, base_hash=b.hash, snapshot_id=snap.id
    )
    test = snapshots.records(p, snap, "test")
    for model, name in (("base", f"base:{b.name}"), (av.name, av.name)):
        evaluate(
            p,
            "topic",
            model,
            "test",
            snap.id,
            resamples=200,
            max_new_tokens=3,
            predictor=Answers(name, test),
        )
    p.snap, p.ref = snap, av.name
    yield p
    p.close()


def test_baseline_on_a_separable_task_scores_high_and_is_stored_and_reused(
    topics: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ev = embedding_baseline(topics, "topic", topics.snap.id, resamples=200)
    assert ev.model == BASELINE_MODEL and not ev.model.startswith("base:")
    assert ev.n == N_TEST and ev.main_metric == "accuracy"
    assert ev.main["value"] >= 0.9 and ev.main["low"] <= ev.main["value"] <= ev.main["high"]
    assert ev.info["n_train"] == N_TRAIN and ev.info["calibration"]["ece"] is not None
    assert all(p.confidence is not None and p.confidence <= 0 for p in ev.predictions)
    stored = load_evaluation(topics, ev.id)
    assert stored.metrics == ev.metrics
    assert [p.confidence for p in stored.predictions] == [p.confidence for p in ev.predictions]
    found = latest_evaluation(topics, "topic", BASELINE_MODEL, topics.snap.id)
    assert found is not None and found.id == ev.id

    from whetstone.models import embeddings

    def no_embedding(*a: Any, **kw: Any) -> Any:
        raise AssertionError("a stored baseline must not embed again")

    monkeypatch.setattr(embeddings, "embed", no_embedding)
    again = embedding_baseline(topics, "topic", topics.snap.id, resamples=200)
    assert again.reused and again.id == ev.id


def test_eval_prints_the_calibration_in_one_line(
    topics: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from whetstone.cli import common
    from whetstone.cli.evaluate import _print_eval

    console = Console(record=True, width=200)
    monkeypatch.setattr(common, "out", console)
    ev = latest_evaluation(topics, "topic", topics.ref, topics.snap.id)
    assert ev is not None
    _print_eval(ev)
    lines = [line for line in console.export_text().splitlines() if "calibration" in line]
    # Right at 0.9 on even records, wrong at 0.6 on odd ones: |1 - 0.9| and |0 - 0.6| halves.
    assert lines == [
        "calibration: expected calibration error 0.350 over 20 answers (10 equal-width bins "
        "of exp(confidence); 0 = calibrated)"
    ]


def test_baseline_refuses_other_kinds_and_snapshots_without_training_records(
    topics: Any,
) -> None:
    topics.create_task("qa", "generate")
    with pytest.raises(InvalidInput, match="for classify tasks"):
        embedding_baseline(topics, "qa")
    only_test = snapshots.freeze(topics, "topic", {r.id: "test" for r in topics.records("topic")})
    with pytest.raises(InvalidInput, match="no labelled training records"):
        embedding_baseline(topics, "topic", only_test.id)


def _ev(value: float, low: float, high: float, model: str = "m") -> Evaluation:
    return Evaluation(
        id=model,
        task="topic",
        model=model,
        snapshot_id="s",
        split="test",
        metrics={"accuracy": {"value": value, "low": low, "high": high}},
        main_metric="accuracy",
        predictions=[],
    )


def test_beats_means_the_lower_bound_is_above_the_baselines_value() -> None:
    assert beats(_ev(0.9, 0.8, 0.95), _ev(0.7, 0.6, 0.8))["beats"]
    # Better on the point estimate, but the interval reaches below the baseline's value.
    assert not beats(_ev(0.9, 0.68, 0.95), _ev(0.7, 0.6, 0.8))["beats"]


@pytest.mark.parametrize(
    ("mode", "passes", "says"),
    [
        ("off", True, "not checked"),
        ("warn", True, "does not beat the embedding baseline"),
        ("require", False, "does not beat the embedding baseline"),
    ],
)
def test_gate_rule_modes(topics: Any, mode: str, passes: bool, says: str) -> None:
    decision = gate(topics, topics.ref, _config(mode))
    rule = next(r for r in decision.rules if r.name == "beats-embedding-baseline")
    assert rule.passed is passes and says in rule.message
    if mode == "warn":
        assert "warning only" in rule.message
    if mode != "off":
        assert rule.numbers["beats"] is False and rule.numbers["baseline"] >= 0.9
        assert rule.numbers["candidate_low"] < rule.numbers["baseline"]
    assert decision.passed is False  # 50% right does not beat the base model's 50% either
    assert ("beats-embedding-baseline" in [r.name for r in decision.failed]) is not passes


def test_gate_rule_passes_for_other_task_kinds(topics: Any) -> None:
    from whetstone.evaluate.gate import rule_embedding_baseline

    class C:
        task = "qa"

    topics.create_task("qa", "generate")
    rule = rule_embedding_baseline(topics, C(), _config("require"))  # type: ignore[arg-type]
    assert rule.passed and rule.message == "not a classify task"


def test_report_shows_the_embedding_baseline_and_flags_a_candidate_below_it(topics: Any) -> None:
    path = write_report(topics, topics.ref, config=_config("warn"))
    page = path.read_text()
    assert "Calibration and the embedding baseline" in page and BASELINE_MODEL in page
    assert f"{topics.ref} does not beat the embedding baseline" in page
    assert (path.parent / "topic-1-reliability.png").read_bytes().startswith(b"\x89PNG")
