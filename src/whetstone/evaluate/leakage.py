"""Leakage check: is any evaluation record an exact or near duplicate of a training record?

A test input the model has (nearly) seen in training measures memory, not skill, so the
gate refuses an adapter whose snapshot has such pairs. "Duplicate" is `whetstone.neardup`'s
definition, the one curation's split uses to keep training rows away from test rows, so a
split curation made is never refused here for a pair curation could not see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from whetstone import neardup
from whetstone.records import Record


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


def find_leaks(
    eval_records: list[Record],
    train_records: list[Record],
    *,
    threshold: float = neardup.THRESHOLD,
) -> LeakageReport:
    """Every eval record that is an exact or near duplicate of a training record, with its best
    match."""
    report = LeakageReport(len(eval_records), len(train_records), threshold)
    matches = neardup.best_matches(
        [neardup.input_for_matching(r.input) for r in eval_records],
        [neardup.input_for_matching(r.input) for r in train_records],
        threshold,
    )
    report.pairs = [
        LeakPair(int(eval_records[m.i].id or 0), int(train_records[m.j].id or 0), m.kind, m.jaccard)
        for m in matches
    ]
    return report
