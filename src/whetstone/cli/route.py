"""`whetstone route calibrate`: where a task's cascade hands requests to the hero."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from whetstone.cli import common

if TYPE_CHECKING:
    from whetstone.evaluate.cascade import Calibration

route_app = typer.Typer(help="Routing between the workhorse and the hero.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(route_app, name="route")


@route_app.command("calibrate")
def calibrate_cmd(
    task: Annotated[str, typer.Option("--task", "-t", help="The task to calibrate.")],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="The adapter, T@N (default: the production one)."),
    ] = None,
    target: Annotated[
        float | None,
        typer.Option(
            "--target", help="Share of the hero's score to keep, escalating least (0.95)."
        ),
    ] = None,
    max_escalation: Annotated[
        float | None,
        typer.Option("--max-escalation", help="Best score escalating at most this share."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Use only the first K test records.")
    ] = None,
    snapshot: Annotated[
        str | None, typer.Option("--snapshot", help="Snapshot id (default: the task's latest).")
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            "--split",
            help="Held-out split to calibrate on (validation keeps the test split for "
            "measuring the threshold).",
        ),
    ] = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run workhorse and hero on the held-out split, draw the quality-cost curve and store
    the chosen confidence threshold on the adapter version."""
    from whetstone.evaluate.cascade import calibrate
    from whetstone.records import Kind
    from whetstone.serve.settings import Settings

    p = common.project()
    # The workhorse is judged on the answers the server gives: constrained where it
    # constrains this task's (`serve: constrain_extract`).
    constrained = p.task(task).kind == Kind.extract and (
        Settings.load(p.section("serve")).constrains(task)
    )
    cal = calibrate(
        p,
        task,
        model,
        target=target,
        max_escalation=max_escalation,
        limit=limit,
        snapshot_id=snapshot,
        split=split,
        constrained=constrained,
    )
    if as_json:
        common.print_json(cal.info)
    else:
        print_calibration(cal)


def print_calibration(cal: Calibration) -> None:
    from rich.table import Table

    from whetstone.evaluate.cascade import shown_points

    c, chosen = cal.curve, cal.choice.point
    table = Table(
        title=f"cascade {cal.adapter} → hero {cal.hero_model} ({c.n} {cal.split} records)"
    )
    for col in ("threshold", "escalated", c.metric, f"cost ({c.cost_basis})", ""):
        table.add_column(col)
    for p in shown_points(c, chosen):
        table.add_row(
            f"{p.threshold:.4g}",
            f"{p.escalation:.1%}",
            f"{p.score:.3f}",
            f"{p.cost:.1%}",
            "← chosen" if p == chosen else "",
        )
    common.out.print(table)
    common.out.print(
        f"hero only {c.hero_score:.3f} · workhorse only {c.workhorse_score:.3f} · "
        f"{c.forced} answer(s) always escalate (failed the task's checks or no confidence)"
    )
    low, high = cal.score_interval["low"], cal.score_interval["high"]
    colour = "green" if cal.choice.feasible else "yellow"
    common.out.print(
        f"[{colour}]{cal.choice.note}[/{colour}]: threshold {chosen.threshold:.4g}, "
        f"{chosen.escalation:.1%} escalated, {c.metric} {chosen.score:.3f} [{low:.3f}, {high:.3f}], "
        f"cost {chosen.cost:.1%} of hero-only",
        highlight=False,
    )
    if cal.hero_failed:
        common.out.print(
            f"[yellow]the hero failed on {cal.hero_failed} record(s): the workhorse's answer "
            "stands in for them (they are asked again next time)[/yellow]"
        )
    asked = f"{cal.hero_asked} hero call(s)" if cal.hero_asked else "no hero calls (all cached)"
    common.out.print(f"Stored on {cal.adapter} ({asked}); curve: {cal.plot}", markup=False)
