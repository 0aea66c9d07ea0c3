"""The error-analysis report: one self-contained HTML file per adapter version.

It answers "is this adapter better, where is it worse, and how does it fail?": learning
curves of its run, its metrics with 95% intervals beside the production model's (or the base
model's) on the same records, a confusion matrix (classify) or per-field F1 (extract), the
per-slice differences, and its worst failures grouped by error type. A classify report also
shows a reliability diagram (calibration of the answers' confidences) and the embedding
baseline (`evaluate.baseline`) beside candidate and baseline, flagging a candidate that does
not beat it. Plots are matplotlib
PNGs, embedded as data: URIs and also saved beside the HTML file. All record text is escaped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whetstone import pages
from whetstone.evaluate import metrics as m
from whetstone.plots import figure_png, read_jsonl_rows, training_curves
from whetstone.project import Project
from whetstone.records import Kind, Task, input_text, utcnow
from whetstone.util import atomic_write_bytes, atomic_write_text, check_target, user_target

if TYPE_CHECKING:
    from whetstone.evaluate.compare import Comparison
    from whetstone.evaluate.gate import GateConfig
    from whetstone.evaluate.runner import Evaluation
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


def run_history(project: Project, av: AdapterVersion) -> list[dict[str, Any]]:
    """The rows of the adapter's training run's metrics.jsonl (empty when there is none)."""
    path = av.info.get("metrics")
    candidates = [Path(path)] if path else []
    if av.run_id:
        candidates.append(project.home / "runs" / av.run_id / "metrics.jsonl")
    for p in candidates:
        if p.is_file():
            return read_jsonl_rows(p)
    return []


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
    return figure_png(draw, (side + 1, side))


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

    return figure_png(draw, (8, 1.8 + 0.45 * len(names)))


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

    return figure_png(draw, (8, 1.4 + 0.4 * len(slices)))


def plot_reliability(curves: dict[str, dict[str, Any]]) -> bytes | None:
    """Reliability diagram: per confidence bin, each model's accuracy against its mean
    probability (on the diagonal when calibrated). `curves`: label -> `metrics.calibration`."""
    shown = {k: v for k, v in curves.items() if v.get("ece") is not None}
    if not shown:
        return None

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        colors = ("tab:blue", "tab:gray", "tab:orange")  # candidate, baseline, embedding
        ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=0.8, label="calibrated")
        for (label, cal), color in zip(shown.items(), colors[: len(shown)], strict=True):
            pts = [(b["confidence"], b["accuracy"]) for b in cal["bins"] if b["n"]]
            ax.plot(
                *zip(*pts, strict=True), "o-", color=color, label=f"{label} (ECE {cal['ece']:.3f})"
            )
        ax.set(
            xlim=(0, 1.02),
            ylim=(-0.02, 1.02),
            xlabel="mean probability of the answer (bin)",
            ylabel="accuracy",
            title="reliability diagram",
        )
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)

    return figure_png(draw, (5.5, 5))


def _model_label(model: str) -> str:
    """A legend's name for a model: a base model given as a folder shows the folder's name."""
    if model.startswith("base:") and "/" in model:
        return "base:" + Path(model[5:]).name
    return _short(model, 40)


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------- what the page shows


def _num(x: float | None, digits: int = 3, signed: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _tone(x: float) -> str:
    """The class a difference is shown in: good above zero, bad below."""
    return "good" if x > 0 else "bad" if x < 0 else ""


def _metric_rows(c: Comparison) -> list[dict[str, Any]]:
    rows = []
    for name, d in c.metrics.items():
        a, b = c.a.metrics.get(name, {}), c.b.metrics.get(name, {})
        mc = d.get("mcnemar")
        rows.append(
            {
                "name": name,
                "main": name == c.main_metric,
                "a": {k: _num(a.get(k)) for k in ("value", "low", "high")},
                "b": {k: _num(b.get(k)) for k in ("value", "low", "high")},
                "diff": {
                    "value": _num(d["diff"], signed=True),
                    "low": _num(d["low"], signed=True),
                    "high": _num(d["high"], signed=True),
                },
                # Good only when the whole interval is above zero, bad when it is below.
                "cls": "good" if d["low"] > 0 else "bad" if d["high"] < 0 else "",
                "p": _num(mc["p_value"]) if mc else "",
            }
        )
    return rows


def _slice_rows(c: Comparison) -> list[list[Any]]:
    return [
        [
            s.name,
            str(s.n),
            _num(s.a),
            _num(s.b),
            {"text": _num(s.diff, signed=True), "class": _tone(s.diff)},
            f"[{_num(s.low, signed=True)}, {_num(s.high, signed=True)}]",
        ]
        for s in sorted(c.slices, key=lambda s: s.diff)
    ]


def _failure_groups(groups: dict[str, list[Failure]]) -> list[dict[str, Any]]:
    return [
        {
            "kind": kind,
            "count": len(items),
            "human": any(f.human for f in items),
            "shown": [
                {
                    "record_id": f.record_id,
                    "input": f.input,
                    "expected": f.expected,
                    "got": f.got,
                    "score": _num(f.score, 2),
                }
                for f in items[:FAILURES_PER_GROUP]
            ],
        }
        for kind, items in groups.items()
    ]


def _gate_view(gate: dict[str, Any] | None) -> dict[str, Any] | None:
    if not gate:
        return None
    return {
        "verdict": "passed" if gate.get("passed") else "refused",
        "baseline": gate.get("baseline"),
        "decided_at": gate.get("decided_at"),
        "rules": [
            [r["name"], "pass" if r["passed"] else {"text": "FAIL", "class": "bad"}, r["message"]]
            for r in gate.get("rules", [])
        ],
    }


# ---------------------------------------------------------------- the report


# The figures a report may save beside its page, as `<task>-<version>-<name>.png`.
PNG_NAMES = ("curves", "confusion", "reliability", "fields", "slices", "cascade")


def default_path(project: Project, av: AdapterVersion) -> Path:
    return project.home / "reports" / f"{av.task}-{av.version}" / "report.html"


def _facts(task: Task, av: AdapterVersion, c: Comparison) -> list[list[str]]:
    """The report's first table: what was compared, on what."""
    return [
        ["task", f"{task.name} ({task.kind.value}, main metric {c.main_metric})"],
        ["stage", av.stage],
        ["method", av.method],
        ["base model", av.base_model],
        ["snapshot", str(c.a.snapshot_id)],
        ["split", f"{c.a.split}, {len(c.record_ids)} records"],
        ["training run", av.run_id or "–"],
        ["registered", av.created_at.isoformat()[:19]],
        ["evaluations", f"candidate {c.a.id}, baseline {c.b.id}"],
        *([["answer budget", budget]] if (budget := _budget_fact(c)) else []),
    ]


