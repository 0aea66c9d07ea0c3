"""Step 8, what to label next: unreviewed production records ranked by the expected value of a
human label, uncertainty of the current model x distance from what is already labelled x how
typical the record is of the traffic (information density, Settles & Craven 2008).

Uncertainty is 1 - exp(confidence) (confidence is the answer's mean token log-probability);
a record without one counts as fully uncertain. Distance is 1 - the highest cosine to any
labelled training record (held-out and test records teach the model nothing, so being near
them is no reason to skip a record). Density is the mean cosine to the record's nearest
neighbours in the pool, raised to `density`: uncertainty x distance alone favours outliers
(odd one-off inputs are far from everything and the model is unsure of them), which teach
the least per label when labels are few: the cold-start problem of active learning. The queue
is chosen greedily: each pick counts as labelled for the next, so fifty near-identical inputs
never fill the queue.

Records the teacher could not agree on (`teacher-disagreed`, from `whetstone distill`, of any
source) come first, least agreed first: the teacher's own vote says they are hard, and they
are the only records it will not label."""

from __future__ import annotations

import math
from typing import Any

from whetstone.curate import cache
from whetstone.curate.normalise import clean_record_text
from whetstone.errors import InvalidInput
from whetstone.project import Project
from whetstone.records import TEACHER_DISAGREED, Record, Source, Status
from whetstone.snapshots import is_held_out, test_ids_in_use, trainable

_NEIGHBOURS = 10
_DENSITY_SAMPLE = 4096  # density against at most this many pool records: O(n x sample), not O(n^2)


def uncertainty(rec: Record) -> float:
    if rec.confidence is None:
        return 1.0
    return 1.0 - math.exp(min(0.0, rec.confidence))


def _disagreement(rec: Record) -> float:
    """1 + the teacher's disagreement for a `teacher-disagreed` record, else 0."""
    if TEACHER_DISAGREED not in rec.tags:
        return 0.0
    agreement = (rec.meta.get("teacher") or {}).get("agreement")
    return 2.0 - float(agreement) if isinstance(agreement, (int, float)) else 2.0


def density_of(vecs: Any, seed: int = 0) -> Any:
    """Per row of unit vectors, the mean cosine to its nearest neighbours among the others (a
    random sample of them on large pools), clipped to [0, 1]; 1 for a single row."""
    import numpy as np

    n = len(vecs)
    if n < 2:
        return np.ones(n, dtype=np.float32)
    ref = np.arange(n)
    if n > _DENSITY_SAMPLE:
        ref = np.random.default_rng(seed).choice(n, _DENSITY_SAMPLE, replace=False)
    k = min(_NEIGHBOURS, len(ref) - 1)
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, 256):
        sims = vecs[start : start + 256] @ vecs[ref].T
        rows = np.arange(start, min(start + 256, n))
        sims[rows[:, None] == ref[None, :]] = -np.inf  # not its own neighbour
        out[start : start + 256] = np.sort(sims, axis=1)[:, -k:].mean(axis=1)
    return np.clip(out, 0.0, 1.0)


def next_to_label(
    project: Project,
    task: str,
    n: int = 50,
    *,
    embedding_model: str | None = None,
    density: float = 1.0,
) -> list[tuple[Record, float, dict[str, float]]]:
    """The `n` records most worth a human label: (record, score, {uncertainty, distance,
    density}). `density` is the exponent of the density factor; 0 leaves it out."""
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
    in_pool = {r.id for r in pool}
    pool += [
        r
        for r in project.store.iter_records(
            task, tag=TEACHER_DISAGREED, status=Status.unreviewed.value, has_reference=False
        )
        if r.id not in in_pool
    ]
    if not pool:
        return []
    held = test_ids_in_use(project, task)
    labelled = [
        r
        for r in project.store.iter_records(task, has_reference=True)
        if trainable(r) and r.id not in held and not is_held_out(r)
    ]

    def vecs(recs: list[Record]) -> Any:
        ids = [r.id for r in recs if r.id is not None]
        assert len(ids) == len(recs), "records read from the store have ids"
        return cache.embeddings(project, spec, ids, [clean_record_text(r.input_text) for r in recs])

    pv = vecs(pool)
    lv = vecs(labelled) if labelled else None
    unc = np.array([uncertainty(r) for r in pool], dtype=np.float32)
    # Above every other score (which are at most 1): teacher-disagreed first, least agreed first.
    first = np.array([_disagreement(r) for r in pool], dtype=np.float32)
    return [
        (pool[i], score, parts)
        for i, score, parts in rank(unc, pv, lv, n, density=density, first=first)
    ]


def rank(
    unc: Any,
    pool_vecs: Any,
    labelled_vecs: Any | None,
    n: int,
    *,
    density: float = 1.0,
    first: Any | None = None,
) -> list[tuple[int, float, dict[str, float]]]:
    """The greedy queue on plain arrays: (pool position, score, {uncertainty, distance,
    density}) for the `n` best of a pool with per-row uncertainty `unc` and unit embeddings
    `pool_vecs`, given the unit embeddings of what is already labelled (None: nothing).
    `first` adds a per-row bonus (the teacher's disagreement). The active-learning benchmark
    runs the strategy through this, so it measures what `curate next` does."""
    import numpy as np

    pv = pool_vecs
    nearest = np.zeros(len(pv), dtype=np.float32)  # highest cosine to anything labelled
    if labelled_vecs is not None and len(labelled_vecs):
        for start in range(0, len(pv), 256):
            nearest[start : start + 256] = (pv[start : start + 256] @ labelled_vecs.T).max(axis=1)
    unc = np.asarray(unc, dtype=np.float32)
    dens = density_of(pv) if density else np.ones(len(pv), dtype=np.float32)
    typical = dens**density
    bonus = np.zeros(len(pv), dtype=np.float32) if first is None else first
    out: list[tuple[int, float, dict[str, float]]] = []
    taken = np.zeros(len(pv), dtype=bool)
    for _ in range(min(n, len(pv))):
        dist = np.clip(1.0 - nearest, 0.0, 1.0)
        score = np.where(taken, -1.0, unc * dist * typical + bonus)
        i = int(np.argmax(score))
        parts = {
            "uncertainty": float(unc[i]),
            "distance": float(dist[i]),
            "density": float(dens[i]),
        }
        out.append((i, float(score[i]), parts))
        taken[i] = True
        nearest = np.maximum(nearest, pv @ pv[i])
    return out
