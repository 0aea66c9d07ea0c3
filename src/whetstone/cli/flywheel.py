"""`whetstone flywheel` (one turn of the loop) and `whetstone demo` (the whole story)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from whetstone.cli import common


def register(app: typer.Typer) -> None:
    app.command("flywheel")(flywheel)
    app.command("demo")(demo)


def flywheel(
    task: Annotated[str, typer.Option("--task", "-t")],
    config: Annotated[
        Path | None,
        typer.Option("--config", help="flywheel.yaml (default: `flywheel:` in whetstone.yaml)."),
    ] = None,
    budget: Annotated[
        int | None, typer.Option("--budget", help="Train on at most this many curated records.")
    ] = None,
    tune_trials: Annotated[
        int | None,
        typer.Option("--tune-trials", help="Search hyper-parameters with this many trials."),
    ] = None,
    tune_timeout: Annotated[
        float | None, typer.Option("--tune-timeout", help="Seconds for the search.")
    ] = None,
) -> None:
    """Run one turn: collect → curate → train → evaluate → gate → promote or refuse → report →
    queue the next records to label. An interrupted turn resumes where it stopped."""
    from whetstone.flywheel import load_config, run_turn

    p = common.project()
    cfg = load_config(p, config, budget=budget, tune_trials=tune_trials, tune_timeout=tune_timeout)
    s = run_turn(p, task, cfg)

    def fmt(m: dict[str, float] | None) -> str:
        if not m:
            return "–"
        return f"{m['value']:.3f} [{m.get('low', m['value']):.3f}, {m.get('high', m['value']):.3f}]"

    common.out.print(f"[bold]Flywheel turn {s.turn} of {s.task}[/bold]: {s.decision.upper()}")
    common.out.print(
        f"  records in: {s.records_in} ({s.new_labels} new labels) · records used: {s.records_used}"
    )
    if s.candidate:
        common.out.print(
            f"  {s.main_metric}: {s.incumbent} {fmt(s.before)} → {s.candidate} {fmt(s.after)}"
        )
    for reason in s.reasons:
        common.out.print(f"  [yellow]{reason}[/yellow]", markup=True, highlight=False)
    common.out.print(
        f"  time: {s.seconds:.0f} s · report: {s.report or '–'} · next to label: {s.queue or '–'}"
    )


def demo(
    folder: Annotated[
        Path, typer.Option("--dir", help="A fresh folder for the demo's projects.")
    ] = Path("whetstone-demo"),
    minutes: Annotated[
        float | None,
        typer.Option("--minutes", help="Start no new turn that would pass this budget."),
    ] = 20.0,
    turns: Annotated[
        int, typer.Option("--turns", help="At most this many turns (as many as fit --minutes).")
    ] = 5,
    stream: Annotated[int, typer.Option("--stream", help="Production requests per turn.")] = 110,
    labels: Annotated[int, typer.Option("--labels", help="Human labels per turn.")] = 70,
    test_size: Annotated[int, typer.Option("--test-size", help="Held-out addresses.")] = 100,
    compare_random: Annotated[
        bool,
        typer.Option(
            "--compare-random/--no-compare-random",
            help="Also run a random-labelling arm (an A/B; benchmarks/active_learning.py "
            "measures it properly).",
        ),
    ] = False,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve", help="Send production traffic and feedback through the HTTP server."
        ),
    ] = False,
    epochs: Annotated[int | None, typer.Option("--epochs")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps")] = None,
    base_model: Annotated[str | None, typer.Option("--base-model")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Answer length cap.")
    ] = 160,
) -> None:
    """Play the whole story offline on the bundled addresses: baseline, production stream,
    simulated reviewer choosing by `curate next`, flywheel turns, and a report."""
    from rich.table import Table

    from whetstone.demo import DemoPlan, run_demo
    from whetstone.demo_report import HEADERS, table_rows, verdict_lines

    plan = DemoPlan(
        turns=turns,
        stream_per_turn=stream,
        labels_per_turn=labels,
        test_size=test_size,
        seed=seed,
        compare_random=compare_random,
        serve=serve,
        minutes=minutes,
        max_new_tokens=max_new_tokens,
    )
    for key, value in (("epochs", epochs), ("max_steps", max_steps), ("base_model", base_model)):
        if value is not None:
            plan.train[key] = value
    result = run_demo(folder, plan)
    table = Table(
        *HEADERS,
        title=f"Whetstone demo · {result.machine['date']} · {result.machine['cpu']} · {result.seconds / 60:.1f} min",
    )
    for row in table_rows(result):
        table.add_row(*row)
    common.out.print(table)
    for line in verdict_lines(result):
        common.out.print(line)
    common.out.print(f"Report: {result.report}\nCurve:  {result.curve_png}")
