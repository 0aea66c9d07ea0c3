"""`whetstone tune`: a hyper-parameter search (Optuna) that registers the best trial."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from whetstone.cli import common


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)


def tune(
    task: Annotated[str, typer.Option("--task", "-t", help="The task to tune.")],
    trials: Annotated[
        int,
        typer.Option("--trials", "-n", help="Trials in the study, counting those already run."),
    ] = 10,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="Start no new trial after this many seconds."),
    ] = None,
    method: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            help="Methods to search (repeat or comma-separate); default lora, dora, topk "
            "(+ head for classify tasks).",
        ),
    ] = None,
    snapshot: Annotated[
        str | None, typer.Option("--snapshot", help="Tune on this snapshot (default: freeze one).")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="A train.yaml of the settings every trial shares."),
    ] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Study name (default: TASK-<snapshot>).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the TPE sampler.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Search learning rate, LoRA rank, epochs and method; prune bad trials; register the best.

    Running the same command again resumes the study (.whetstone/tune/STUDY.db)."""
    from whetstone.evaluate.metrics import main_score
    from whetstone.train.config import read_yaml
    from whetstone.train.tune import SEARCHED
    from whetstone.train.tune import tune as run_tune

    p = common.project()
    # The project's `train:` defaults apply, except what the search itself sets.
    base: dict[str, Any] = {k: v for k, v in p.section("train").items() if k not in SEARCHED}
    if config is not None:
        read = read_yaml(config)
        if read.note:  # an Axolotl / LLaMA-Factory file's ignored keys, never silently
            common.err.print(f"note: {read.note}", markup=False, highlight=False)
        base.update(read.values)
    methods = [m.strip() for spec in method or [] for m in spec.split(",") if m.strip()]
    result = run_tune(
        p,
        task,
        trials,
        timeout=timeout,
        base=base,
        snapshot_id=snapshot,
        progress=not as_json,
        methods=methods or None,
        study_name=study,
        seed=seed,
        metric=main_score,
    )
    if as_json:
        common.print_json(
            {
                "study": result.study_name,
                "best": result.best.adapter,
                "best_metric": result.best.best_metric,
                "table": result.table_path,
                "trials": result.trials,
            }
        )
        return
    common.out.print(
        f"Registered [bold]{result.best.adapter}[/bold] (candidate) · method {result.best.method} · "
        f"best validation metric {result.best.best_metric:.3f} · study {result.study_name}"
    )
