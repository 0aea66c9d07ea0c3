"""`tune`: an Optuna search over the training engine, on a tiny random-weight model.

Each trial trains in a child process, so these tests take a few seconds per trial."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from whetstone.errors import InvalidInput
from whetstone.evaluate.metrics import main_score

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}}}


@pytest.fixture
def cities(project: Any) -> Any:
    project.create_task("cities", "extract", schema=SCHEMA)
    for i in range(40):
        ref = json.dumps({"city": f"Town{i % 5}", "zip": f"{10000 + i}"})
        project.capture(
            "cities", f"Send it to {i} Main Street, Town{i % 5} {10000 + i}", reference=ref,
            source="import",
        )  # fmt: skip
    return project


def base_settings(tiny_base_dir: Path) -> dict[str, Any]:
    return {
        "base_model": str(tiny_base_dir),
        "max_steps": 4,
        "batch_size": 4,
        "eval_every": 2,
        "eval_max_records": 2,
        "save_every": 2,
        "topk_layers": 1,  # the tiny model has two blocks
    }


class PruneFirstReport:
    """Lets trial 0 run and prunes every later trial at its first validation (of five, so
    the child is still training when it is killed), recording each call: proof that
    intermediate values reach the pruner while a trial runs."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def prune(self, study: Any, trial: Any) -> bool:
        step = trial.last_step
        self.calls.append((trial.number, step))
        return trial.number > 0 and step is not None


def test_tune_prunes_registers_best_writes_table_and_resumes(
    cities: Any, tiny_base_dir: Path
) -> None:
    import optuna

    from whetstone import registry
    from whetstone.train.tune import tune

    class Pruner(optuna.pruners.BasePruner):
        def __init__(self) -> None:
            self.inner = PruneFirstReport()

        def prune(self, study: Any, trial: Any) -> bool:
            return self.inner.prune(study, trial)

    pruner = Pruner()
    base = {**base_settings(tiny_base_dir), "max_steps": 10}
    res = tune(
        cities, "cities", trials=2, base=base, progress=False, methods=["lora", "topk"],
        pruner=pruner, metric=main_score,
    )  # fmt: skip
    assert [t["state"] for t in res.trials] == ["complete", "pruned"]
    # Trial 0 reported all five validations; trial 1 was stopped at its first.
    assert [c for c in pruner.inner.calls if c[0] == 0] == [(0, k) for k in range(1, 6)]
    assert [c for c in pruner.inner.calls if c[0] == 1] == [(1, 1)]
    assert [len(t["validations"]) for t in res.trials] == [5, 1]

    # Only the completed trial was registered; the pruned run stays on disk, marked pruned.
    assert [v.name for v in registry.list_versions(cities, "cities")] == [res.best.adapter]
    pruned_run = cities.home / "runs" / res.trials[1]["run_id"] / "run.json"
    assert json.loads(pruned_run.read_text())["status"] == "pruned"

    table = Path(res.table_path)
    with table.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["complete", "pruned"]
    assert rows[0]["adapter"] == res.best.adapter
    assert json.loads((table.parent / "trials.json").read_text())[1]["state"] == "pruned"
    assert (cities.home / "tune" / f"{res.study_name}.db").exists()

    # The same command with a larger budget resumes the study: only trial 2 runs. Of the two
    # completed trials one stays a candidate, the other is retired.
    again = tune(
        cities, "cities", trials=3, base=base, progress=False, methods=["lora", "topk"],
        pruner=optuna.pruners.NopPruner(), metric=main_score,
    )  # fmt: skip
    assert again.study_name == res.study_name
    assert [t["trial"] for t in again.trials] == [0, 1, 2]
    assert again.trials[0]["run_id"] == res.trials[0]["run_id"]
    stages = {v.name: v.stage for v in registry.list_versions(cities, "cities")}
    assert len(stages) == 2 and stages[again.best.adapter] == "candidate"
    assert sorted(stages.values()) == ["candidate", "retired"]
    with pytest.raises(InvalidInput, match="resume it with the same --method"):
        tune(
            cities,
            "cities",
            trials=4,
            base=base,
            progress=False,
            methods=["lora"],
            metric=main_score,
        )


def test_tune_bad_input(cities: Any, tiny_base_dir: Path) -> None:
    from whetstone.train.tune import tune

    base = base_settings(tiny_base_dir)
    with pytest.raises(InvalidInput, match="unknown method 'qlora'"):
        tune(
            cities,
            "cities",
            trials=1,
            base=base,
            methods=["qlora"],
            progress=False,
            metric=main_score,
        )
    with pytest.raises(InvalidInput, match="sets lr, which tune searches"):
        tune(
            cities, "cities", trials=1, base={**base, "lr": 1e-3}, progress=False, metric=main_score
        )
    with pytest.raises(InvalidInput, match="unknown training setting 'lora_rank'"):
        tune(
            cities,
            "cities",
            trials=1,
            base={**base, "lora_rank": 4},
            progress=False,
            metric=main_score,
        )
    with pytest.raises(InvalidInput, match="at least 1"):
        tune(cities, "cities", trials=0, base=base, progress=False, metric=main_score)


def test_tune_needs_validation_records(project: Any, tiny_base_dir: Path) -> None:
    from whetstone import snapshots
    from whetstone.train.tune import tune

    project.create_task("cities", "extract", schema=SCHEMA)
    ids = [
        project.capture("cities", f"{i} Main St", reference='{"city": "X"}', source="import")
        for i in range(6)
    ]
    snap = snapshots.freeze(project, "cities", {i: "train" for i in ids})
    with pytest.raises(InvalidInput, match="no validation records"):
        tune(project, "cities", trials=1, base=base_settings(tiny_base_dir), snapshot_id=snap.id,
             progress=False, metric=main_score)  # fmt: skip


def test_tune_cli_json(cities: Any, tiny_base_dir: Path, tmp_path: Path) -> None:
    import yaml
    from typer.testing import CliRunner

    from whetstone.cli import main, tune

    if not any(c.name == "tune" for c in main.app.registered_commands):
        tune.register(main.app)
    cfg = tmp_path / "base.yaml"
    settings = {**base_settings(tiny_base_dir), "max_steps": 2}
    # A train.yaml may spell keys as flags.
    cfg.write_text(yaml.safe_dump({k.replace("_", "-"): v for k, v in settings.items()}))
    args = ["--project", str(cities.root), "tune", "--task", "cities", "--trials", "1"]
    res = CliRunner().invoke(main.app, [*args, "--method", "lora", "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # progress lines go to stderr
    assert out["best"] == "cities@1" and out["trials"][0]["state"] == "complete"
    assert out["trials"][0]["steps"] == 2
    bad = CliRunner().invoke(main.app, [*args, "--method", "lora,qlora", "--config", str(cfg)])
    assert isinstance(bad.exception, InvalidInput) and "unknown method 'qlora'" in str(
        bad.exception
    )
