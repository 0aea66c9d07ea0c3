"""One definition of "near-duplicate of a test row": curation's split and the gate's leakage
rule agree on every pair, so the gate never refuses a split curation made."""

from __future__ import annotations

import random
from typing import Any

import pytest

from whetstone import neardup, snapshots
from whetstone.curate import curate, decisions_for
from whetstone.evaluate.leakage import find_leaks
from whetstone.records import Record, Source, Status

THRESHOLD = 0.7
_WORDS = [
    "".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3 + i % 6))
    for i in range(400)
]


def _sentence(rng: random.Random, n: int = 30) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _variant(rng: random.Random, text: str, changes: int) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), changes):
        words[i] = rng.choice(_WORDS)
    return " ".join(words)


def _planted(seed: int, bases: int, per_base: int) -> list[str]:
    """Base sentences, each followed by variants whose Jaccard with it spreads around the
    threshold (one to eight of thirty words changed), and an exact copy in other case."""
    rng = random.Random(seed)
    texts = []
    for _ in range(bases):
        base = _sentence(rng)
        texts.append(base)
        texts += [_variant(rng, base, rng.randint(1, 8)) for _ in range(per_base)]
        texts.append(base.upper())
    return texts


@pytest.mark.parametrize("limit", [10**9, 0])  # all pairs, then MinHash LSH candidates
def test_split_groups_exactly_the_pairs_the_leakage_rule_flags(
    monkeypatch: Any, limit: int
) -> None:
    monkeypatch.setattr("whetstone.neardup.ALL_PAIRS_LIMIT", limit)
    texts = _planted(1, bases=6, per_base=6)
    recs = [Record(id=i, task="t", input=t) for i, t in enumerate(texts)]
    grouped = {(m.i, m.j) for m in neardup.pairs_within(texts, THRESHOLD)}
    flagged = {
        (i, j)
        for i in range(len(recs))
        for j in range(i + 1, len(recs))
        if find_leaks([recs[i]], [recs[j]], threshold=THRESHOLD).pairs
    }
    # Exact copies are linked to the first text of their key only; the rule sees every copy.
    keys = [neardup.dedup_key_text(t) for t in texts]
    flagged_near = {(i, j) for i, j in flagged if keys[i] != keys[j]}
    assert {(i, j) for i, j in grouped if keys[i] != keys[j]} == flagged_near
    assert flagged_near  # near pairs were planted
    assert any(  # the planted set has pairs just under the threshold too
        THRESHOLD - 0.1 < neardup.similarity(texts[i], texts[j]) < THRESHOLD
        for i in range(len(texts))
        for j in range(i + 1, len(texts))
    )


def test_contamination_removes_exactly_what_the_leakage_rule_would_flag(project: Any) -> None:
    p = project
    p.create_task("qa", "generate")
    rng = random.Random(7)
    cfg = {"steps": ["validate", "split"], "group_jaccard": THRESHOLD, "cosine": 0.999}

    def add(texts: list[str]) -> list[int]:
        recs = [
            Record(
                task="qa", input=t, reference="a", source=Source.imported, status=Status.accepted
            )
            for t in texts
        ]
        return [i for i in p.store.add_records(recs) if i is not None]

    add([_sentence(rng) for _ in range(60)])
    first = curate(p, "qa", cfg).snapshot
    tests = snapshots.records(p, first, "test")
    # Newcomers near the threshold of each test row: they cannot join test (it stays put), so
    # they go to training unless the contamination check removes them.
    newcomers = add(
        [_variant(rng, str(t.input), changes) for t in tests for changes in (2, 3, 4, 5, 6)]
    )
    second = curate(p, "qa", cfg).snapshot
    contaminated = {
        rid
        for rid in newcomers
        for d in decisions_for(p, rid)
        if d["snapshot"] == second.id
        and d["reason"].endswith("(contamination)")
        and not d["reason"].startswith("semantic")
    }
    test_now = snapshots.records(p, second, "test")
    in_test = {r.id for r in test_now}
    assert in_test >= {r.id for r in tests}  # the test split stays put (newcomers may join)
    leaks = {
        rid
        for rid in newcomers
        if rid not in in_test and find_leaks(test_now, [p.record(rid)], threshold=THRESHOLD).pairs
    }
    assert contaminated and contaminated == leaks
    train = snapshots.records(p, second, "train") + snapshots.records(p, second, "validation")
    assert find_leaks(test_now, train, threshold=THRESHOLD).pairs == []
