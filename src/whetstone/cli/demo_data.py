"""`whetstone demo-data`: load the bundled address data into a project."""

from __future__ import annotations

from typing import Annotated

import typer

from whetstone.cli import common


def register(app: typer.Typer) -> None:
    app.command("demo-data")(demo_data)


def demo_data(
    task: Annotated[
        str, typer.Option("--task", "-t", help="Name of the extract task to load them into.")
    ] = "addresses",
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="Only the first N addresses.")
    ] = None,
) -> None:
    """Load 1,488 hand-labelled US addresses (from usaddress, MIT) as an extract task to try
    the whole loop on. Running it again adds nothing."""
    from whetstone.demo_data import TRY_IT, load_demo_data

    t, added = load_demo_data(common.project(), task, limit=limit)
    common.out.print(
        f"Added {added} demo addresses to task {t.name} ({t.kind.value}, metric {t.main_metric})."
    )
    common.out.print("Try the base model on one:", highlight=False)
    common.out.print(f'  whetstone predict --task {t.name} "{TRY_IT}"', markup=False)
