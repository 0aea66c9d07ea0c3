"""`whetstone eval` and `whetstone compare`: metrics with 95% intervals, paired comparisons."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from whetstone.cli import common
from whetstone.models.generate import GENERATE_BATCH

if TYPE_CHECKING:
    from whetstone.evaluate.compare import Comparison
    from whetstone.evaluate.runner import Evaluation

Split = Annotated[str, typer.Option("--split", help="test, validation, train or all.")]
Snapshot = Annotated[
    str | None,
    typer.Option("--snapshot", help="Snapshot id (default: the adapter's own, else the latest)."),
]
BaseModel = Annotated[
    str | None, typer.Option("--base-model", help="Override the project's base model.")
]
BatchSize = Annotated[int, typer.Option("--batch-size")]
MaxNewTokens = Annotated[
    int | None,
    typer.Option(
        "--max-new-tokens",
        help="Answer length cap (default: from the task's references, p99 x 1.5).",
    ),
]
Rerun = Annotated[
    bool,
    typer.Option("--rerun", help="Run the model again instead of reusing a stored evaluation."),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)


def eval_cmd(
    task: Annotated[str, typer.Option("--task", "-t")],
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="base, a task name (its production adapter), T@N, or a FILE.gguf (llama.cpp).",
        ),
    ] = "base",
    split: Split = "test",
    snapshot: Snapshot = None,
    limit: Annotated[
        int | None, typer.Option("--limit", "-n", help="Only the first N records.")
    ] = None,
    batch_size: BatchSize = GENERATE_BATCH,
    max_new_tokens: MaxNewTokens = None,
    base_model: BaseModel = None,
    metric: Annotated[
        str | None, typer.Option("--metric", help="A custom per-record metric, module:function.")
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option(
            "--judge", help="LLM judge: an OpenAI-compatible URL[#model] or a model spec."
        ),
    ] = None,
    rubric: Annotated[
        str | None, typer.Option("--rubric", help="The judge's rubric: text or a file.")
    ] = None,
    queue_failures: Annotated[
        bool,
        typer.Option("--queue-failures", help="Queue each failed held-out input for review."),
    ] = False,
    rerun: Rerun = False,
    as_json: AsJson = False,
    constrained: common.Constrained = False,
) -> None:
    """Run a model over a snapshot split and store its metrics with 95% intervals (Wilson for
    0/1 metrics, percentile bootstrap for the others)."""
    from whetstone.evaluate.runner import evaluate
    from whetstone.evaluate.runner import queue_failures as queue

    p = common.project()
    ev = evaluate(
        p,
        task,
        model,
        split,
        snapshot,
        limit=limit,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        base_model=base_model,
        metric=metric,
        judge=judge,
        rubric=rubric,
        reuse=not rerun,
        constrained=constrained,
    )
    queued = queue(p, ev) if queue_failures else None
    if as_json:
        common.print_json(_eval_json(ev, queued))
        return
    _print_eval(ev)
    if queued is not None:
        common.out.print(f"Queued {queued} failed held-out input(s) for review (tag: hard)")


def compare_cmd(
    task: Annotated[str, typer.Option("--task", "-t")],
    a: Annotated[str, typer.Argument(help="Model A: base, a task name or T@N.")],
    b: Annotated[str, typer.Argument(help="Model B: base, a task name or T@N.")],
    split: Split = "test",
    snapshot: Snapshot = None,
    rerun: Rerun = False,
    batch_size: BatchSize = GENERATE_BATCH,
    max_new_tokens: MaxNewTokens = None,
    base_model: BaseModel = None,
    as_json: AsJson = False,
) -> None:
    """Compare two models on the same records: paired differences, McNemar, slices, latency."""
    from whetstone.evaluate.compare import compare

    p = common.project()
    c = compare(
        p,
        task,
        a,
        b,
        split,
        snapshot,
        reuse=not rerun,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        base_model=base_model,
    )
    if as_json:
        common.print_json(_compare_json(c))
        return
    _print_compare(c)


# ---------------------------------------------------------------- output


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _print_eval(ev: Evaluation) -> None:
    from rich.table import Table

    table = Table(
        title=f"{ev.model} on {ev.task} ({ev.split}, snapshot {ev.snapshot_id}, n={ev.n})"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for name, v in ev.metrics.items():
        label = f"[bold]{name}[/bold]" if name == ev.main_metric else name
        table.add_row(label, _fmt(v["value"]), f"{_fmt(v['low'])} – {_fmt(v['high'])}")
    common.out.print(table)
    lat = ev.info.get("latency_ms", {})
    budget = ev.info.get("max_new_tokens")
    hit = ev.info.get("hit_budget")
    common.out.print(
        f"latency p50 {_fmt(lat.get('p50'), 1)} ms · p95 {_fmt(lat.get('p95'), 1)} ms · "
        f"{_fmt(ev.info.get('output_tokens_mean'), 1)} output tokens per request · "
        f"budget {budget} tokens" + ("" if hit is None else f", {hit} answer(s) reached it")
    )
    if ev.reused:
        common.out.print(
            f"[dim]stored evaluation {ev.id} of {ev.created_at:%Y-%m-%d %H:%M} reused: same "
            "model, records and settings (--rerun runs it again)[/dim]"
        )
    conf = ev.info.get("confusion")
    if conf:
        _print_confusion(conf)
    cal = ev.info.get("calibration")
    if cal and cal.get("ece") is not None:
        common.out.print(
            f"calibration: expected calibration error {cal['ece']:.3f} over {cal['n']} answers "
            f"({len(cal['bins'])} equal-width bins of exp(confidence); 0 = calibrated)"
        )
    common.out.print(f"stored as evaluation {ev.id}")


def _print_confusion(conf: dict[str, Any]) -> None:
    from rich.table import Table

    cols = [*conf["labels"], "(none)"]
    table = Table(title="confusion (rows: reference, columns: answer)")
    table.add_column("")
    for c in cols:
        table.add_column(c, justify="right")
    for ref, row in conf["matrix"].items():
        table.add_row(ref, *(str(row.get(c, 0)) for c in cols))
    common.out.print(table)
    if conf["unmapped_count"]:
        examples = ", ".join(repr(x) for x in conf["unmapped_examples"])
        common.out.print(
            f"{conf['unmapped_count']} answer(s) named no label (counted wrong), e.g. {examples}",
            markup=False,
        )


def _print_compare(c: Comparison) -> None:
    from rich.table import Table

    table = Table(title=f"A = {c.a.model}  vs  B = {c.b.model}  ({c.task}, n={len(c.record_ids)})")
    for col in ("metric", "A", "B", "A − B", "95% CI", "McNemar p"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for name, v in c.metrics.items():
        label = f"[bold]{name}[/bold]" if name == c.main_metric else name
        mc = v["mcnemar"]
        table.add_row(
            label,
            _fmt(v["a"]),
            _fmt(v["b"]),
            f"{v['diff']:+.3f}",
            f"{v['low']:+.3f} – {v['high']:+.3f}",
            _fmt(mc["p_value"]) if mc else "",
        )
    common.out.print(table)
    if c.slices:
        st = Table(title=f"slices ({c.main_metric})")
        for col in ("slice", "n", "A", "B", "A − B", "95% CI"):
            st.add_column(col, justify="left" if col == "slice" else "right")
        for s in c.slices:
            st.add_row(
                s.name,
                str(s.n),
                _fmt(s.a),
                _fmt(s.b),
                f"{s.diff:+.3f}",
                f"{s.low:+.3f} – {s.high:+.3f}",
            )
        common.out.print(st)
    ct = Table(title="cost per request")
    for col in ("model", "latency p50 ms", "latency p95 ms", "output tokens"):
        ct.add_column(col, justify="left" if col == "model" else "right")
    for side, ev in (("a", c.a), ("b", c.b)):
        k = c.cost[side]
        ct.add_row(
            ev.model,
            _fmt(k["latency_p50_ms"], 1),
            _fmt(k["latency_p95_ms"], 1),
            _fmt(k["output_tokens_mean"], 1),
        )
    common.out.print(ct)


def _eval_json(ev: Evaluation, queued: int | None) -> dict[str, Any]:
    return {
        "id": ev.id,
        "task": ev.task,
        "model": ev.model,
        "snapshot": ev.snapshot_id,
        "split": ev.split,
        "n": ev.n,
        "main_metric": ev.main_metric,
        "metrics": ev.metrics,
        "info": ev.info,
        "reused": ev.reused,
        "queued_failures": queued,
    }


def _compare_json(c: Comparison) -> dict[str, Any]:
    return {
        "task": c.task,
        "a": {"model": c.a.model, "evaluation": c.a.id},
        "b": {"model": c.b.model, "evaluation": c.b.id},
        "n": len(c.record_ids),
        "main_metric": c.main_metric,
        "metrics": c.metrics,
        "slices": [s.__dict__ for s in c.slices],
        "cost": c.cost,
    }
