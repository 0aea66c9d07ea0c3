"""`whetstone demo-data`: load the bundled address data into a project."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
