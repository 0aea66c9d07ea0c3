"""The cheap baseline every classify specialist must beat: a logistic regression on sentence
embeddings (the project's embedding model, MiniLM by default, the one curation uses).

It is trained on the snapshot's training split and scored on the same held-out records as any
evaluation, with the same intervals, and stored as an ordinary `Evaluation` of the model
`baseline:logreg-minilm`, so it is fitted once per (snapshot, split, training set) and reused
after that, and `compare` / the report read it like any other evaluation.

"Beats the baseline" (`beats`) means: the candidate's lower 95% bound of the main metric is
above the baseline's point estimate on the same records. That is stricter than a point
comparison (a lucky draw on a small test set does not pass) but does not ask the two
intervals to be disjoint, which on a few dozen records almost nothing would be.
"""

from __future__ import annotations

import hashlib
from typing import Any

from whetstone.errors import InvalidInput
from whetstone.evaluate import metrics as m
from whetstone.evaluate.runner import (
    Evaluation,
    Prediction,
    choose_snapshot,
    inputs_digest,
    records_to_score,
    score,
    store_new_evaluation,
    stored_evaluation,
    summarise,
)
from whetstone.evaluate.stats import DEFAULT_RESAMPLES, DEFAULT_SEED
from whetstone.project import Project
from whetstone.records import Kind, Record, canonical_json

# Not "base:…": that prefix names base language models.
BASELINE_MODEL = "baseline:logreg-minilm"


def _training_digest(recs: list[Record]) -> str:
    """Names the training texts and labels, so a baseline is reused only for the same ones."""
    rows = [[r.id, r.input_text, r.reference] for r in recs]
    return hashlib.sha256(canonical_json(rows).encode()).hexdigest()[:16]


def _fit_predict(
    train_x: Any, train_y: list[str], test_x: Any
) -> tuple[list[str], list[float | None]]:
    """Predicted labels and their log-probabilities (a single training label: always it)."""
    import numpy as np

    classes = sorted(set(train_y))
    if len(classes) == 1:
        return [classes[0]] * len(test_x), [0.0] * len(test_x)
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=2000)
    clf.fit(train_x, train_y)
    probs = clf.predict_proba(test_x)
    best = probs.argmax(axis=1)
    labels = [str(clf.classes_[i]) for i in best]
    conf: list[float | None] = [float(np.log(max(probs[k, i], 1e-12))) for k, i in enumerate(best)]
    return labels, conf


def embedding_baseline(
    project: Project,
    task: str,
    snapshot_id: str | None = None,
    split: str = "test",
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    reuse: bool = True,
    stored_only: bool = False,
) -> Evaluation:
    """The embedding baseline's evaluation on a snapshot split of classify task `task` (the
    task's latest snapshot when none is given): a stored one when the same test records and
    training set were scored before (with `reuse`), else fitted, scored and stored now. With
    `stored_only`, none stored raises `NoStoredEvaluation`."""
    from whetstone import snapshots
    from whetstone.models import embeddings

    t = project.task(task)
    if t.kind != Kind.classify:
        raise InvalidInput(
            f"the embedding baseline is for classify tasks; {task!r} is {t.kind.value}"
        )
    snap = choose_snapshot(project, task, "base", snapshot_id)
    recs = records_to_score(project, snap, split, None)
    train = [r for r in snapshots.records(project, snap, "train") if r.reference is not None]
    spec = project.embedding_model
    settings = {"limit": None, "embedding_model": spec, "train": _training_digest(train)}
    found = stored_evaluation(
        project,
        task,
        BASELINE_MODEL,
        snap.id,
        split,
        recs,
        settings,
        reuse=reuse,
        stored_only=stored_only,
    )
    if found is not None:
        return found
    if not train:
        raise InvalidInput(
            f"snapshot {snap.id} (task {task!r}) has no labelled training records to fit the "
            "embedding baseline on"
        )
    labels = m.labels_of(t, [str(r.reference) for r in train + recs])
    train_y = [m.map_label(str(r.reference), labels) or str(r.reference).strip() for r in train]
    vecs = embeddings.embed([r.input_text for r in train + recs], spec)
    answers, conf = _fit_predict(vecs[: len(train)], train_y, vecs[len(train) :])
    scores = score(t, recs, answers)
    preds = [
        Prediction(
            record_id=int(r.id or 0),
            prediction=a,
            reference=r.reference or "",
            scores=s,
            confidence=c,
        )
        for r, a, s, c in zip(recs, answers, scores, conf, strict=True)
    ]
    intervals, main, info = summarise(t, preds, resamples=resamples, seed=seed)
    info.update(
        settings,
        n_train=len(train),
        inputs=inputs_digest(recs),
        answered_by="embedding_logreg",
        metric=None,
        judge=None,
    )
    return store_new_evaluation(
        project, task, BASELINE_MODEL, snap.id, split, intervals, main, preds, info
    )


def beats(candidate: Evaluation, baseline: Evaluation) -> dict[str, Any]:
    """Whether `candidate` beats the embedding baseline (see the module's doc), with the
    numbers: the candidate's main metric and interval, the baseline's value."""
    metric = candidate.main_metric
    if metric not in baseline.metrics:
        raise InvalidInput(
            f"{baseline.model} has no {metric!r} metric to compare {candidate.model} with"
        )
    if {p.record_id for p in candidate.predictions} != {p.record_id for p in baseline.predictions}:
        raise InvalidInput(
            f"{candidate.model} (evaluation {candidate.id}) and {baseline.model} (evaluation "
            f"{baseline.id}) were scored on different records"
        )
    a, b = candidate.metrics[metric], baseline.metrics[metric]
    return {
        "metric": metric,
        "candidate": a["value"],
        "candidate_low": a["low"],
        "candidate_high": a["high"],
        "baseline": b["value"],
        "baseline_low": b["low"],
        "baseline_high": b["high"],
        "beats": a["low"] > b["value"],
        "evaluation": baseline.id,
    }
