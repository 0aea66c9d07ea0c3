"""`whetstone demo-data`: load a bundled dataset (addresses or intents) into a project."""

from __future__ import annotations

from typing import Annotated

import typer

from whetstone.cli import common


def register(app: typer.Typer) -> None:
    app.command("demo-data")(demo_data)


def demo_data(
    task: Annotated[
        str | None,
        typer.Option("--task", "-t", help="Task to load them into (default: the dataset's name)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="Only the first N rows.")
    ] = None,
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset",
            "-d",
            help="addresses: 1,488 US addresses to extract the parts of (usaddress, MIT); "
            "intents: 693 voice-assistant requests to classify into 7 intents (SNIPS via "
            "BIG-bench, Apache 2.0).",
        ),
    ] = "addresses",
) -> None:
    """Load a bundled, hand-labelled dataset as a task to try the whole loop on: US addresses
    (an extract task) or voice-assistant intents (a classify task). Running it again adds
    nothing."""
    from whetstone import demo_data as demo
    from whetstone.errors import InvalidInput

    if dataset not in demo.DATASETS:
        raise InvalidInput(
            f"unknown --dataset {dataset!r} (choose from {', '.join(demo.DATASETS)})"
        )
    if dataset == "intents":
        t, added = demo.load_demo_classify(common.project(), task or dataset, limit=limit)
        what, try_it = "demo requests", demo.INTENTS_TRY_IT
    else:
        t, added = demo.load_demo_data(common.project(), task or dataset, limit=limit)
        what, try_it = "demo addresses", demo.TRY_IT
    common.out.print(
        f"Added {added} {what} to task {t.name} ({t.kind.value}, metric {t.main_metric})."
    )
    common.out.print("Try the base model on one:", highlight=False)
    common.out.print(f'  whetstone predict --task {t.name} "{try_it}"', markup=False)
