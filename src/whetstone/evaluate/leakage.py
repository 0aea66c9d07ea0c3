"""Leakage check: is any evaluation record an exact or near duplicate of a training record?

A test input the model has (nearly) seen in training measures memory, not skill, so the
gate refuses an adapter whose snapshot has such pairs. Exact means equal normalised text;
near means a character 5-gram Jaccard similarity at or above a threshold (0.8). Small sets
are compared pair by pair with the exact Jaccard; large ones find candidate pairs with
MinHash LSH first and then confirm each with the exact Jaccard, so the answer never rests
on a MinHash estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from whetstone.records import Record
from whetstone.snapshots import normalise_text

# Beyond this many (eval x train) pairs, find candidates with LSH instead of all pairs.
ALL_PAIRS_LIMIT = 200_000


@dataclass
class LeakPair:
    eval_id: int
    train_id: int
    kind: str  # "exact" or "near"
    jaccard: float


@dataclass
class LeakageReport:
    eval_records: int
    train_records: int
    threshold: float
    pairs: list[LeakPair] = field(default_factory=list)

    @property
    def exact(self) -> int:
        return sum(1 for p in self.pairs if p.kind == "exact")

    @property
    def near(self) -> int:
        return sum(1 for p in self.pairs if p.kind == "near")

    @property
    def leaked_eval_ids(self) -> list[int]:
        return sorted({p.eval_id for p in self.pairs})

    def to_dict(self, examples: int = 5) -> dict[str, Any]:
        return {
            "eval_records": self.eval_records,
            "train_records": self.train_records,
            "threshold": self.threshold,
            "exact": self.exact,
            "near": self.near,
            "leaked_eval_records": len(self.leaked_eval_ids),
            "examples": [p.__dict__ for p in self.pairs[:examples]],
        }


def record_text(rec: Record) -> str:
    """Everything the model reads of a record: the text, or every turn of a chat."""
    if isinstance(rec.input, str):
        return normalise_text(rec.input)
    return normalise_text("\n".join(m.content for m in rec.input))


def shingles(text: str, k: int = 5) -> set[str]:
    if len(text) <= k:
        return {text}
    return {text[i : i + k] for i in range(len(text) - k + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def find_leaks(
    eval_records: list[Record],
    train_records: list[Record],
    *,
    threshold: float = 0.8,
    k: int = 5,
    num_perm: int = 128,
) -> LeakageReport:
    """Every (eval, train) pair that is an exact or near duplicate, best match per eval record."""
    report = LeakageReport(len(eval_records), len(train_records), threshold)
    if not eval_records or not train_records:
        return report
    ev_text = [(int(r.id or 0), record_text(r)) for r in eval_records]
    tr_text = [(int(r.id or 0), record_text(r)) for r in train_records]
    by_text: dict[str, int] = {}
    for rid, text in tr_text:
        by_text.setdefault(text, rid)
    tr_sh = [shingles(t, k) for _, t in tr_text]
    candidates = (
        _all_pairs(len(tr_text))
        if len(ev_text) * len(tr_text) <= ALL_PAIRS_LIMIT
        else _lsh_pairs([shingles(t, k) for _, t in ev_text], tr_sh, threshold, num_perm)
    )
    for i, (eid, text) in enumerate(ev_text):
        if text in by_text:
            report.pairs.append(LeakPair(eid, by_text[text], "exact", 1.0))
            continue
        sh = shingles(text, k)
        best: tuple[float, int] | None = None
        for j in candidates(i):
            jac = jaccard(sh, tr_sh[j])
            if jac >= threshold and (best is None or jac > best[0]):
                best = (jac, j)
        if best is not None:
            report.pairs.append(LeakPair(eid, tr_text[best[1]][0], "near", round(best[0], 4)))
    return report


def _all_pairs(n_train: int) -> Any:
    everything = range(n_train)
    return lambda i: everything


def _lsh_pairs(
    ev_sh: list[set[str]], tr_sh: list[set[str]], threshold: float, num_perm: int
) -> Any:
    from datasketch import MinHash, MinHashLSH

    def sig(sh: set[str]) -> Any:
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([s.encode() for s in sh])
        return m

    # A lower LSH threshold than the real one: LSH misses some pairs near its threshold, and
    # every candidate is confirmed with the exact Jaccard anyway.
    lsh = MinHashLSH(threshold=max(0.05, threshold - 0.2), num_perm=num_perm)
    for j, sh in enumerate(tr_sh):
        lsh.insert(str(j), sig(sh))
    found = [[int(j) for j in lsh.query(sig(sh))] for sh in ev_sh]
    return lambda i: found[i]
