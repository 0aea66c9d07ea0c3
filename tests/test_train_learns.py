"""Proof that training learns: the real bundled model on the demo address task, a small
budget, and a clear rise of field-level F1 on held-out (test split) records over the base
model. Slow: a few minutes on 2 CPU cores."""

from __future__ import annotations

from typing import Any

import pytest

from whetstone.evaluate.metrics import main_score


@pytest.mark.slow
def test_lora_raises_held_out_field_f1_on_addresses(project: Any, real_base: Any) -> None:
    from whetstone import snapshots
    from whetstone.demo_data import load_demo_data
    from whetstone.predict import load_predictor
    from whetstone.train import train_config, train_task

    task, _ = load_demo_data(project, limit=200)
    snap = snapshots.snapshot_task(project, "addresses")
    test = snapshots.records(project, snap, "test")[:24]  # never trained or validated on
    refs = [str(r.reference) for r in test]
    cfg = train_config(epochs=2, batch_size=8, eval_every=1000, eval_max_records=8)
    res = train_task(
        project, "addresses", cfg, snapshot_id=snap.id, progress=False, metric=main_score
    )

    def f1(model: str) -> float:
        gens = load_predictor(project, "addresses", model)(
            [r.input for r in test], max_new_tokens=96
        )
        return main_score(task, [g.text for g in gens], refs)

    before, after = f1("base"), f1(res.adapter)
    assert after >= before + 0.2, (before, after)
