"""Thin Typer commands, one module per stage. They parse, call a stage's function, print."""
