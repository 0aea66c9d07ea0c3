"""The error-analysis report: one self-contained HTML file per adapter version.

It answers "is this adapter better, where is it worse, and how does it fail?": learning
curves of its run, its metrics with 95% intervals beside the production model's (or the base
model's) on the same records, a confusion matrix (classify) or per-field F1 (extract), the
per-slice differences, and its worst failures grouped by error type. Plots are matplotlib
PNGs, embedded as data: URIs and also saved beside the HTML file. All record text is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Any

from whetstone.evaluate import metrics as m
from whetstone.project import Project
from whetstone.records import Kind, Task, input_text, utcnow
from whetstone.util import atomic_write_bytes, atomic_write_text, check_target, user_target

if TYPE_CHECKING:
    from whetstone.evaluate.compare import Comparison
    from whetstone.evaluate.gate import GateConfig
    from whetstone.registry import AdapterVersion

FAILURES_PER_GROUP = 10
TEXT_LIMIT = 600  # characters of one input/answer shown; the rest is cut with a mark
MAX_SLICES_PLOTTED = 40


# ---------------------------------------------------------------- error types


def error_type(task: Task, prediction: str, reference: str, labels: list[str] | None = None) -> str:
    """Why one answer is wrong, from the answer itself:
    extract: invalid_json, schema_invalid, missing_field, extra_field, wrong_value;
    classify: unmapped_label (names no label), wrong_label; generate: empty, wrong."""
    if task.kind == Kind.extract:
        ok, obj = m.parse_json(prediction)
        if not ok:
            return "invalid_json"
        if not m.per_example(task, prediction, reference)["schema_valid"]:
            return "schema_invalid"
        got, want = m.present_fields(obj), m.present_fields(m.parse_json(reference)[1])
        if set(want) - set(got):
            return "missing_field"
        if set(got) - set(want):
            return "extra_field"
        return "wrong_value"
    if task.kind == Kind.classify:
        labels = labels if labels is not None else m.labels_of(task, [reference])
        return "unmapped_label" if m.map_label(prediction, labels) is None else "wrong_label"
    return "empty" if not prediction.strip() else "wrong"


@dataclass
class Failure:
    record_id: int
    input: str
    expected: str
    got: str
    error_type: str
    human: bool  # the type is the record's human error_category
    score: float


def failures(project: Project, task: Task, c: Comparison) -> dict[str, list[Failure]]:
    """The candidate's failed records on the compared set, worst first, grouped by error type
    (the record's human `error_category` when it has one), largest group first."""
    main = c.a.main_metric
    preds = [p for p in c.a.predictions if p.record_id in set(c.record_ids)]
    failed = [p for p in preds if p.scores.get(main, 1.0) < 1.0]
    labels = m.labels_of(task, [p.reference for p in preds]) if task.kind == Kind.classify else None
    recs = {
        r.id: r for r in project.store.iter_records(task.name, ids=[p.record_id for p in failed])
    }
    groups: dict[str, list[Failure]] = {}
    for p in sorted(failed, key=lambda p: (p.scores.get(main, 0.0), p.record_id)):
        rec = recs.get(p.record_id)
        human = rec.error_category if rec is not None else None
        kind = human or error_type(task, p.prediction, p.reference, labels)
        groups.setdefault(kind, []).append(
            Failure(
                record_id=p.record_id,
                input=input_text(rec.input) if rec is not None else "",
                expected=p.reference,
                got=p.prediction,
                error_type=kind,
                human=human is not None,
                score=p.scores.get(main, 0.0),
            )
        )
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])))


# ---------------------------------------------------------------- plots


