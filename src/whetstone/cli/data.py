"""`whetstone import|export`: move records in and out in the formats other tools speak."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from whetstone.cli import common

IMPORT_HELP = "auto | openai | evals | instruction | jsonl | preference | csv | parquet | hf"
EXPORT_HELP = "openai | evals | instruction | jsonl | preference | csv | parquet | hf"


def register(app: typer.Typer) -> None:
    app.command("import")(import_)
    app.command("export")(export)


def import_(
    file: Annotated[Path, typer.Argument(help="File (or datasets folder) to import.")],
    task: Annotated[str, typer.Option("--task", "-t", help="Task the records belong to.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=IMPORT_HELP)] = "auto",
    skip_invalid: Annotated[
        bool,
        typer.Option(
            "--skip-invalid",
            help="Import the good rows and write the bad ones, with reasons, to a JSONL file.",
        ),
    ] = False,
    rejected_out: Annotated[
        Path | None,
        typer.Option(
            "--rejected-out",
            help="Where --skip-invalid writes bad rows (default: FILE.rejected.jsonl).",
        ),
    ] = None,
    input_col: Annotated[
        str | None,
        typer.Option("--input-col", help="Input column (csv/parquet/hf; default input)."),
    ] = None,
    reference_col: Annotated[
        str | None,
        typer.Option(
            "--reference-col",
            "--label-col",
            help="Reference (label) column (csv/parquet/hf; default reference).",
        ),
    ] = None,
    label_map: Annotated[
        str | None,
        typer.Option(
            "--label-map",
            help="LABEL=VALUE,...: the label each raw value of the reference column becomes, "
            "e.g. fresh=1,rotten=0; rows with other values are skipped and counted.",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source", help="import | teacher | synthetic (default: the file's, else import)."
        ),
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            help="Status for every row (default: the file's, else accepted when it has a reference).",
        ),
    ] = None,
) -> None:
    """Import records from a file. One bad row aborts the whole import (nothing is added)
    unless --skip-invalid; rows imported before are skipped as duplicates."""
    from whetstone import formats

    report = formats.import_file(
        common.project(),
        file,
        task,
        fmt,
        skip_invalid=skip_invalid,
        rejected_out=rejected_out,
        input_col=input_col,
        reference_col=reference_col,
        source=source,
        status=status,
        label_map=formats.parse_label_map(label_map),
    )
    skipped = (
        f", {report.skipped} skipped (value not in --label-map)" if label_map is not None else ""
    )
    common.out.print(
        f"Imported {file} ({report.format}) into task {task}: {report.added} added, "
        f"{report.duplicates} duplicate(s), {report.rejected} rejected{skipped}",
        markup=False,
        highlight=False,
    )
    for note in report.notes:
        common.out.print(f"note: {note}", markup=False, highlight=False)
    if report.rejected_path is not None:
        common.out.print(
            f"Rejected rows, with reasons: {report.rejected_path}", markup=False, highlight=False
        )


def export(
    task: Annotated[str, typer.Option("--task", "-t", help="Task whose records to export.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=EXPORT_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="File (a folder for hf) to write.")],
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status",
            help="Export records with this status (repeatable). Default: every record with a "
            "reference that was not rejected (corrected ones for preference).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace an existing file (for hf: only a folder an earlier export wrote).",
        ),
    ] = False,
) -> None:
    """Export a task's records, e.g. as OpenAI fine-tuning JSONL or DPO preference pairs."""
    from whetstone import formats

    n = formats.export_records(
        common.project(), task, fmt, out, statuses=status or None, force=force
    )
    common.out.print(
        f"Exported {n} record(s) of task {task} to {out} ({fmt})", markup=False, highlight=False
    )
    if n == 0:
        hint = (
            "pairs come from corrected records whose output differs from the reference"
            if fmt == "preference"
            else "records need a reference (correct or accept them), or name statuses with --status"
        )
        common.err.print(f"nothing matched: {hint}", markup=False, highlight=False)
