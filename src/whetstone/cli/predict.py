"""`whetstone predict`: run a model over a text or over stored records."""

from __future__ import annotations

from typing import Annotated

import typer

from whetstone.cli import common


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)


def predict(
    task: Annotated[str, typer.Option("--task", "-t")],
    text: Annotated[str | None, typer.Argument(help="Text to answer (or use --records).")] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="base, a task name (its production adapter), T@N, or a FILE.gguf (llama.cpp).",
        ),
    ] = "base",
    records: Annotated[
        str | None,
        typer.Option(
            "--records",
            help="Answer stored records of this status that have no output yet (e.g. unreviewed).",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="At most this many records.")
    ] = None,
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="Override the project's base model.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 256,
    capture: Annotated[
        bool,
        typer.Option(
            "--capture/--no-capture", help="Store a TEXT's answer as a production record."
        ),
    ] = False,
    constrained: common.Constrained = False,
) -> None:
    """Answer TEXT, or every stored record of a status, with the base model or an adapter."""
    from whetstone.predict import check_text, load_predictor, predict_records

    p = common.project()
    p.task(task)
    if records is None:
        text = check_text(text)
    predictor = load_predictor(p, task, model, base_model=base_model)
    if records is None:
        assert text is not None
        g = predictor([text], max_new_tokens=max_new_tokens, constrained=constrained)[0]
        common.out.print(g.text, markup=False, highlight=False)
        common.err.print(
            f"[dim]{predictor.name} · confidence {g.confidence:.3f} · {g.output_tokens} tokens · {g.latency_ms:.0f} ms[/dim]"
        )
        if capture:
            rid = p.capture(
                task,
                text,
                g.text,
                model=predictor.name,
                confidence=g.confidence,
                meta={"latency_ms": round(g.latency_ms, 2), "output_tokens": g.output_tokens},
            )
            common.err.print(f"captured as record {rid}")
        return
    recs = p.store.list_records(task, status=records, has_output=False, limit=limit)
    done = predict_records(
        p,
        predictor,
        recs,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        constrained=constrained,
    )
    common.out.print(f"Answered {len(done)} record(s) with {predictor.name}")