def _figure_png(draw: Callable[[Any], None], size: tuple[float, float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=size, dpi=100)
    try:
        draw(fig)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def run_history(project: Project, av: AdapterVersion) -> list[dict[str, Any]]:
    """The rows of the adapter's training run's metrics.jsonl (empty when there is none)."""
    path = av.info.get("metrics")
    candidates = [Path(path)] if path else []
    if av.run_id:
        candidates.append(project.home / "runs" / av.run_id / "metrics.jsonl")
    for p in candidates:
        if p.is_file():
            rows = []
            for line in p.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by a killed run
            return rows
    return []


def plot_curves(rows: list[dict[str, Any]], metric: str) -> bytes | None:
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train" and "loss" in r]
    val = [r for r in rows if r.get("kind") == "validation"]
    vloss = [(r["step"], r["val_loss"]) for r in val if r.get("val_loss") is not None]
    vmetric = [(r["step"], r["metric"]) for r in val if r.get("metric") is not None]
    if not (train or vloss or vmetric):
        return None

    def draw(fig: Any) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        if train:
            ax1.plot(*zip(*train, strict=True), color="tab:blue", alpha=0.8, label="train loss")
        if vloss:
            ax1.plot(*zip(*vloss, strict=True), "o-", color="tab:orange", label="validation loss")
        ax1.set(xlabel="step", ylabel="loss", title="loss")
        ax1.legend()
        ax1.grid(alpha=0.3)
        if vmetric:
            ax2.plot(*zip(*vmetric, strict=True), "s-", color="tab:green")
            ax2.set_ylim(-0.02, 1.02)
        else:
            ax2.text(0.5, 0.5, "no validation metric logged", ha="center", va="center")
        ax2.set(xlabel="step", ylabel=metric, title=f"validation {metric}")
        ax2.grid(alpha=0.3)

    return _figure_png(draw, (10, 3.8))


def plot_confusion(conf: dict[str, Any]) -> bytes:
    rows = list(conf["matrix"])
    cols = [*conf["labels"], "(none)"]
    counts = [[conf["matrix"][r].get(c, 0) for c in cols] for r in rows]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        im = ax.imshow(counts, cmap="Blues")
        peak = max((max(r) for r in counts), default=0)
        for i, row in enumerate(counts):
            for j, v in enumerate(row):
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    color="white" if peak and v > peak / 2 else "black",
                )
        ax.set_xticks(range(len(cols)), [_short(c) for c in cols], rotation=35, ha="right")
        ax.set_yticks(range(len(rows)), [_short(r) for r in rows])
        ax.set(xlabel="answer", ylabel="reference", title="confusion matrix (candidate)")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)

    side = max(4.0, 0.6 * len(cols) + 2.5)
    return _figure_png(draw, (side + 1, side))


def plot_fields(c: Comparison) -> bytes | None:
    names = [k for k in c.metrics if k.startswith("f1[")]
    if not names:
        return None
    fields = [k[3:-1] for k in names]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        ys = range(len(names))
        ax.barh(
            [y + 0.2 for y in ys],
            [c.metrics[k]["a"] for k in names],
            height=0.4,
            color="tab:blue",
            label=f"candidate {c.a.model}",
        )
        ax.barh(
            [y - 0.2 for y in ys],
            [c.metrics[k]["b"] for k in names],
            height=0.4,
            color="tab:gray",
            label=f"baseline {_model_label(c.b.model)}",
        )
        ax.set_yticks(list(ys), [_short(f) for f in fields])
        ax.invert_yaxis()
        ax.set(xlim=(0, 1.05), xlabel="F1", title="per-field F1")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=2, frameon=False)
        ax.grid(axis="x", alpha=0.3)

    return _figure_png(draw, (8, 1.8 + 0.45 * len(names)))


