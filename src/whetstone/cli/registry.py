"""`whetstone promote | rollback | adapters | history | report`: the registry's commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from whetstone.cli import common

if TYPE_CHECKING:
    from whetstone.evaluate.gate import GateDecision

AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def register(app: typer.Typer) -> None:
    app.command("promote")(promote_cmd)
    app.command("rollback")(rollback_cmd)
    app.command("adapters")(adapters_cmd)
    app.command("history")(history_cmd)
    app.command("report")(report_cmd)


def promote_cmd(
    ref: Annotated[str, typer.Argument(help="The candidate adapter, T@N.")],
    min_delta: Annotated[
        float | None,
        typer.Option(
            "--min-delta", help="The paired difference's lower 95% bound must exceed this."
        ),
    ] = None,
    slice_tolerance: Annotated[
        float | None,
        typer.Option("--slice-tolerance", help="Largest allowed drop of a slice's main metric."),
    ] = None,
    min_slice_size: Annotated[
        int | None,
        typer.Option("--min-slice-size", help="Slices smaller than this are not checked."),
    ] = None,
    latency_budget_ms: Annotated[
        float | None, typer.Option("--latency-budget-ms", help="Largest allowed p95 latency.")
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split to judge on (test).")] = None,
    snapshot: Annotated[
        str | None, typer.Option("--snapshot", help="Snapshot id (default: the adapter's own).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if the gate refuses (needs --reason).")
    ] = False,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (kept in the history).")
    ] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Who (default: $USER).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    as_json: AsJson = False,
) -> None:
    """Gate a candidate adapter and make it production only if every rule passes."""
    from whetstone.evaluate.cascade import promotion_note
    from whetstone.evaluate.gate import GateRefused, gate_config, promote

    p = common.project()
    cfg = gate_config(
        p,
        min_delta=min_delta,
        slice_tolerance=slice_tolerance,
        min_slice_size=min_slice_size,
        latency_budget_ms=latency_budget_ms,
        split=split,
        snapshot=snapshot,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    result = promote(p, ref, cfg, force=force, actor=actor, reason=reason)
    d = result.decision
    note = promotion_note(p, result.adapter) if result.promoted else None
    if as_json:
        common.print_json(
            {**d.to_dict(), "promoted": result.promoted, "forced": result.forced, "warning": note}
        )
    else:
        print_decision(d)
        if result.forced:
            common.out.print(
                f"[yellow]Promoted {d.candidate} to production over the gate's refusal "
                "(forced; recorded in the history)[/yellow]"
            )
        elif result.promoted:
            common.out.print(f"[green]Promoted {d.candidate} to production[/green]")
        if note:
            common.err.print(f"warning: {note}", style="yellow", markup=False, highlight=False)
    if not result.promoted:
        failed = ", ".join(r.name for r in d.failed)
        raise GateRefused(f"the gate refused {d.candidate}: {failed} failed")


def rollback_cmd(
    task: Annotated[str, typer.Argument(help="The task whose production version to roll back.")],
    to: Annotated[
        int | None, typer.Option("--to", help="Version N to return to (default: the previous one).")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why (kept in the history).")
    ] = None,
    actor: Annotated[str | None, typer.Option("--actor", help="Who (default: $USER).")] = None,
) -> None:
    """Return to the previous production version; the current one is retired."""
    from whetstone.registry import rollback

    new, old = rollback(common.project(), task, to, actor=actor, reason=reason)
    common.out.print(f"Rolled back {task}: {new.name} is production, {old.name} is {old.stage}")


def adapters_cmd(
    task: Annotated[str | None, typer.Option("--task", "-t", help="Only this task.")] = None,
    as_json: AsJson = False,
) -> None:
    """List adapter versions with their stage, method, snapshot and main metric."""
    from rich.table import Table

    from whetstone import registry

    p = common.project()
    if task:
        p.task(task)
    rows = [adapter_row(p, av) for av in registry.list_versions(p, task)]
    if as_json:
        common.print_json(rows)
        return
    if not rows:
        common.out.print("No adapter versions yet (train one with whetstone train).")
        return
    table = Table(title="adapter versions")
    for col in ("version", "stage", "method", "snapshot", "metric", "validation", "test", "gate"):
        table.add_column(col, justify="right" if col in ("validation", "test") else "left")
    style = {"production": "bold green", "retired": "dim"}
    for r in rows:
        table.add_row(
            r["name"],
            f"[{style.get(r['stage'], 'default')}]{r['stage']}[/]",
            r["method"],
            r["snapshot"] or "-",
            r["metric"] or "-",
            _fmt(r["validation"]),
            _fmt(r["test"]),
            r["gate"] or "-",
        )
    common.out.print(table)


def history_cmd(
    task: Annotated[str, typer.Argument(help="Task name.")],
    as_json: AsJson = False,
) -> None:
    """Every registry event of a task: registrations, promotions, refusals, rollbacks."""
    from rich.table import Table

    from whetstone import registry

    p = common.project()
    p.task(task)
    events = registry.history(p, task)
    if as_json:
        common.print_json(events)
        return
    if not events:
        common.out.print(f"No registry events for {task} yet.")
        return
    table = Table(title=f"registry history of {task}")
    for col in ("when", "version", "action", "stage", "actor"):
        table.add_column(col, no_wrap=True)
    table.add_column("reason")
    for e in events:
        stages = (
            e["to_stage"]
            if e["from_stage"] in (None, e["to_stage"])
            else (f"{e['from_stage']} -> {e['to_stage']}")
        )
        table.add_row(
            str(e["created_at"])[:16].replace("T", " "),
            f"{task}@{e['version']}",
            e["action"],
            stages or "",
            e["actor"] or "",
            e["reason"] or "",
        )
    common.out.print(table, markup=False)


def report_cmd(
    ref: Annotated[str, typer.Argument(help="The adapter, T@N (or T for its production version).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="HTML file (default .whetstone/reports/T-N/report.html)."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing --out file and the PNGs beside it."),
    ] = False,
) -> None:
    """Write one self-contained HTML error-analysis report (plots also saved as PNG)."""
    from whetstone.evaluate.report import write_report

    path = write_report(common.project(), ref, out, force=force)
    common.out.print(f"Wrote {path}")


# ---------------------------------------------------------------- output


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def adapter_row(project: Any, av: Any) -> dict[str, Any]:
    """One version as a row: its validation metric from training, its test metric from the
    newest complete stored evaluation on its own snapshot, its last gate verdict."""
    from whetstone.evaluate.runner import latest_evaluation

    ev = latest_evaluation(project, av.task, av.name, av.snapshot_id, "test")
    gate = av.info.get("gate")
    return {
        "name": av.name,
        "stage": av.stage,
        "method": av.method,
        "snapshot": av.snapshot_id,
        "run": av.run_id,
        "metric": av.info.get("metric") or (ev.main_metric if ev else None),
        "validation": av.info.get("best_metric"),
        "test": ev.main["value"] if ev else None,
        "gate": None if gate is None else ("passed" if gate.get("passed") else "refused"),
        "created_at": av.created_at.isoformat(),
    }


def print_decision(d: GateDecision) -> None:
    from rich.table import Table

    table = Table(
        title=f"gate: {d.candidate} vs {d.baseline} ({d.split}, snapshot {d.snapshot_id})"
    )
    table.add_column("rule")
    table.add_column("result")
    table.add_column("numbers")
    for r in d.rules:
        verdict = "[green]pass[/green]" if r.passed else "[bold red]FAIL[/bold red]"
        table.add_row(r.name, verdict, _escape(r.message))
    common.out.print(table)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
