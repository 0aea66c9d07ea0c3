"""Step 7, budgeted selection: choose `budget` training rows by coverage and difficulty, not at
random. Hard examples come first; the rest is k-center greedy on the embeddings (each pick is
the row farthest from everything picked so far), stratified by label for classify so every
label keeps its share. Validation and test rows are not touched by the budget.

A budget larger than the training rows left is an error rather than a silent no-op: the user
asked for a size the data cannot give."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from whetstone.curate.state import Row, Run
from whetstone.errors import InvalidInput
from whetstone.records import Kind


def k_center(vecs: Any, k: int, seeds: list[int]) -> list[int]:
    """Greedy k-center: start from `seeds` (or the row nearest the centroid) and keep adding the
    row with the largest cosine distance to its nearest chosen row. Returns k positions."""
    import numpy as np

    n = len(vecs)
    if k >= n:
        return list(range(n))
    chosen = list(seeds[:k])
    if not chosen:
        chosen = [int(np.argmax(vecs @ vecs.mean(axis=0)))]
    dist = np.full(n, np.inf, dtype=np.float32)
    for c in chosen:
        dist = np.minimum(dist, 1 - vecs @ vecs[c])
    dist[chosen] = -1
    while len(chosen) < k:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, 1 - vecs @ vecs[nxt])
        dist[chosen] = -1
    return chosen


def quotas(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Shares of the budget proportional to label sizes (largest remainders), at least one per
    label when the budget allows, never more than a label has."""
    total = sum(sizes.values())
    raw = {k: budget * n / total for k, n in sizes.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(sizes, key=lambda k: raw[k] - out[k], reverse=True)[
        : budget - sum(out.values())
    ]:
        out[k] += 1
    if budget >= len(sizes):
        for k in [k for k, q in out.items() if q == 0]:
            out[max(out, key=lambda j: out[j])] -= 1
            out[k] = 1
    return out


def choose(ctx: Run, rows: list[Row], budget: int) -> set[int]:
    """Ids of the `budget` rows to keep."""
    strata: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        strata[r.reference if ctx.task.kind == Kind.classify else ""].append(r)
    keep: set[int] = set()
    for label, q in quotas({k: len(v) for k, v in strata.items()}, budget).items():
        group = strata[label]
        vecs = ctx.vectors(group)
        hard = [i for i, r in enumerate(group) if r.hard]
        if len(hard) >= q:
            picks = [hard[i] for i in k_center(vecs[hard], q, [])]
        else:
            picks = k_center(vecs, q, hard)
        keep |= {group[i].id for i in picks}
    return keep


def run(ctx: Run) -> None:
    budget = ctx.config.budget
    if budget is None:
        ctx.note("no budget: every training row is kept")
        return
    train = [r for r in ctx.rows if r.split == "train"]
    if budget > len(train):
        raise InvalidInput(
            f"budget {budget} is larger than the {len(train)} training rows left after curation; "
            "lower --budget, or leave it out to keep them all"
        )
    keep = choose(ctx, train, budget)
    for r in train:
        if r.id not in keep:
            ctx.decide(r, "removed", "not selected within the budget", budget=budget)
    ctx.note(
        f"kept {budget} of {len(train)} training rows ({sum(1 for r in train if r.id in keep and r.hard)} hard)"
    )