def _budget_fact(c: Comparison) -> str | None:
    """The decode budget both answered under and how many answers ran into it (an answer cut
    there is likely wrong for its length, not its content); None for label answers."""
    parts = []
    for role, ev in (("candidate", c.a), ("baseline", c.b)):
        limit, hit = ev.info.get("max_new_tokens"), ev.info.get("hit_budget")
        if limit is None or hit is None or ev.info.get("answered_by") == "label_likelihood":
            continue
        parts.append(f"{role} {hit} of {ev.n} answers reached {limit} tokens")
    return "; ".join(parts) or None


def _calibration_on(ev: Evaluation, ids: set[int]) -> dict[str, Any]:
    preds = [p for p in ev.predictions if p.record_id in ids]
    return m.calibration(
        [p.confidence for p in preds], [p.scores.get("accuracy", 0.0) for p in preds]
    )


def _classify_view(
    project: Project, c: Comparison, cfg: GateConfig, figure: Callable[..., dict[str, str]]
) -> dict[str, Any]:
    """A classify report's calibration (reliability diagram, ECE) of candidate, baseline and
    the embedding baseline, the three main metrics side by side, and whether the candidate
    beats the embedding baseline (fitted now unless stored; a report shows it whatever the
    gate's `embedding_baseline` setting, which only decides whether a miss refuses)."""
    from whetstone.errors import InvalidInput
    from whetstone.evaluate.baseline import BASELINE_MODEL, beats, embedding_baseline

    shared = set(c.record_ids)
    roles: list[tuple[str, Evaluation]] = [("candidate", c.a), ("baseline", c.b)]
    verdict, problem = None, None
    try:
        emb = embedding_baseline(
            project, c.task, str(c.a.snapshot_id), c.a.split, resamples=cfg.resamples, seed=cfg.seed
        )
        verdict = beats(c.a, emb)
        roles.append(("embedding baseline", emb))
    except InvalidInput as e:
        problem = str(e)
    cals = {role: _calibration_on(ev, shared) for role, ev in roles}
    rows = []
    for role, ev in roles:
        main = ev.metrics.get(c.main_metric, {})
        flagged = role == "candidate" and verdict is not None and not verdict["beats"]
        rows.append(
            [
                role,
                _model_label(ev.model),
                {"text": _num(main.get("value")), "class": "bad" if flagged else ""},
                f"[{_num(main.get('low'))}, {_num(main.get('high'))}]",
                _num(cals[role]["ece"]),
            ]
        )
    if verdict is not None:
        ok = verdict["beats"]
        verdict = {
            "class": "good" if ok else "bad",
            "text": (
                f"{c.a.model} {'beats' if ok else 'does not beat'} the embedding baseline "
                f"{BASELINE_MODEL}: its {c.main_metric} lower 95% bound "
                f"{verdict['candidate_low']:.3f} is {'above' if ok else 'not above'} the "
                f"baseline's {verdict['baseline']:.3f}"
            ),
        }
    curves = {f"{role} {_model_label(ev.model)}": cals[role] for role, ev in roles}
    return {
        "rows": rows,
        "verdict": verdict,
        "problem": problem,
        "reliability": figure(
            plot_reliability(curves),
            "reliability",
            "reliability diagram",
            "No reliability diagram: the answers were stored without confidences.",
        ),
    }


