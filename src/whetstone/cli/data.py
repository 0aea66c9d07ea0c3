"""`whetstone import|export|demo-data`: move records in and out in real formats."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
