"""Step 8, what to label next: unreviewed production records ranked by the expected value of a
human label, uncertainty of the current model x distance from what is already labelled.

Uncertainty is 1 - exp(confidence) (confidence is the answer's mean token log-probability);
a record without one counts as fully uncertain. Distance is 1 - the highest cosine to any
labelled record. The queue is chosen greedily: each pick counts as labelled for the next, so
fifty near-identical inputs never fill the queue."""

from __future__ import annotations

import math
from typing import Any

from whetstone.curate import cache
from whetstone.curate.normalise import normalise
from whetstone.errors import InvalidInput
from whetstone.project import Project
from whetstone.records import Record, Source, Status
from whetstone.snapshots import trainable


def uncertainty(rec: Record) -> float:
    if rec.confidence is None:
        return 1.0
    return 1.0 - math.exp(min(0.0, rec.confidence))


def next_to_label(
    project: Project, task: str, n: int = 50, *, embedding_model: str | None = None
) -> list[tuple[Record, float, dict[str, float]]]:
    """The `n` records most worth a human label: (record, score, {uncertainty, distance})."""
    import numpy as np

    if n < 1:
        raise InvalidInput(f"--n must be at least 1, not {n}")
    project.task(task)
    spec = embedding_model or project.embedding_model
    pool = list(
        project.store.iter_records(
            task, source=Source.production.value, status=Status.unreviewed.value
        )
    )
    if not pool:
        return []
    labelled = [r for r in project.store.iter_records(task, has_reference=True) if trainable(r)]

    def vecs(recs: list[Record]) -> Any:
        return cache.embeddings(
            project, spec, [r.id for r in recs], [normalise(r.input_text) for r in recs]
        )

    pv = vecs(pool)
    nearest = np.zeros(len(pool), dtype=np.float32)  # highest cosine to anything labelled
    if labelled:
        lv = vecs(labelled)
        for start in range(0, len(pool), 256):
            nearest[start : start + 256] = (pv[start : start + 256] @ lv.T).max(axis=1)
    unc = np.array([uncertainty(r) for r in pool], dtype=np.float32)
    out: list[tuple[Record, float, dict[str, float]]] = []
    taken = np.zeros(len(pool), dtype=bool)
    for _ in range(min(n, len(pool))):
        dist = np.clip(1.0 - nearest, 0.0, 1.0)
        score = np.where(taken, -1.0, unc * dist)
        i = int(np.argmax(score))
        out.append(
            (pool[i], float(score[i]), {"uncertainty": float(unc[i]), "distance": float(dist[i])})
        )
        taken[i] = True
        nearest = np.maximum(nearest, pv @ pv[i])
    return out
