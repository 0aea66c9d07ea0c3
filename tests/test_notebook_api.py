"""The notebook API: `whetstone.open()` / `init()` give a `Workspace` whose verbs are the
CLI's functions, on a tiny random-weight base model; tables come out as pandas and datasets."""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

import pytest

import whetstone
from whetstone.notebook import Records, Workspace
from whetstone.project import Project

N = 24


def _text(rng: random.Random) -> str:
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=5)) for _ in range(4))


@pytest.fixture
def ws(tmp_path: Path, tiny_base_dir: Path) -> Any:
    w = whetstone.init(tmp_path / "proj", base_model=str(tiny_base_dir))
    w.create_task("qa", "generate", instruction="Answer in one word.")
    rng = random.Random(3)
    for i in range(N):
        # Every fourth input carries an e-mail address, which curation's pii step redacts.
        mail = f" write to person{i}@example.com" if i % 4 == 0 else ""
        w.capture("qa", _text(rng) + mail, reference=f"word{i % 3}", source="import")
    yield w
    w.close()


def test_open_and_init_return_a_workspace_that_is_a_project(ws: Any) -> None:
    assert isinstance(ws, Workspace) and isinstance(ws, Project)
    again = whetstone.open(str(ws.root))
    try:
        assert type(again) is Workspace
        # The Project methods work as before; records() is also a table.
        recs = again.records("qa")
        assert isinstance(recs, Records) and len(recs) == N
        assert again.record(recs[0].id).input == recs[0].input
        df = recs.to_pandas()
        assert len(df) == N and {"id", "input", "reference", "status"} <= set(df.columns)
        assert recs.to_dataset().num_rows == N
    finally:
        again.close()


def test_curate_train_evaluate_compare_promote_predict_export(ws: Any, tmp_path: Path) -> None:
    cur = ws.curate("qa", {"steps": ["validate", "pii", "split"], "card": False})
    decisions = cur.to_pandas()
    # The pii step's redactions are rows, one per record it changed.
    redacted = decisions[decisions["step"] == "pii"]
    assert len(redacted) == N // 4 and set(redacted["record_id"]) <= {r.id for r in ws.records()}
    assert cur.to_dataset().num_rows == len(decisions)

    run = ws.train(
        "qa",
        from_snapshot=cur.snapshot.id,
        max_steps=2,
        batch_size=4,
        eval_max_records=2,
        progress=False,
    )
    assert run.adapter == "qa@1" and run.steps == 2 and run.snapshot_id == cur.snapshot.id

    ev = ws.evaluate("qa", run.adapter, max_new_tokens=3)
    table = ev.to_pandas()
    assert len(table) == ev.n > 0
    assert {"record_id", "prediction", "reference", "exact_match", "latency_ms"} <= set(
        table.columns
    )
    assert list(table["model"].unique()) == [run.adapter]
    ds = ev.to_dataset()
    assert ds.num_rows == ev.n and ds["exact_match"] == list(table["exact_match"])

    comp = ws.compare("qa", "base", run.adapter, max_new_tokens=3)
    rows = comp.to_pandas()
    assert set(rows["metric"]) == set(comp.metrics)
    main = rows[rows["main"]]
    assert len(main) == 1 and main["diff"].iloc[0] == pytest.approx(comp.main["diff"])
    assert comp.to_dataset().num_rows == len(rows)

    promotion = ws.promote(run.adapter, force=True, reason="notebook test")
    assert promotion.promoted and promotion.adapter.stage == "production"

    answers = ws.predict("qa", ["abc def", "ghi"], "qa", max_new_tokens=3)
    assert len(answers) == 2 and all(a.output_tokens > 0 for a in answers)
    assert len(ws.predict("qa", "one text", max_new_tokens=2)) == 1

    out = tmp_path / "qa.jsonl"
    assert ws.export("qa", "jsonl", out) == N and out.exists()


def test_train_reads_an_axolotl_config_and_warns_of_ignored_keys(ws: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "axolotl.yml"
    cfg.write_text(
        "adapter: lora\nlora_r: 4\nmax_steps: 1\nmicro_batch_size: 4\n"
        "output_dir: ./out\nval_set_size: 0.1\n"
    )
    with pytest.warns(UserWarning, match=r"Axolotl.*output_dir.*val_set_size"):
        run = ws.train("qa", config=cfg, eval_max_records=2, progress=False)
    assert run.steps == 1
    from whetstone import registry

    assert registry.get(ws, run.adapter).info["config"]["lora_r"] == 4
