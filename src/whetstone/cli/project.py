"""`whetstone init`: create a project."""

from __future__ import annotations

from typing import Annotated

import typer

from whetstone.cli import common


def register(app: typer.Typer) -> None:
    app.command("init")(init)


def init(
    path: Annotated[str, typer.Argument(help="Folder to make a project of.")] = ".",
    base_model: Annotated[
        str | None,
        typer.Option(
            "--base-model",
            help="Default base model for this project (bundled name, local folder or hub id).",
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db", help="Store URL to write into whetstone.yaml (default: SQLite in .whetstone/)."
        ),
    ] = None,
) -> None:
    """Create whetstone.yaml and .whetstone/ (store and artefacts) in PATH."""
    from whetstone.project import Project

    p = Project.init(path, base_model=base_model, db=db or common.state.db)
    common.out.print(f"Created a Whetstone project in {p.root}")
    common.out.print(f"  settings: {p.config_path.name}  (base_model: {p.base_model})")
    common.out.print(f"  store:    {p.store.display_url}")
