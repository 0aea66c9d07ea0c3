"""The default snapshot (`whetstone train` without `curate`) is leakage-free by the gate's own
definition: near-duplicates land on one side, and nothing near a test record is trained on."""

from __future__ import annotations

import random
from typing import Any

from whetstone import neardup, snapshots
from whetstone.demo_data import load_demo_data
from whetstone.evaluate.leakage import find_leaks
from whetstone.records import Record, Source, Status

_WORDS = [
    "".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4 + i % 5))
    for i in range(300)
]


def _sentence(rng: random.Random, n: int = 30) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def _near(rng: random.Random, text: str) -> str:
    """A near duplicate at the gate's threshold (one word of thirty changed), never exact."""
    words = text.split()
    i = rng.randrange(len(words))
    words[i] = next(w for w in rng.sample(_WORDS, 5) if w != words[i])
    out = " ".join(words)
    assert neardup.similarity(text, out) >= neardup.THRESHOLD
    assert neardup.dedup_key_text(out) != neardup.dedup_key_text(text)
    return out


def _add(p: Any, texts: list[str], reference: str | None = "a") -> list[int]:
    recs = [
        Record(
            task="qa", input=t, reference=reference, source=Source.imported, status=Status.accepted
        )
        for t in texts
    ]
    return [i for i in p.store.add_records(recs) if i is not None]


def _leaks(p: Any, snap: Any) -> list[Any]:
    test = snapshots.records(p, snap, "test")
    trained = snapshots.records(p, snap, "train") + snapshots.records(p, snap, "validation")
    return find_leaks(test, trained).pairs


def test_near_duplicate_pairs_land_on_one_side(project: Any) -> None:
    p = project
    p.create_task("qa", "generate")
    rng = random.Random(5)
    bases = [_sentence(rng) for _ in range(80)]
    pairs = [(b, _near(rng, b)) for b in bases]
    ids = _add(p, [t for pair in pairs for t in pair])
    snap = snapshots.snapshot_task(p, "qa")
    split_of = {rid: s for s in snapshots.SPLITS for rid in snap.ids(s)}
    id_pairs = list(zip(ids[::2], ids[1::2], strict=True))
    assert all(split_of[a] == split_of[b] for a, b in id_pairs)
    assert _leaks(p, snap) == []
    assert snap.counts()["test"] and snap.info["left_out_near_test"] == 0
    # Split record by record (the old default), some pairs straddle test and training.
    assert any(
        (snapshots.split_bucket(a) < 0.2) != (snapshots.split_bucket(b) < 0.2) for a, b in pairs
    )


def test_the_split_is_deterministic(project: Any) -> None:
    p = project
    p.create_task("qa", "generate")
    rng = random.Random(9)
    bases = [_sentence(rng) for _ in range(40)]
    _add(p, bases + [_near(rng, b) for b in bases[::3]])
    recs = p.records("qa")
    first = snapshots.default_assignment(recs)
    assert snapshots.default_assignment(list(reversed(recs))) == first
    assert snapshots.snapshot_task(p, "qa").id == snapshots.snapshot_task(p, "qa").id


def test_near_duplicates_of_earlier_test_records_are_left_out(project: Any) -> None:
    p = project
    p.create_task("qa", "generate")
    rng = random.Random(11)
    others = _add(p, [_sentence(rng) for _ in range(20)])
    in_set, gone = _sentence(rng), _sentence(rng)
    (kept_test,) = _add(p, [in_set])
    # A test record of an earlier snapshot that is no longer trainable (no reference).
    (old_test,) = _add(p, [gone], reference=None)
    snapshots.freeze(
        p, "qa", {**dict.fromkeys(others, "train"), kept_test: "test", old_test: "test"}
    )
    newcomers = _add(p, [_near(rng, in_set), _near(rng, gone)])
    snap = snapshots.snapshot_task(p, "qa")
    assert kept_test in snap.ids("test")  # the test split stays put
    assert not set(newcomers) & set(snap.ids("all"))  # neither trained on nor joining test
    assert snap.info["left_out_near_test"] == 2
    assert set(others) <= set(snap.ids("all"))
    assert find_leaks([p.record(old_test)], snapshots.records(p, snap, "train")).pairs == []


def test_default_snapshot_of_the_demo_data_has_no_leaks(project: Any) -> None:
    task, added = load_demo_data(project)
    snap = snapshots.snapshot_task(project, task.name)
    assert _leaks(project, snap) == []
    counts = snap.counts()
    total = sum(counts.values())
    # Groups of near-duplicates move whole; the fractions stay about the requested ones.
    assert abs(counts["test"] / total - 0.2) < 0.03
    assert abs(counts["validation"] / total - 0.1) < 0.03
    assert total + snap.info["left_out_near_test"] == added