def _cascade_view(
    project: Project, av: AdapterVersion, figure: Callable[..., dict[str, str]]
) -> dict[str, Any] | None:
    """The calibrated cascade (`whetstone route calibrate`), when the version has one: its
    threshold, escalation, score against hero and workhorse, cost, and the curve's PNG (from
    the version's report folder, where calibration drew it)."""
    cal = av.info.get("cascade")
    if not cal:
        return None
    png = default_path(project, av).parent / f"{av.task}-{av.version}-cascade.png"
    target = (
        f"{cal['target']:.0%} of the hero's score"
        if cal.get("target") is not None
        else f"at most {cal.get('max_escalation', 0):.0%} escalated"
    )
    rows = [
        ["threshold", f"{cal['threshold']:.4g} (escalate below this confidence)"],
        ["target", target + ("" if cal.get("feasible", True) else " (out of reach: closest)")],
        ["escalated", f"{cal['escalation']:.1%} of {cal.get('n', '?')} records"],
        [
            f"cascade {cal.get('metric', '')}",
            f"{_num(cal['score'])} [{_num(cal.get('score_low'))}, {_num(cal.get('score_high'))}]",
        ],
        ["hero only", _num(cal["hero_score"])],
        ["workhorse only", _num(cal["workhorse_score"])],
        ["cost", f"{cal.get('cost', 0):.1%} of hero-only (by {cal.get('cost_basis', 'money')})"],
        ["hero", str(cal.get("hero_model", ""))],
        ["calibrated", str(cal.get("calibrated_at", ""))[:19]],
    ]
    shown = figure(
        png.read_bytes() if png.is_file() else None,
        "cascade",
        "cascade quality-cost curve",
        "No curve: its PNG is gone (run whetstone route calibrate again).",
    )
    return {"rows": rows, "figure": shown}


def _cost_rows(c: Comparison) -> list[list[str]]:
    """Latency and answer length of candidate and baseline."""
    return [
        [
            ev.model,
            _num(c.cost[k]["latency_p50_ms"], 1),
            _num(c.cost[k]["latency_p95_ms"], 1),
            _num(c.cost[k]["output_tokens_mean"], 1),
        ]
        for k, ev in (("a", c.a), ("b", c.b))
    ]


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

    def figure(png: bytes | None, name: str, alt: str, missing: str) -> dict[str, str]:
        if png is None:
            return {"missing": missing}
        atomic_write_bytes(folder / f"{stem}-{name}.png", png)
        return {"src": pages.png_data_uri(png), "name": f"{stem}-{name}.png", "alt": alt}

    curves = figure(
        training_curves(run_history(project, av), task.main_metric),
        "curves",
        "learning curves",
        "No training curves: the adapter's run has no metrics.jsonl.",
    )
    shared = set(c.record_ids)
    preds = [p for p in c.a.predictions if p.record_id in shared]
    unmapped = None
    if task.kind == Kind.classify:
        conf = m.confusion(task, [p.prediction for p in preds], [p.reference for p in preds])
        detail_title = "Confusion matrix"
        detail = figure(plot_confusion(conf), "confusion", "confusion matrix", "")
        if conf["unmapped_count"]:
            unmapped = {
                "count": conf["unmapped_count"],
                "examples": [repr(x) for x in conf["unmapped_examples"]],
            }
    elif task.kind == Kind.extract:
        detail_title = "Per-field F1"
        detail = figure(plot_fields(c), "fields", "per-field F1", "No fields in the references.")
    else:
        detail_title, detail = "", {}
    classify = _classify_view(project, c, cfg, figure) if task.kind == Kind.classify else None
    groups = _failure_groups(failures(project, task, c))
    page = pages.render(
        "report.html",
        name=av.name,
        baseline=c.b.model,
        candidate=c.a.model,
        written=utcnow().isoformat()[:19],
        facts=_facts(task, av, c),
        curves=curves,
        metrics=_metric_rows(c),
        cost=_cost_rows(c),
        detail_title=detail_title,
        detail=detail,
        unmapped=unmapped,
        classify=classify,
        main_metric=c.main_metric,
        slices_figure=figure(
            plot_slices(c),
            "slices",
            "per-slice differences",
            "No slices: the records have no tags.",
        ),
        slices=_slice_rows(c),
        failures=groups,
        failure_summary=[
            [g["kind"], str(g["count"]), "human" if g["human"] else "automatic"] for g in groups
        ],
        n_failed=sum(g["count"] for g in groups),
        n_compared=len(c.record_ids),
        per_group=FAILURES_PER_GROUP,
        text_limit=TEXT_LIMIT,
        gate=_gate_view(av.info.get("gate")),
        cascade=_cascade_view(project, av, figure),
    )
    atomic_write_text(path, page)
    return path
