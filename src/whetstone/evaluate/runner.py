"""Run a model over a snapshot split, score it, and store the evaluation.

An evaluation is stored only when it is complete, in one transaction (the `evaluations` row
and every `predictions` row together), so a failure half way leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from whetstone.errors import InvalidInput, WhetstoneError
from whetstone.evaluate import metrics as m
from whetstone.evaluate.stats import DEFAULT_RESAMPLES, DEFAULT_SEED, intervals, percentile
from whetstone.models.generate import GENERATE_BATCH
from whetstone.project import Project
from whetstone.records import Kind, Record, Source, Task, canonical_json, content_key, utcnow
from whetstone.store import evaluations as stored
from whetstone.tables import Table


class NoStoredEvaluation(WhetstoneError):
    """`evaluate(stored_only=True)` found nothing to reuse."""


@dataclass
class Prediction:
    record_id: int
    prediction: str
    reference: str
    scores: dict[str, float]
    latency_ms: float | None = None
    output_tokens: int | None = None
    # The model's log-probability of its answer (0 = certain): the mean token log-probability
    # of a generated answer, or the log softmax probability of a scored label. None: unknown.
    confidence: float | None = None


@dataclass
class Evaluation(Table):
    id: str
    task: str
    model: str  # "base:<name>" or "T@N", as predictions name it
    snapshot_id: str | None
    split: str
    metrics: dict[str, dict[str, float]]  # name -> {value, low, high}
    main_metric: str
    predictions: list[Prediction]
    info: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)
    reused: bool = False  # a stored evaluation returned instead of a new run (not stored)

    @property
    def n(self) -> int:
        return len(self.predictions)

    def rows(self) -> list[dict[str, Any]]:
        """One row per scored record: answer, reference, each metric's score (a column per
        metric), latency, length and confidence."""
        names = sorted({k for p in self.predictions for k in p.scores})
        return [
            {
                "record_id": p.record_id,
                "model": self.model,
                "prediction": p.prediction,
                "reference": p.reference,
                **{k: p.scores.get(k) for k in names},
                "latency_ms": p.latency_ms,
                "output_tokens": p.output_tokens,
                "confidence": p.confidence,
            }
            for p in self.predictions
        ]

    @property
    def main(self) -> dict[str, float]:
        return self.metrics[self.main_metric]

    def failures(self) -> list[Prediction]:
        """Records whose main per-record value is below 1 (a miss, or a partial match)."""
        # Every main metric has a per-record value of the same name (extract: field_f1).
        return [p for p in self.predictions if p.scores.get(self.main_metric, 1.0) < 1.0]

    def columns(self, task: Task, record_ids: list[int] | None = None) -> m.Columns:
        """The per-record columns of these predictions (in `record_ids` order if given)."""
        preds = self.predictions
        if record_ids is not None:
            by_id = {p.record_id: p for p in preds}
            preds = [by_id[i] for i in record_ids]
        return m.columns(
            task,
            [p.prediction for p in preds],
            [p.reference for p in preds],
            [p.scores for p in preds],
        )


# ---------------------------------------------------------------- choosing what to run


def model_name(project: Project, task: str, model: str, base_model: str | None = None) -> str:
    """The stored name of a model spec: "base" -> "base:<name>", "T" -> its production "T@N"."""
    if model == "base":
        from whetstone.models import base as base_models

        return f"base:{base_models.resolve(base_model or project.base_model).name}"
    from whetstone.registry import get

    return get(project, model).name


def choose_snapshot(project: Project, task: str, model: str, snapshot_id: str | None) -> Any:
    """The snapshot given, else the adapter's own, else the task's latest, else a new default
    one. Refuses a snapshot of another task or an adapter of another task or base."""
    from whetstone import snapshots

    av = None
    if model != "base":
        from whetstone.registry import get

        av = get(project, model)
        if av.task != task:
            raise InvalidInput(f"{av.name} is an adapter of task {av.task!r}, not {task!r}")
    if snapshot_id:
        snap = snapshots.load(project, snapshot_id)
    elif av is not None and av.snapshot_id:
        snap = snapshots.load(project, av.snapshot_id)
    else:
        snap = snapshots.latest(project, task) or snapshots.snapshot_task(project, task)
    if snap.task != task:
        raise InvalidInput(f"snapshot {snap.id} belongs to task {snap.task!r}, not {task!r}")
    if av is not None:
        want = snap.info.get("base_hash")
        if want and want != av.base_hash:
            raise InvalidInput(
                f"{av.name} was trained on base {av.base_model} ({av.base_hash[:12]}) but snapshot "
                f"{snap.id} was made for base {snap.info.get('base_model')} ({str(want)[:12]})"
            )
    return snap


def check_base(project: Project, model: str, base_model: str | None) -> None:
    """Fail before loading anything when an adapter's base is not the base we would load."""
    if model == "base":
        return
    from whetstone.models import base as base_models
    from whetstone.registry import get

    av = get(project, model)
    base = base_models.resolve(base_model or av.base_model)
    if base.hash != av.base_hash:
        raise InvalidInput(
            f"{av.name} was trained on base model {av.base_model} ({av.base_hash[:12]}), "
            f"not {base.name} ({base.hash[:12]})"
        )


