"""Compare two models on the same records: paired bootstrap of every metric's difference,
McNemar for 0/1 metrics, per-slice deltas, latency and output length."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from whetstone.errors import InvalidInput
from whetstone.evaluate import metrics as m
from whetstone.evaluate.runner import Evaluation, choose_snapshot, evaluate
from whetstone.evaluate.stats import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    mcnemar,
    paired_bootstrap,
    percentile,
)
from whetstone.models.generate import GENERATE_BATCH
from whetstone.project import Project
from whetstone.records import Kind, Task
from whetstone.tables import Table


@dataclass
class SliceDelta:
    name: str  # "tag=hard", "label=positive", "field=city"
    n: int
    a: float
    b: float
    diff: float
    low: float
    high: float


@dataclass
class Comparison(Table):
    task: str
    a: Evaluation
    b: Evaluation
    record_ids: list[int]
    main_metric: str
    # name -> {a, b, diff, low, high, p_value, mcnemar (0/1 metrics only, else None)}
    metrics: dict[str, dict[str, Any]]
    slices: list[SliceDelta] = field(default_factory=list)
    # "a"/"b" -> {latency_p50_ms, latency_p95_ms, output_tokens_mean}
    cost: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def main(self) -> dict[str, Any]:
        """The paired difference (a - b) of the main metric with its 95% interval."""
        return self.metrics[self.main_metric]

    def rows(self) -> list[dict[str, Any]]:
        """One row per metric: A, B, the paired difference with its 95% interval, McNemar's
        p for 0/1 metrics (the slices stay in `slices`)."""
        return [
            {
                "metric": name,
                "a": v["a"],
                "b": v["b"],
                "diff": v["diff"],
                "low": v["low"],
                "high": v["high"],
                "p_value": v.get("p_value"),
                "mcnemar_p": v["mcnemar"]["p_value"] if v.get("mcnemar") else None,
                "main": name == self.main_metric,
            }
            for name, v in self.metrics.items()
        ]


def compare(
    project: Project,
    task: str,
    a: str,
    b: str,
    split: str = "test",
    snapshot_id: str | None = None,
    *,
    reuse: bool = True,
    batch_size: int = GENERATE_BATCH,
    max_new_tokens: int | None = None,
    base_model: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    """Compare model `a` with model `b` ("base", "T" or "T@N") on one snapshot split.
    The snapshot is the one given, else the first adapter's own, else the task's latest.
    With `reuse`, a stored evaluation of the same model on the same records with the same
    settings is used instead of running the model again."""
    t = project.task(task)
    first_adapter = next((x for x in (a, b) if x != "base"), "base")
    snap = choose_snapshot(project, task, first_adapter, snapshot_id)
    evs = []
    for model in (a, b):
        ev = evaluate(
            project,
            task,
            model,
            split,
            snap.id,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            base_model=base_model,
            resamples=resamples,
            seed=seed,
            reuse=reuse,
        )
        evs.append(ev)
    return compare_evaluations(project, t, evs[0], evs[1], resamples=resamples, seed=seed)


def compare_evaluations(
    project: Project,
    task: Task,
    ev_a: Evaluation,
    ev_b: Evaluation,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Comparison:
    """Paired statistics over the records both evaluations scored."""
    ids = sorted({p.record_id for p in ev_a.predictions} & {p.record_id for p in ev_b.predictions})
    if not ids:
        raise InvalidInput(f"evaluations {ev_a.id} and {ev_b.id} share no records to compare")
    ca, cb = ev_a.columns(task, ids), ev_b.columns(task, ids)
    pa, pb = ca.point(), cb.point()
    out: dict[str, dict[str, Any]] = {}
    for name in ca.formulas:
        if name not in cb.formulas:
            continue  # e.g. a judge score only one side was given
        d = paired_bootstrap(ca, cb, name, resamples=resamples, seed=seed)
        col = ca.binary.get(name)
        mc = mcnemar(ca.data[col], cb.data[col]) if col and name in cb.binary else None
        out[name] = {"a": pa[name], "b": pb[name], **d, "mcnemar": mc}
    return Comparison(
        task=task.name,
        a=ev_a,
        b=ev_b,
        record_ids=ids,
        main_metric=ca.main,
        metrics=out,
        slices=slice_deltas(
            project, task, ev_a, ev_b, ids, ca.main, resamples=resamples, seed=seed
        ),
        cost={"a": _cost(ev_a, ids), "b": _cost(ev_b, ids)},
    )


def slices_of(project: Project, task: Task, ev: Evaluation, ids: list[int]) -> dict[str, list[int]]:
    """Slice name -> record ids: record tags, the reference label (classify) and the fields
    the reference fills (extract)."""
    out: dict[str, list[int]] = {}
    refs = {p.record_id: p.reference for p in ev.predictions}
    labels = m.labels_of(task, list(refs.values())) if task.kind == Kind.classify else []
    for rec in project.store.iter_records(task.name, ids=ids):
        assert rec.id is not None
        names = [f"tag={tag}" for tag in rec.tags]
        ref = refs[rec.id]
        if task.kind == Kind.classify:
            names.append(f"label={m.map_label(ref, labels) or ref.strip()}")
        elif task.kind == Kind.extract:
            names += [f"field={k}" for k in m.present_fields(m.parse_json(ref)[1])]
        for name in names:
            out.setdefault(name, []).append(rec.id)
    return dict(sorted(out.items()))


def slice_deltas(
    project: Project,
    task: Task,
    ev_a: Evaluation,
    ev_b: Evaluation,
    ids: list[int],
    metric: str,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> list[SliceDelta]:
    out = []
    for name, members in slices_of(project, task, ev_a, ids).items():
        ca, cb = ev_a.columns(task, members), ev_b.columns(task, members)
        d = paired_bootstrap(ca, cb, metric, resamples=resamples, seed=seed)
        out.append(
            SliceDelta(
                name=name,
                n=len(members),
                a=ca.point()[metric],
                b=cb.point()[metric],
                diff=d["diff"],
                low=d["low"],
                high=d["high"],
            )
        )
    return out


def _cost(ev: Evaluation, ids: list[int]) -> dict[str, float | None]:
    keep = set(ids)
    preds = [p for p in ev.predictions if p.record_id in keep]
    lat = [p.latency_ms for p in preds if p.latency_ms is not None]
    toks = [p.output_tokens for p in preds if p.output_tokens is not None]
    return {
        "latency_p50_ms": percentile(lat, 50),
        "latency_p95_ms": percentile(lat, 95),
        "output_tokens_mean": sum(toks) / len(toks) if toks else None,
    }
