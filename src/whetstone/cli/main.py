"""The `whetstone` command. Sub-commands live in one module per stage and import their heavy
dependencies inside the command, so `whetstone --help` stays fast."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from whetstone import __version__
from whetstone.cli import common
from whetstone.cli import data as data_cmds
from whetstone.cli import demo_data as demo_data_cmds
from whetstone.cli import doctor as doctor_cmds
from whetstone.cli import predict as predict_cmds
from whetstone.cli import project as project_cmds
from whetstone.cli import records as records_cmds
from whetstone.cli import tasks as tasks_cmds

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
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    common.state.project = project
    common.state.db = db
    common.state.debug = debug


project_cmds.register(app)
tasks_cmds.register(app)
records_cmds.register(app)
data_cmds.register(app)
predict_cmds.register(app)
demo_data_cmds.register(app)
doctor_cmds.register(app)


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
