"""`whetstone distill` (the hero labels records) and `whetstone synthesize` (it writes new
inputs, then labels them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from whetstone.cli import common

if TYPE_CHECKING:
    from whetstone.distill import LabelSummary

Samples = Annotated[
    int,
    typer.Option("--samples", "-k", help="Answers asked per record; the majority is the label."),
]
MinAgreement = Annotated[
    float | None,
    typer.Option(
        "--min-agreement",
        help="Share of samples that must agree for a label (default 2/3); "
        "below it the record goes to human review.",
    ),
]


def register(app: typer.Typer) -> None:
    app.command("distill")(distill)
    app.command("synthesize")(synthesize)


def distill(
    task: Annotated[str, typer.Option("--task", "-t", help="Task whose records to label.")],
    n: Annotated[int, typer.Option("--n", "-n", help="Label at most this many records.")] = 100,
    samples: Samples = 1,
    min_agreement: MinAgreement = None,
) -> None:
    """Have the hero (`hero:` in whetstone.yaml) label unlabelled records, production traffic
    first. Teacher labels train; they are never evaluated on."""
    from whetstone.distill import DEFAULT_MIN_AGREEMENT, label
    from whetstone.models.hero import project_hero

    p = common.project()
    s = label(
        p,
        task,
        project_hero(p),
        n=n,
        samples=samples,
        min_agreement=DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement,
    )
    _print_labels(s, "Teacher labels")
    if s.asked == 0:
        common.out.print(f"No unlabelled records of task {task!r} left for the teacher.")


def synthesize(
    task: Annotated[str, typer.Option("--task", "-t", help="Task to write inputs for.")],
    n: Annotated[int, typer.Option("--n", "-n", help="New inputs wanted.")],
    steer: Annotated[
        str | None,
        typer.Option("--steer", help='What kind of inputs, e.g. "rural addresses with PO boxes".'),
    ] = None,
    shots: Annotated[int, typer.Option("--shots", help="Example inputs shown per request.")] = 8,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    samples: Samples = 1,
    min_agreement: MinAgreement = None,
) -> None:
    """Have the hero write new inputs like the task's own, drop duplicates and anything near
    the test split, store the rest (source=synthetic) and label them."""
    from rich.table import Table

    from whetstone.distill import DEFAULT_MIN_AGREEMENT
    from whetstone.distill import synthesize as run
    from whetstone.models.hero import project_hero

    p = common.project()
    s = run(
        p,
        task,
        project_hero(p),
        n=n,
        steer=steer,
        shots=shots,
        seed=seed,
        samples=samples,
        min_agreement=DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement,
    )
    labels = s.labels
    table = Table(
        "asked",
        "parsed",
        "duplicates",
        "near test",
        "stored",
        "labelled",
        "cost",
        "tokens",
        title=f"Synthetic inputs · {task} · {s.model}",
    )
    table.add_row(
        str(s.asked),
        str(s.parsed),
        str(s.duplicates),
        str(s.near_test),
        str(s.stored),
        str(s.labelled),
        f"{s.cost + (labels.cost if labels else 0):.4f}",
        str(s.tokens + (labels.tokens if labels else 0)),
    )
    common.out.print(table)
    if s.failed_requests:
        common.out.print(f"{s.failed_requests} of {s.requests} requests failed: {s.last_error}")
    if labels is not None:
        _print_labels(labels, "Their labels")


def _print_labels(s: LabelSummary, title: str) -> None:
    from rich.table import Table

    table = Table(
        "asked",
        "labelled",
        "to review",
        "failed",
        "from escalations",
        "cost",
        "tokens",
        title=f"{title} · {s.task} · {s.model} · {s.samples} sample(s), agreement ≥ {s.min_agreement:.2f}",
    )
    table.add_row(
        str(s.asked),
        str(s.labelled),
        str(s.disagreed),
        str(s.failed),
        str(s.reused),
        f"{s.cost:.4f}",
        str(s.tokens),
    )
    common.out.print(table)
    if s.disagreed:
        common.out.print(
            f"{s.disagreed} record(s) the teacher disagreed on are tagged teacher-disagreed: "
            f"whetstone curate next --task {s.task} lists them first."
        )
    if s.failed:
        common.out.print(
            f"The hero failed on {s.failed}; a rerun retries them. Last: {s.last_error}"
        )