def plot_slices(c: Comparison) -> bytes | None:
    slices = sorted(c.slices, key=lambda s: s.diff)[:MAX_SLICES_PLOTTED]
    if not slices:
        return None

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        ys = list(range(len(slices)))
        diffs = [s.diff for s in slices]
        err = [[s.diff - s.low for s in slices], [s.high - s.diff for s in slices]]
        colors = ["tab:red" if d < 0 else "tab:green" for d in diffs]
        ax.barh(ys, diffs, xerr=err, color=colors, alpha=0.8, capsize=3)
        ax.axvline(0, color="black", linewidth=0.8)
        lo = min(0.0, *(s.low for s in slices)) - 0.08
        hi = max(0.0, *(s.high for s in slices)) + 0.08
        ax.set_xlim(lo, hi)
        for y, s in zip(ys, slices, strict=True):
            # The value beside the bar: a zero difference has no bar to see.
            ax.annotate(
                f"{s.diff:+.2f}",
                (s.diff, y),
                xytext=(4 if s.diff >= 0 else -4, 6),
                textcoords="offset points",
                ha="left" if s.diff >= 0 else "right",
                fontsize=8,
            )
        ax.set_yticks(ys, [f"{_short(s.name)} (n={s.n})" for s in slices])
        ax.invert_yaxis()
        ax.set(
            xlabel=f"{c.main_metric}: candidate − baseline (95% CI)", title="per-slice difference"
        )
        ax.grid(axis="x", alpha=0.3)

    return _figure_png(draw, (8, 1.4 + 0.4 * len(slices)))


def _model_label(model: str) -> str:
    """A legend's name for a model: a base model given as a folder shows the folder's name."""
    if model.startswith("base:") and "/" in model:
        return "base:" + Path(model[5:]).name
    return _short(model, 40)


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- HTML


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _cut(text: str) -> str:
    if len(text) <= TEXT_LIMIT:
        return _e(text)
    return (
        _e(text[:TEXT_LIMIT])
        + f' <span class="muted">[… {len(text) - TEXT_LIMIT} more characters]</span>'
    )


