"""A snapshot holds the text every stage uses: for a PII-redacted extract record, the text the
model is trained on, the text evaluation scores against and what a serving prompt holds
agree (no `<PHONE>` taught where serving and evaluation have a real number)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from whetstone import snapshots
from whetstone.curate import curate
from whetstone.models.generate import Generation
from whetstone.prompts import chat

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "phone": {"type": "string"}},
    "required": ["name", "phone"],
}
PII_INPUT = "Ann Lee, call +1 415 555 2671 or mail ann@example.com about the order"
PII_REFERENCE = {"name": "Ann Lee", "phone": "+1 415 555 2671"}


@pytest.fixture
def contacts(project: Any) -> tuple[Any, int]:
    p = project
    p.create_task("contacts", "extract", schema=SCHEMA)
    rid = p.capture("contacts", PII_INPUT, reference=json.dumps(PII_REFERENCE), source="import")
    for i in range(7):
        p.capture(
            "contacts",
            f"Person {i} can be reached on +44 20 7946 09{i}{i}",
            reference=json.dumps({"name": f"Person {i}", "phone": f"+44 20 7946 09{i}{i}"}),
            source="import",
        )
    return p, rid


class EchoPredictor:
    """Evaluation's predictor, minus the model: notes the inputs it is asked about."""

    name = "base:echo"

    def __init__(self) -> None:
        self.inputs: list[Any] = []

    def __call__(self, inputs: list[Any], **_: Any) -> list[Generation]:
        self.inputs.extend(inputs)
        return [Generation("{}", 0.0, 1, 1.0) for _ in inputs]


def test_a_redacted_extract_record_is_trained_evaluated_and_served_alike(
    contacts: tuple[Any, int], tiny_base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from whetstone.evaluate.metrics import main_score
    from whetstone.evaluate.runner import evaluate
    from whetstone.train import api, data, train_config, train_task

    p, rid = contacts
    # Every record in train, so the one record is both trained on and evaluated (split "all").
    res = curate(p, "contacts", {"steps": ["validate", "pii"], "validation": 0, "test": 0})
    snap = res.snapshot
    assert next(s for s in res.steps if s.name == "pii").changed >= 1

    # What training encodes: the records `train_task` hands to the encoder.
    taught: dict[int, Any] = {}
    encode = data.encode_records

    def spy(tok: Any, task: Any, recs: list[Any], **kw: Any) -> Any:
        taught.update({r.id: r for r in recs})
        return encode(tok, task, recs, **kw)

    monkeypatch.setattr(data, "encode_records", spy)
    monkeypatch.setattr(api, "encode_records", spy, raising=False)  # if imported at the top
    cfg = train_config(
        base_model=str(tiny_base_dir), max_steps=1, batch_size=4, eval_every=1, save_every=1
    )
    train_task(p, "contacts", cfg, snapshot_id=snap.id, progress=False, metric=main_score)
    trained = taught[rid]

    # What evaluation scores against, and the input it asks the model about.
    predictor = EchoPredictor()
    ev = evaluate(p, "contacts", "base", "all", snap.id, predictor=predictor)
    scored = next(x for x in ev.predictions if x.record_id == rid)
    asked = predictor.inputs[[x.record_id for x in ev.predictions].index(rid)]

    assert trained.reference == scored.reference  # taught the very answer that is scored
    assert trained.input == asked  # and on the very input evaluation asks about
    assert json.loads(trained.reference) == PII_REFERENCE  # the extracted values, not <PHONE>
    # What a serving prompt holds for this input: the real values, so the answer the model
    # was taught is one it can copy from its prompt.
    served = json.dumps(chat(p.task("contacts"), p.record(rid).input))
    assert all(v in served for v in PII_REFERENCE.values())
    assert all(v in str(trained.input) for v in PII_REFERENCE.values())
    # PII the task does not extract is still redacted from what the model sees in training.
    assert "ann@example.com" not in str(trained.input) and "<EMAIL>" in str(trained.input)
    assert snapshots.records(p, snap, "train") == sorted(taught.values(), key=lambda r: r.id)