# ---------------------------------------------------------------- scoring


def score(
    task: Task,
    records: list[Record],
    predictions: list[str],
    *,
    metric: str | None = None,
    judge: Any = None,
) -> list[dict[str, float]]:
    """Per-record scores: the task kind's built-ins, a custom metric, a judge's 1..5."""
    refs = [r.reference or "" for r in records]
    labels = m.labels_of(task, refs) if task.kind == Kind.classify else None
    scores = [m.per_example(task, p, r, labels) for p, r in zip(predictions, refs, strict=True)]
    custom = [s for s in (task.metric, metric) if s and ":" in s]
    if custom:
        from whetstone.evaluate.custom import load_metric, score_records

        for spec in dict.fromkeys(custom):
            fn = load_metric(spec)
            for s, extra in zip(
                scores, score_records(fn, spec, predictions, refs, records), strict=True
            ):
                s.update(extra)
    if judge is not None:
        for s, v in zip(scores, judge.score(task, records, predictions), strict=True):
            s["judge"] = v
    return scores


def summarise(
    task: Task,
    preds: list[Prediction],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> tuple[dict[str, dict[str, float]], str, dict[str, Any]]:
    """(metrics with intervals, main metric name, extra info: latency, tokens, reports)."""
    cols = m.columns(
        task, [p.prediction for p in preds], [p.reference for p in preds], [p.scores for p in preds]
    )
    with_ci = intervals(cols, resamples=resamples, seed=seed)
    lat = [p.latency_ms for p in preds if p.latency_ms is not None]
    toks = [p.output_tokens for p in preds if p.output_tokens is not None]
    info: dict[str, Any] = {
        "n": len(preds),
        "latency_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95)},
        "output_tokens_mean": sum(toks) / len(toks) if toks else None,
        "binary_metrics": sorted(cols.binary),
        "bootstrap": {"resamples": resamples, "seed": seed, "interval": 0.95},
        "binary_interval": "wilson",
    }
    if task.kind == Kind.classify:
        info["confusion"] = m.confusion(
            task, [p.prediction for p in preds], [p.reference for p in preds]
        )
        if any(p.confidence is not None for p in preds):
            info["calibration"] = m.calibration(
                [p.confidence for p in preds], [p.scores.get("accuracy", 0.0) for p in preds]
            )
    return with_ci, cols.main, info


# ---------------------------------------------------------------- the evaluation itself


def evaluate(
    project: Project,
    task: str,
    model: str = "base",
    split: str = "test",
    snapshot_id: str | None = None,
    *,
    limit: int | None = None,
    batch_size: int = GENERATE_BATCH,
    max_new_tokens: int | None = None,
    base_model: str | None = None,
    metric: str | None = None,
    judge: str | None = None,
    rubric: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    predictor: Any = None,
    reuse: bool = True,
    stored_only: bool = False,
    constrained: bool = False,
) -> Evaluation:
    """Run `model` ("base", "T" or "T@N") over a snapshot split and store the evaluation.
    `max_new_tokens` defaults to the task's decode budget (`decode_budget`). With `reuse`, a
    stored evaluation of the same model on the same records with the same settings is
    returned instead of running the model again (`Evaluation.reused`); a judged one never is.
    With `stored_only` nothing runs: no such stored evaluation raises `NoStoredEvaluation`.
    `predictor` lets a caller that already holds the loaded model reuse it. `constrained`:
    extract answers keep the task's schema (`models.constrain`) as served; off by default."""

    t = project.task(task)
    if predictor is None and model.lower().endswith(".gguf"):
        from whetstone.predict import load_predictor

        # A GGUF file is no registry name: llama.cpp answers, on its adapter's snapshot when
        # its export report names one, else as the base model would be chosen.
        predictor = load_predictor(project, task, model)
        snapshot_id = snapshot_id or getattr(predictor, "snapshot_id", None)
        model = "base"
    snap = choose_snapshot(project, task, model, snapshot_id)
    recs = records_to_score(project, snap, split, limit)
    if metric:
        from whetstone.evaluate.custom import load_metric

        load_metric(metric)  # a bad entry point fails before the model runs, not after
    if predictor is None:
        check_base(project, model, base_model)
    # A caller's predictor may be any callable (tests, a remote model): its tokenizer if it
    # has one, else the base model's.
    tok = getattr(predictor, "tokenizer", None) or _tokenizer(project, model, base_model)
    budget = max_new_tokens or decode_budget(project, t, snap, tok)
    # What decides the answers and their scores (the bootstrap's resamples only change the
    # intervals printed, and a comparison or the gate recomputes its own).
    settings = {"limit": limit, "max_new_tokens": budget, "metric": metric}
    settings.update(_answering(project, t, model, predictor))
    if constrained:  # only when set: earlier evaluations' settings stay comparable
        settings["constrained"] = True
    name = predictor.name if predictor else model_name(project, task, model, base_model)
    found = stored_evaluation(
        project,
        task,
        name,
        snap.id,
        split,
        recs,
        settings,
        reuse=reuse and not judge,
        stored_only=stored_only,
    )
    if found is not None:
        return found
    judge_client = None
    if judge:
        from whetstone.evaluate.judge import Judge

        judge_client = Judge.from_spec(judge, rubric)
    if predictor is None:
        from whetstone.predict import load_predictor

        predictor = load_predictor(project, task, model, base_model=base_model)
    gens = _generate(predictor, t, recs, batch_size, budget, constrained)
    scores = score(t, recs, [g.text for g in gens], metric=metric, judge=judge_client)
    preds = _predictions(recs, gens, scores)
    intervals, main, info = summarise(t, preds, resamples=resamples, seed=seed)
    info.update(
        limit=limit,
        max_new_tokens=budget,
        # Answers cut off by the budget: many mean the budget is too small for the task.
        # (A label chosen by likelihood is never cut off, however long.)
        hit_budget=sum(
            1 for g in gens if g.output_tokens >= budget and getattr(g, "label_probs", None) is None
        ),
        answered_by=_answered_by(predictor, gens),
        metric=metric,
        judge=judge_client.describe() if judge_client else None,
        inputs=inputs_digest(recs),
    )
    return store_new_evaluation(
        project, task, predictor.name, snap.id, split, intervals, main, preds, info
    )


def store_new_evaluation(
    project: Project,
    task: str,
    model: str,
    snapshot_id: str,
    split: str,
    metrics: dict[str, dict[str, float]],
    main_metric: str,
    predictions: list[Prediction],
    info: dict[str, Any],
) -> Evaluation:
    """Name, build and store a finished evaluation (in one transaction, `store_evaluation`)."""
    now = utcnow()
    ev = Evaluation(
        id=new_evaluation_id(model, snapshot_id, split, now),
        task=task,
        model=model,
        snapshot_id=snapshot_id,
        split=split,
        metrics=metrics,
        main_metric=main_metric,
        predictions=predictions,
        info=info,
        created_at=now,
    )
    store_evaluation(project, ev)
    return ev


def _predictions(
    recs: list[Record], gens: list[Any], scores: list[dict[str, float]]
) -> list[Prediction]:
    return [
        Prediction(
            record_id=int(r.id or 0),
            prediction=g.text,
            reference=r.reference or "",
            scores=s,
            latency_ms=round(g.latency_ms, 3),
            output_tokens=g.output_tokens,
            confidence=g.confidence,
        )
        for r, g, s in zip(recs, gens, scores, strict=True)
    ]


def records_to_score(project: Project, snap: Any, split: str, limit: int | None) -> list[Record]:
    from whetstone import snapshots

    recs = snapshots.records(project, snap, split)
    if limit is not None:
        if limit < 1:
            raise InvalidInput("--limit must be at least 1")
        recs = recs[:limit]
    recs = [r for r in recs if r.reference is not None]
    if not recs:
        raise InvalidInput(
            f"the {split} split of snapshot {snap.id} (task {snap.task!r}) has no records to "
            "evaluate on"
        )
    return recs


def _tokenizer(project: Project, model: str, base_model: str | None) -> Any:
    """The tokenizer `model` answers with (its base model's), without loading any weights."""
    from whetstone.models import base as base_models

    if model != "base" and base_model is None:
        from whetstone.registry import get

        base_model = get(project, model).base_model
    return base_models.load_tokenizer(base_models.resolve(base_model or project.base_model))


def decode_budget(project: Project, task: Task, snap: Any, tok: Any) -> int:
    """The task's default `max_new_tokens` (`models.decoding.answer_budget`), from the
    references a model learns from: the snapshot's training and validation records (its
    test records only when it has no others)."""
    from whetstone import snapshots
    from whetstone.models.decoding import answer_budget

    def known(split: str) -> list[Record]:
        return [r for r in snapshots.records(project, snap, split) if r.reference is not None]

    recs = known("train") + known("validation") or known("test")
    return answer_budget(tok, task, [(r.input, str(r.reference)) for r in recs])


def _answering(project: Project, task: Task, model: str, predictor: Any) -> dict[str, str]:
    """How a classify task will be answered, as a reuse setting: a stored evaluation whose
    answers were generated is not reused for one that scores labels. Empty for other kinds
    and for a caller's stand-in predictor, whose way is unknown until it answers."""
    if task.kind != Kind.classify:
        return {}
    if predictor is not None:
        lm = getattr(predictor, "model", None)
        if lm is None:
            return {}
        return {"answered_by": "label_head" if hasattr(lm, "answer_greedy") else "label_likelihood"}
    if model != "base":
        from whetstone.registry import get

        if get(project, model).method == "label_head":
            return {"answered_by": "label_head"}
    return {"answered_by": "label_likelihood"}


def _answered_by(predictor: Any, gens: list[Any]) -> str:
    """How the answers came: "label_likelihood" (`models.label_scoring`), "label_head" or
    "generation"."""
    if gens and all(getattr(g, "label_probs", None) is not None for g in gens):
        return "label_likelihood"
    if getattr(getattr(predictor, "model", None), "answer_greedy", None) is not None:
        return "label_head"
    return "generation"


def _generate(
    predictor: Any,
    task: Task,
    recs: list[Record],
    batch_size: int,
    budget: int,
    constrained: bool = False,
) -> list[Any]:
    """The predictor's answers. A classify task's labels go with them (declared, else the
    references'), so even a task without declared labels is answered by label likelihood."""
    from whetstone.progress import progress

    labels = (
        m.labels_of(task, [r.reference or "" for r in recs]) if task.kind == Kind.classify else None
    )

    with progress() as bar:
        tid = bar.add_task(f"eval {predictor.name}", total=len(recs), info="")
        return list(
            predictor(
                [r.input for r in recs],
                batch_size=batch_size,
                max_new_tokens=budget,
                on_batch=lambda k: bar.advance(tid, k),
                labels=labels,
                # Asked for only when set: a caller's own predictor need not know the option.
                **({"constrained": True} if constrained else {}),
            )
        )


def inputs_digest(recs: list[Record]) -> str:
    """Names the input texts an evaluation ran on, to tell when another may be reused."""
    return hashlib.sha256(
        canonical_json(
            [[r.id, r.model_dump(mode="json", include={"input"})["input"]] for r in recs]
        ).encode()
    ).hexdigest()[:16]


def new_evaluation_id(model: str, snapshot_id: str, split: str, when: datetime) -> str:
    h = hashlib.sha256(json.dumps([model, snapshot_id, split, when.isoformat()]).encode())
    return h.hexdigest()[:16]


def store_evaluation(project: Project, ev: Evaluation) -> None:
    info = {
        **ev.info,
        "main_metric": ev.main_metric,
        "references": {str(p.record_id): p.reference for p in ev.predictions},
    }
    row = {
        "id": ev.id,
        "task": ev.task,
        "model": ev.model,
        "snapshot_id": ev.snapshot_id,
        "split": ev.split,
        "metrics": ev.metrics,
        "info": info,
        "created_at": ev.created_at.isoformat(),
    }
    predictions = [
        {
            "record_id": p.record_id,
            "prediction": p.prediction,
            "scores": p.scores,
            "latency_ms": p.latency_ms,
            "output_tokens": p.output_tokens,
            "confidence": p.confidence,
        }
        for p in ev.predictions
    ]
    stored.add_evaluation(project.store, row, predictions)


def load_evaluation(project: Project, eval_id: str, *, reused: bool = False) -> Evaluation:
    """A stored evaluation by id or unique id prefix (`reused`: returned in place of a run)."""
    row, prow = stored.evaluation_row(project.store, eval_id)
    info = dict(row["info"])
    refs: dict[str, str] = info.pop("references", {})
    main = info.pop("main_metric")
    return Evaluation(
        id=row["id"],
        task=row["task"],
        model=row["model"],
        snapshot_id=row["snapshot_id"],
        split=row["split"],
        metrics=row["metrics"],
        main_metric=main,
        predictions=[
            Prediction(
                record_id=r["record_id"],
                prediction=r["prediction"],
                reference=refs.get(str(r["record_id"]), ""),
                scores=r["scores"],
                latency_ms=r["latency_ms"],
                output_tokens=r["output_tokens"],
                confidence=r["confidence"],
            )
            for r in prow
        ],
        info=info,
        created_at=datetime.fromisoformat(row["created_at"]),
        reused=reused,
    )


def list_evaluations(project: Project, task: str | None = None) -> list[dict[str, Any]]:
    """Stored evaluations, oldest first, without their predictions."""
    return stored.evaluation_summaries(project.store, task)


def latest_evaluation(
    project: Project,
    task: str,
    model: str,
    snapshot_id: str | None = None,
    split: str = "test",
    *,
    complete: bool = True,
) -> Evaluation | None:
    """The newest stored evaluation of `model` (a stored name, "base", "T" or "T@N") on a
    snapshot split; with `complete`, one that was not cut short by --limit."""
    # Stored names ("base:…", "baseline:…" for the embedding baseline) are used as they are.
    name = model if model.startswith(("base:", "baseline:")) else model_name(project, task, model)
    rows = stored.evaluation_infos(project.store, task, name, split, snapshot_id)
    for eid, info in rows:
        if not complete or info.get("limit") is None:
            return load_evaluation(project, eid)
    if snapshot_id and complete:
        from whetstone import snapshots

        snap = snapshots.load(project, snapshot_id)
        recs = [r for r in snapshots.records(project, snap, split) if r.reference is not None]
        return reusable_evaluation(project, task, name, snapshot_id, split, recs, {"limit": None})
    return None


def stored_evaluation(
    project: Project,
    task: str,
    name: str,
    snapshot_id: str,
    split: str,
    recs: list[Record],
    settings: dict[str, Any],
    *,
    reuse: bool,
    stored_only: bool,
) -> Evaluation | None:
    """What an evaluation run starts with: the reusable stored evaluation (with `reuse`), else
    None; with `stored_only` and none to reuse, `NoStoredEvaluation` (nothing may run)."""
    found = (
        reusable_evaluation(project, task, name, snapshot_id, split, recs, settings)
        if reuse
        else None
    )
    if found is None and stored_only:
        shown = ", ".join(f"{k} {v}" for k, v in settings.items() if v is not None)
        raise NoStoredEvaluation(
            f"no stored evaluation of {name} on the {split} split of snapshot {snapshot_id} "
            f"with {shown}"
        )
    return found


def reusable_evaluation(
    project: Project,
    task: str,
    name: str,
    snapshot_id: str,
    split: str,
    recs: list[Record],
    settings: dict[str, Any] | None,
) -> Evaluation | None:
    """The newest stored evaluation of model `name` on exactly `recs` with the same texts
    (inputs and references) and, when given, the same `settings` (stored info keys): one on
    this snapshot first, else one on another snapshot whose split holds the same records (the
    flywheel keeps the test split fixed across snapshots, so the incumbent's numbers from the
    last turn are reused, not recomputed)."""
    wanted = {r.id: r.reference for r in recs}
    if not wanted:
        return None
    inputs = inputs_digest(recs)
    for snapshot in (snapshot_id, None):
        for eid, info in stored.evaluation_infos(project.store, task, name, split, snapshot):
            frozen = {int(k): v for k, v in info.get("references", {}).items()}
            if info.get("inputs") != inputs or frozen != wanted:
                continue
            if settings is None or all(info.get(k) == v for k, v in settings.items()):
                return load_evaluation(project, eid, reused=True)
    return None


# ---------------------------------------------------------------- failures become work


def queue_failures(project: Project, ev: Evaluation) -> int:
    """Add each failed held-out record as a new `unreviewed` record tagged `hard` (its input
    and the model's wrong answer, never the reference), and tag the original `heldout` so no
    snapshot trains on it. Records of the train split are not queued. Returns how many."""
    from whetstone import snapshots

    train_ids: set[int] = set()
    if ev.snapshot_id:
        train_ids = set(snapshots.load(project, ev.snapshot_id).ids("train"))
    failed = [p for p in ev.failures() if p.record_id not in train_ids]
    if not failed:
        return 0
    originals = {
        r.id: r for r in project.store.iter_records(ev.task, ids=[p.record_id for p in failed])
    }
    new = [
        Record(
            task=ev.task,
            input=originals[p.record_id].input,
            output=p.prediction,
            model=ev.model,
            source=Source.evaluation,
            tags=["hard"],
            meta={"evaluation": ev.id, "heldout_record": p.record_id},
            # The same failure queued twice (a re-run) is one review item, not two.
            source_key=content_key("eval-failure", p.record_id, ev.model, p.prediction),
        )
        for p in failed
    ]
    added = project.store.add_records(new)
    for p in failed:
        project.store.add_tags(p.record_id, "heldout")
    return sum(1 for i in added if i is not None)
