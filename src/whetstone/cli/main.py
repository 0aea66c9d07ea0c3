"""The `whetstone` command. Sub-commands live in one module per stage and import their heavy
dependencies inside the command, so `whetstone --help` stays fast."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from whetstone import __version__
from whetstone.cli import common

# One module per stage, each with `register(app)`; order is the order of `--help`.
COMMAND_MODULES = [
    "project",
    "tasks",
    "records",
    "data",
    "demo_data",
    "predict",
    "curate",
    "train",
    "tune",
    "evaluate",
    "distill",
    "registry",
    "route",
    "serve",
    "flywheel",
    "doctor",
]

app = typer.Typer(
    name="whetstone",
    help="Turn a small general model into a reliable specialist, and keep it improving from its own mistakes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"whetstone {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    project: Annotated[
        str | None,
        typer.Option(
            "--project",
            "-P",
            envvar="WHETSTONE_PROJECT",
            help="Project folder (default: found from the current folder upwards).",
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Store URL, e.g. postgresql://user@host/db (default: the project's SQLite file).",
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Show other libraries' warnings, log lines and progress bars (hidden by default).",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    common.state.project = project
    common.state.db = db
    common.state.debug = debug
    common.state.verbose = verbose
    if not verbose:
        common.quiet_third_party()


for _name in COMMAND_MODULES:
    importlib.import_module(f"whetstone.cli.{_name}").register(app)


def run() -> None:
    from whetstone.errors import WhetstoneError

    try:
        app()
    except WhetstoneError as e:
        if common.state.debug or "--debug" in sys.argv:
            raise
        common.err.print("error:", style="bold red", end=" ")
        common.err.print(str(e), markup=False, highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        common.err.print("interrupted")
        sys.exit(130)