def _num(x: float | None, digits: int = 3, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _img(png: bytes, name: str, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}"><figcaption>{_e(name)}</figcaption></figure>'


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _metric_table(c: Comparison) -> str:
    rows = []
    for name, d in c.metrics.items():
        a, b = c.a.metrics.get(name, {}), c.b.metrics.get(name, {})
        mc = d.get("mcnemar")
        label = f"<strong>{_e(name)}</strong>" if name == c.main_metric else _e(name)
        cls = "good" if d["low"] > 0 else "bad" if d["high"] < 0 else ""
        rows.append(
            [
                label,
                f"{_num(a.get('value'))} <span class=muted>[{_num(a.get('low'))}, {_num(a.get('high'))}]</span>",
                f"{_num(b.get('value'))} <span class=muted>[{_num(b.get('low'))}, {_num(b.get('high'))}]</span>",
                f'<span class="{cls}">{_num(d["diff"], signed=True)}</span> '
                f"<span class=muted>[{_num(d['low'], signed=True)}, {_num(d['high'], signed=True)}]</span>",
                _num(mc["p_value"]) if mc else "",
            ]
        )
    head = [
        "metric",
        f"candidate {_e(c.a.model)} (95% CI)",
        f"baseline {_e(c.b.model)} (95% CI)",
        "difference (95% CI)",
        "McNemar p",
    ]
    return _table(head, rows, "metrics")


def _slice_table(c: Comparison) -> str:
    rows = [
        [
            _e(s.name),
            str(s.n),
            _num(s.a),
            _num(s.b),
            f'<span class="{"bad" if s.diff < 0 else "good" if s.diff > 0 else ""}">{_num(s.diff, signed=True)}</span>',
            f"[{_num(s.low, signed=True)}, {_num(s.high, signed=True)}]",
        ]
        for s in sorted(c.slices, key=lambda s: s.diff)
    ]
    return _table(["slice", "n", "candidate", "baseline", "difference", "95% CI"], rows)


def _failure_section(groups: dict[str, list[Failure]], total: int) -> str:
    if not groups:
        return "<p>The candidate answered every compared record correctly.</p>"
    n_failed = sum(len(g) for g in groups.values())
    parts = [
        f"<p>{n_failed} of {total} records failed. Worst first within each error type; "
        f"at most {FAILURES_PER_GROUP} shown per type.</p>"
    ]
    summary = [
        [_e(k), str(len(v)), "human" if any(f.human for f in v) else "automatic"]
        for k, v in groups.items()
    ]
    parts.append(_table(["error type", "records", "from"], summary))
    for kind, items in groups.items():
        rows = [
            [
                str(f.record_id),
                f"<pre>{_cut(f.input)}</pre>",
                f"<pre>{_cut(f.expected)}</pre>",
                f"<pre>{_cut(f.got)}</pre>",
                _num(f.score, 2),
            ]
            for f in items[:FAILURES_PER_GROUP]
        ]
        parts.append(f"<h3>{_e(kind)} <span class=muted>({len(items)})</span></h3>")
        parts.append(_table(["record", "input", "expected", "got", "score"], rows, "failures"))
    return "\n".join(parts)


def _gate_section(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "<p>Not gated yet (run <code>whetstone promote</code>).</p>"
    verdict = "passed" if gate.get("passed") else "refused"
    rows = [
        [_e(r["name"]), "pass" if r["passed"] else "<span class=bad>FAIL</span>", _e(r["message"])]
        for r in gate.get("rules", [])
    ]
    return (
        f"<p>Gate {verdict} against {_e(gate.get('baseline'))} on {_e(gate.get('decided_at'))}.</p>"
        + _table(["rule", "result", "numbers"], rows)
    )


# ---------------------------------------------------------------- the report


# The figures a report may save beside its page, as `<task>-<version>-<name>.png`.
PNG_NAMES = ("curves", "confusion", "fields", "slices")


def default_path(project: Project, av: AdapterVersion) -> Path:
    return project.home / "reports" / f"{av.task}-{av.version}" / "report.html"


def write_report(
    project: Project,
    ref: str,
    out: str | Path | None = None,
    config: GateConfig | None = None,
    baseline: str | None = None,
    *,
    force: bool = False,
) -> Path:
    """Write the report of adapter `ref` ("T@N", or "T" for its production version) and its
    PNGs; returns the HTML path. Evaluations are reused when stored, else run (as the gate does).
    `baseline` is what it is compared with (default: the production adapter, or the base model
    when `ref` is in production); after a promotion, pass what the gate compared it with.
    An `out` that exists (the page or a PNG beside it) is replaced only with `force`."""
    from whetstone import registry
    from whetstone.evaluate.gate import baseline_for, gate_config, paired_comparison

    av = registry.get(project, ref)
    task = project.task(av.task)
    stem = f"{av.task}-{av.version}"
    path = Path(out) if out is not None else default_path(project, av)
    folder = path.parent
    if out is not None:  # the default, under .whetstone/reports/, is Whetstone's to rewrite
        for target in [path, *(folder / f"{stem}-{name}.png" for name in PNG_NAMES)]:
            check_target(target, folder=False, replace=user_target(force))
    cfg = config or gate_config(project)
    c = paired_comparison(project, av, baseline or baseline_for(project, av), cfg)
    folder.mkdir(parents=True, exist_ok=True)

    def figure(png: bytes | None, name: str, alt: str, missing: str) -> str:
        if png is None:
            return f"<p class=muted>{_e(missing)}</p>"
        atomic_write_bytes(folder / f"{stem}-{name}.png", png)
        return _img(png, f"{stem}-{name}.png", alt)

    curves = figure(
        plot_curves(run_history(project, av), task.main_metric),
        "curves",
        "learning curves",
        "No training curves: the adapter's run has no metrics.jsonl.",
    )
    shared = set(c.record_ids)
    preds = [p for p in c.a.predictions if p.record_id in shared]
    if task.kind == Kind.classify:
        conf = m.confusion(task, [p.prediction for p in preds], [p.reference for p in preds])
        detail_title = "Confusion matrix"
        detail = figure(plot_confusion(conf), "confusion", "confusion matrix", "")
        if conf["unmapped_count"]:
            ex = ", ".join(_e(repr(x)) for x in conf["unmapped_examples"])
            detail += f"<p>{conf['unmapped_count']} answer(s) named no label, e.g. {ex}</p>"
    elif task.kind == Kind.extract:
        detail_title = "Per-field F1"
        detail = figure(plot_fields(c), "fields", "per-field F1", "No fields in the references.")
    else:
        detail_title, detail = "", ""
    slices = figure(
        plot_slices(c), "slices", "per-slice differences", "No slices: the records have no tags."
    ) + (_slice_table(c) if c.slices else "")
    cost = _table(
        ["model", "latency p50 ms", "latency p95 ms", "output tokens"],
        [
            [
                _e(ev.model),
                _num(c.cost[k]["latency_p50_ms"], 1),
                _num(c.cost[k]["latency_p95_ms"], 1),
                _num(c.cost[k]["output_tokens_mean"], 1),
            ]
            for k, ev in (("a", c.a), ("b", c.b))
        ],
    )
    detail_section = f"<section><h2>{detail_title}</h2>{detail}</section>" if detail_title else ""
    facts = [
        ["task", f"{_e(task.name)} ({_e(task.kind.value)}, main metric {_e(c.main_metric)})"],
        ["stage", _e(av.stage)],
        ["method", _e(av.method)],
        ["base model", _e(av.base_model)],
        ["snapshot", _e(c.a.snapshot_id)],
        ["split", f"{_e(c.a.split)}, {len(c.record_ids)} records"],
        ["training run", _e(av.run_id or "–")],
        ["registered", _e(av.created_at.isoformat()[:19])],
        ["evaluations", f"candidate {_e(c.a.id)}, baseline {_e(c.b.id)}"],
    ]
    body = "\n".join(
        [
            f"<section><h2>Summary</h2>{_table(['', ''], facts, 'facts')}</section>",
            f"<section><h2>Learning curves</h2>{curves}</section>",
            f"<section><h2>Metrics against {_e(c.b.model)}</h2>{_metric_table(c)}{cost}</section>",
            detail_section,
            f"<section><h2>Per-slice differences</h2>{slices}</section>",
            f"<section><h2>Worst failures by error type</h2>"
            f"{_failure_section(failures(project, task, c), len(c.record_ids))}</section>",
            f"<section><h2>Promotion gate</h2>{_gate_section(av.info.get('gate'))}</section>",
        ]
    )
    page = PAGE.substitute(
        title=_e(f"Whetstone report: {av.name}"),
        heading=_e(av.name),
        subtitle=_e(f"against {c.b.model} · written {utcnow().isoformat()[:19]} UTC"),
        body=body,
    )
    atomic_write_text(path, page)
    return path


# One page, no external resources: the CSS is inline and every image is a data: URI, so the
# file can be mailed or attached to a ticket as it is.
PAGE = Template("""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232a;
         max-width: 1150px; margin: 2rem auto; padding: 0 1rem; }
  h1 { margin-bottom: 0; } h2 { border-bottom: 1px solid #d6dbe0; padding-bottom: .2rem; }
  .subtitle, .muted { color: #66707a; }
  section { margin-bottom: 2rem; }
  table { border-collapse: collapse; margin: .6rem 0 1rem; }
  th, td { border: 1px solid #d6dbe0; padding: .25rem .5rem; vertical-align: top; text-align: left; }
  th { background: #f1f4f7; }
  table.metrics td:not(:first-child) { text-align: right; white-space: nowrap; }
  table.facts th { display: none; }
  table.failures td { max-width: 22rem; }
  pre { margin: 0; white-space: pre-wrap; word-break: break-word; font: 12px/1.35 ui-monospace, monospace; }
  figure { margin: .5rem 0; } figure img { max-width: 100%; }
  figcaption { color: #66707a; font-size: 12px; }
  .good { color: #1a7f37; font-weight: 600; } .bad { color: #cf222e; font-weight: 600; }
</style>
</head>
<body>
<h1>$heading</h1>
<p class="subtitle">$subtitle</p>
$body
</body>
</html>
""")
