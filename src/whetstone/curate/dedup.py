"""Step 4, duplicates: exact (same normalised text), near (MinHash LSH over character
shingles, a Jaccard threshold) and semantic (MiniLM cosine threshold). Each cluster keeps its
best member — corrected over accepted over the rest, then the newest — and records that
earlier snapshots put in test are never removed here, so the test split stays put."""

from __future__ import annotations

import hashlib
from typing import Any

from whetstone.curate import cache
from whetstone.curate.state import Row, Run
from whetstone.records import Status
from whetstone.snapshots import normalise_text

_STATUS_RANK = {Status.corrected: 2, Status.accepted: 1}
_BLOCK = 256  # rows per block of the cosine matrix: memory grows as n x 256 floats, not n x n


def _shingles(text: str, k: int) -> set[bytes]:
    t = normalise_text(text)
    if len(t) <= k:
        return {t.encode()}
    return {t[i : i + k].encode() for i in range(len(t) - k + 1)}


def minhashes(ctx: Run, ids: list[int], texts: list[str]) -> list[Any]:
    """MinHash signatures of the texts, from the feature cache where they are already known."""
    import numpy as np
    from datasketch import MinHash

    k, perm = ctx.config.shingle, ctx.config.num_perm
    # Permutations generated once and shared: building them per signature dominates otherwise.
    template = MinHash(num_perm=perm, seed=1, scheme="affine32")

    def compute(batch: list[str]) -> list[bytes]:
        out = []
        for text in batch:
            m = MinHash(
                seed=1,
                scheme="affine32",
                hashvalues=template.hashvalues,
                permutations=template.permutations,
            )
            m.update_batch(list(_shingles(text, k)))
            out.append(m.hashvalues.astype(np.uint64).tobytes())
        return out

    values, _ = cache.cached(ctx.project, f"minhash:affine32:k{k}:p{perm}", ids, texts, compute)
    return [
        MinHash(
            seed=1,
            scheme="affine32",
            hashvalues=np.frombuffer(v, dtype=np.uint64),
            permutations=template.permutations,
        )
        for v in values
    ]


class Clusters:
    """Union-find over row positions."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return list(out.values())


def exact_pairs(rows: list[Row]) -> list[tuple[int, int]]:
    first: dict[str, int] = {}
    pairs = []
    for i, r in enumerate(rows):
        h = hashlib.sha256(normalise_text(r.text).encode()).hexdigest()
        if h in first:
            pairs.append((first[h], i))
        else:
            first[h] = i
    return pairs


def near_pairs(ctx: Run, rows: list[Row], threshold: float) -> list[tuple[int, int]]:
    """Pairs whose estimated Jaccard similarity reaches the threshold (LSH finds candidates)."""
    from datasketch import MinHashLSH

    if len(rows) < 2 or threshold >= 1:
        return []
    sigs = ctx.minhashes(rows)
    lsh = MinHashLSH(threshold=max(threshold, 0.01), num_perm=ctx.config.num_perm)
    for i, m in enumerate(sigs):
        lsh.insert(i, m)
    pairs = []
    for i, m in enumerate(sigs):
        for j in lsh.query(m):
            if j > i and sigs[i].jaccard(sigs[j]) >= threshold:
                pairs.append((i, j))
    return pairs


def semantic_pairs(vecs: Any, threshold: float, other: Any = None) -> list[tuple[int, int]]:
    """Pairs (i, j) with cosine >= threshold: within `vecs` (i < j), or between `vecs` and
    `other` when given. Blocked, so memory stays flat as the corpus grows."""
    import numpy as np

    pairs: list[tuple[int, int]] = []
    within = other is None
    against = vecs if within else other
    if len(vecs) == 0 or len(against) == 0:
        return pairs
    for start in range(0, len(vecs), _BLOCK):
        # Within one set, compare a block only with itself and the rows after it.
        offset = start if within else 0
        sims = vecs[start : start + _BLOCK] @ against[offset:].T
        for a, b in zip(*np.nonzero(sims >= threshold), strict=True):
            i, j = start + int(a), offset + int(b)
            if not within or j > i:
                pairs.append((i, j))
    return pairs


def rank(row: Row) -> tuple[int, int, Any, int]:
    """Sort key of the best member of a cluster (highest first)."""
    r = row.record
    return (row.prior_split == "test", _STATUS_RANK.get(r.status, 0), r.created_at, row.id)


def run(ctx: Run) -> None:
    cfg = ctx.config
    rows = ctx.rows
    uf = Clusters(len(rows))
    exact = exact_pairs(rows)
    near = near_pairs(ctx, rows, cfg.jaccard)
    vecs = ctx.vectors(rows)
    semantic = semantic_pairs(vecs, cfg.cosine)
    for a, b in [*exact, *near, *semantic]:
        uf.union(a, b)
    ctx.note(f"{len(exact)} exact, {len(near)} near and {len(semantic)} semantic duplicate pairs")
    examples = []
    for members in uf.groups():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: rank(rows[i]), reverse=True)
        keep = rows[members[0]]
        ctx.decide(
            keep,
            "kept",
            "best member of a duplicate cluster",
            cluster=[rows[i].id for i in members],
        )
        examples.append([(rows[i].id, rows[i].text, i == members[0]) for i in members])
        for i in members[1:]:
            row = rows[i]
            if row.prior_split == "test":
                continue  # the test split stays fixed; the split step keeps the group together
            cos = float(vecs[i] @ vecs[members[0]])
            if normalise_text(row.text) == normalise_text(keep.text):
                reason = "exact duplicate"
            else:
                jac = ctx.minhashes([row])[0].jaccard(ctx.minhashes([keep])[0])
                reason = "near duplicate" if jac >= cfg.jaccard else "semantic duplicate"
            ctx.decide(
                row,
                "removed",
                reason,
                kept=keep.id,
                cosine=round(cos, 4),
                same_reference=row.reference == keep.reference,
            )
    examples.sort(key=len, reverse=True)
    ctx.card["clusters"] = examples[:5]
    ctx.card["n_clusters"] = len(examples)
