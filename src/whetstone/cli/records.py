"""`whetstone records list|show|correct|accept|reject`."""

from __future__ import annotations

from typing import Annotated

import typer

from whetstone.cli import common

records_app = typer.Typer(help="Inspect and review captured records.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(records_app, name="records")


def _short(text: str | None, n: int = 60) -> str:
    if text is None:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


@records_app.command("list")
def list_(
    task: Annotated[str | None, typer.Option("--task", "-t")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="unreviewed | accepted | corrected | rejected")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option("--source", help="production | import | teacher | synthetic | evaluation"),
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON records.")] = False,
) -> None:
    """List records, newest first."""
    from rich.table import Table

    p = common.project()
    if task is not None:
        p.task(task)
    recs = p.store.list_records(
        task, status=status, source=source, tag=tag, limit=limit, newest_first=True
    )
    if as_json:
        common.print_json([r.model_dump(mode="json", exclude={"history"}) for r in recs])
        return
    # The short fields stay whole on a narrow terminal; the texts give way and wrap.
    table = Table()
    for name in ("id", "task", "status", "source"):
        table.add_column(name, no_wrap=True)
    for name in ("input", "output", "reference"):
        table.add_column(name)
    table.add_column("conf", no_wrap=True)
    for r in recs:
        conf = "" if r.confidence is None else f"{r.confidence:.2f}"
        table.add_row(
            str(r.id),
            r.task,
            r.status.value,
            r.source.value,
            _short(r.input_text, 40),
            _short(r.output, 30),
            _short(r.reference, 30),
            conf,
        )
    common.out.print(table)


@records_app.command("show")
def show(record_id: Annotated[str, typer.Argument(help="Record id.")]) -> None:
    """Show one record with its full review history."""
    from whetstone.curate import decisions_for

    p = common.project()
    rec = p.record(common.parse_record_id(record_id))
    # Why a record is in or out of each curated snapshot, newest first.
    assert rec.id is not None
    common.print_json({**rec.model_dump(mode="json"), "decisions": decisions_for(p, rec.id)})


@records_app.command("correct")
def correct(
    record_id: Annotated[str, typer.Argument()],
    reference: Annotated[str, typer.Option("--reference", "-r", help="The right answer.")],
    error_category: Annotated[str | None, typer.Option("--error-category", "-e")] = None,
    annotator: Annotated[
        str | None, typer.Option("--annotator", envvar="WHETSTONE_ANNOTATOR")
    ] = None,
    comment: Annotated[str | None, typer.Option("--comment")] = None,
) -> None:
    """Set the ground truth of a record. The model's output is kept; earlier corrections stay in the history."""
    rec = common.project().correct(
        common.parse_record_id(record_id),
        reference,
        error_category=error_category,
        annotator=annotator,
        comment=comment,
    )
    common.out.print(
        f"Record {rec.id} corrected ({len(rec.history)} review event(s) in its history)"
    )


@records_app.command("accept")
def accept(
    record_id: Annotated[str, typer.Argument()],
    annotator: Annotated[
        str | None, typer.Option("--annotator", envvar="WHETSTONE_ANNOTATOR")
    ] = None,
) -> None:
    """Mark the model's output as right: it becomes the record's reference."""
    rec = common.project().accept(common.parse_record_id(record_id), annotator=annotator)
    common.out.print(f"Record {rec.id} accepted")


@records_app.command("reject")
def reject(
    record_id: Annotated[str, typer.Argument()],
    error_category: Annotated[str | None, typer.Option("--error-category", "-e")] = None,
    annotator: Annotated[
        str | None, typer.Option("--annotator", envvar="WHETSTONE_ANNOTATOR")
    ] = None,
    comment: Annotated[str | None, typer.Option("--comment")] = None,
) -> None:
    """Mark a record as unusable (bad input, out of scope): it is kept but never trained on."""
    rec = common.project().reject(
        common.parse_record_id(record_id),
        annotator=annotator,
        comment=comment,
        error_category=error_category,
    )
    common.out.print(f"Record {rec.id} rejected")
