"""`whetstone curate --task T [--config curate.yaml] [--budget N]` and `whetstone curate next`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from whetstone.cli import common

curate_app = typer.Typer(
    help="Curate a task's records into a dataset snapshot, or rank what to label next.",
    invoke_without_command=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(curate_app, name="curate")


@curate_app.callback()
def curate(
    ctx: typer.Context,
    task: Annotated[str | None, typer.Option("--task", "-t", help="Task to curate.")] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="curate.yaml (default: whetstone.yaml's curate: section)."
        ),
    ] = None,
    budget: Annotated[
        int | None, typer.Option("--budget", help="Keep the best N training rows.")
    ] = None,
    no_pii: Annotated[bool, typer.Option("--no-pii", help="Skip PII redaction.")] = False,
    drop_noisy: Annotated[
        bool | None,
        typer.Option(
            "--drop-noisy/--flag-noisy", help="Drop label-noise suspects, or only flag them."
        ),
    ] = None,
    reshuffle_test: Annotated[
        bool,
        typer.Option(
            "--reshuffle-test",
            help="Re-draw the test split instead of keeping earlier snapshots' test rows.",
        ),
    ] = False,
) -> None:
    """Run the curation steps and freeze the result as a snapshot for `whetstone train --from-snapshot`."""
    if ctx.invoked_subcommand is not None:
        return
    if task is None:
        raise typer.BadParameter("--task is required", param_hint="--task")
    from rich.table import Table

    from whetstone.curate.pipeline import curate as run
    from whetstone.curate.pipeline import resolve_config
    from whetstone.train.scoring import reference_losses

    p = common.project()
    overrides: dict[str, object] = {
        "drop_noisy": drop_noisy,
        "reshuffle_test": reshuffle_test or None,
    }
    cfg = resolve_config(p, config, budget=budget, **overrides)
    if no_pii:
        cfg = resolve_config(p, cfg, steps=[s for s in cfg.steps if s != "pii"])
    result = run(p, task, cfg, scorer=reference_losses)
    table = Table("step", "before", "removed", "flagged", "changed", "after", "why / notes")
    for r in result.steps:
        why = "; ".join([*(f"{k} ×{v}" for k, v in r.reasons.items()), *r.notes])
        table.add_row(
            r.name, str(r.before), str(r.removed), str(r.flagged), str(r.changed), str(r.after), why
        )
    common.out.print(table)
    counts = result.snapshot.counts()
    common.out.print(
        f"Snapshot [bold]{result.snapshot.id}[/bold]: "
        + ", ".join(f"{s} {n}" for s, n in counts.items())
        + (f" · data card {result.card_path}" if result.card_path else "")
    )
    common.out.print(
        f"Train on it: whetstone train --task {task} --from-snapshot {result.snapshot.id}"
    )


@curate_app.command("next")
def next_(
    task: Annotated[
        str, typer.Option("--task", "-t", help="Task whose production records to rank.")
    ],
    n: Annotated[int, typer.Option("--n", "-n", help="How many records to queue.")] = 50,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the queue as JSONL.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --output file.")
    ] = False,
) -> None:
    """Rank unreviewed production records by the value of a human label (uncertainty × novelty ×
    typicality)."""
    from rich.table import Table

    from whetstone.curate.next import next_to_label
    from whetstone.util import check_target, user_target, write_jsonl

    p = common.project()
    if output is not None:  # before the ranking, which runs the model
        check_target(output, folder=False, replace=user_target(force))
    queue = next_to_label(p, task, n)
    if output is not None:
        write_jsonl(
            output,
            [
                {**rec.model_dump(mode="json", exclude={"history"}), "score": score, **parts}
                for rec, score, parts in queue
            ],
        )
    table = Table("rank", "id", "score", "uncertainty", "distance", "density", "input", "output")
    for i, (rec, score, parts) in enumerate(queue, 1):
        text = " ".join(rec.input_text.split())
        table.add_row(
            str(i),
            str(rec.id),
            f"{score:.3f}",
            f"{parts['uncertainty']:.3f}",
            f"{parts['distance']:.3f}",
            f"{parts['density']:.3f}",
            text[:50],
            " ".join((rec.output or "").split())[:30],
        )
    common.out.print(table)
    if not queue:
        common.out.print(f"No unreviewed production records of task {task!r} to rank.")
    elif output is not None:
        common.out.print(f"Wrote {len(queue)} records to {output}")
