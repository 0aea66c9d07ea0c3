"""`whetstone task create|list|show`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from whetstone.cli import common

task_app = typer.Typer(help="Create and list tasks.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(task_app, name="task")


@task_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Task name, e.g. addresses.")],
    kind: Annotated[str, typer.Option("--kind", help="generate | classify | extract")],
    instruction: Annotated[
        str | None, typer.Option("--instruction", help="System prompt for the task.")
    ] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="Comma-separated label set (classify).")
    ] = None,
    schema: Annotated[
        Path | None, typer.Option("--schema", help="JSON Schema file for the answer (extract).")
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="Main metric (default per kind; item_f1 for list answers), or module:function.",
        ),
    ] = None,
) -> None:
    """Create a task."""
    from whetstone.errors import InvalidInput

    schema_obj = None
    if schema is not None:
        try:
            schema_obj = json.loads(schema.read_text())
        except FileNotFoundError:
            raise InvalidInput(f"{schema}: no such file") from None
        except json.JSONDecodeError as e:
            raise InvalidInput(f"{schema}:{e.lineno}: not valid JSON ({e.msg})") from None
    label_list = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    t = common.project().create_task(
        name, kind, instruction=instruction, labels=label_list, schema=schema_obj, metric=metric
    )
    common.out.print(f"Created task {t.name} ({t.kind.value}, metric {t.main_metric})")
    if t.kind.value == "classify" and not t.labels:
        common.out.print("It has no labels yet: the first import takes them from its references.")


@task_app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List tasks with their record counts."""
    from rich.table import Table

    p = common.project()
    tasks = p.store.list_tasks()
    rows = [
        (t, p.store.count_records(t.name), p.store.count_records(t.name, has_reference=True))
        for t in tasks
    ]
    if as_json:
        common.print_json(
            [
                {**t.model_dump(mode="json", by_alias=True), "records": n, "with_reference": r}
                for t, n, r in rows
            ]
        )
        return
    table = Table("task", "kind", "metric", "records", "with reference")
    for t, n, r in rows:
        table.add_row(t.name, t.kind.value, t.main_metric, str(n), str(r))
    common.out.print(table)


@task_app.command("show")
def show(name: str) -> None:
    """Show a task's settings."""
    common.print_json(common.project().task(name).model_dump(mode="json", by_alias=True))
