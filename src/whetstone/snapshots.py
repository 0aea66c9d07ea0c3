"""Dataset snapshots: a frozen list of record ids with their split, addressed by content hash.

A snapshot hashes the ids, splits, weights *and* the references it froze, so a later correction
of a record makes a new snapshot rather than silently changing an old one.

What a snapshot holds, per record: its split, its weight, and the text (input and reference)
that every stage uses. That text is the store's, except where curation changed it
(normalised, PII redacted: see `curate.pii` for what redaction may change); then the
snapshot holds curation's text, kept as the record's `rewritten` curation decision and part of
the content hash. Training, validation and evaluation all read it through `records`, never
from the store or from `curate`, so a model is scored on the very text it was taught with.
The store keeps every record's original.

The default split (`snapshot_task`, what `whetstone train` takes without `curate`) is
leakage-free by the gate's own definition: exact and near duplicates (`whetstone.neardup` at
its `THRESHOLD`) are grouped and each group lands on one side, and no training or validation
record near-duplicates a test record of any snapshot of the task. It is stable across
snapshots: a group's split is decided by a hash of its members' normalised input text, test
records stay test, so numbers stay comparable from one flywheel turn to the next. Only human or
imported references (`records.human_reference`) are ever tested or validated on; a teacher's
labels train.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from whetstone import neardup
from whetstone.errors import InvalidInput, NotFound
from whetstone.project import Project
from whetstone.records import (
    Input,
    Message,
    Record,
    Source,
    Status,
    canonical_json,
    human_reference,
    utcnow,
)
from whetstone.store import snapshots as stored
from whetstone.store.curation import decision_details

SPLITS = ("train", "validation", "test")
# Records with these tags are held out: they may be evaluated on, never trained on.
HELD_OUT_TAGS = {"heldout", "hard-eval"}


@dataclass
class Snapshot:
    id: str
    task: str
    created_at: datetime
    info: dict[str, Any]
    splits: dict[str, list[int]] = field(default_factory=dict)
    weights: dict[int, float] = field(default_factory=dict)

    def ids(self, split: str) -> list[int]:
        if split == "all":
            return [i for s in SPLITS for i in self.splits.get(s, [])]
        if split not in SPLITS:
            raise InvalidInput(f"unknown split {split!r} (choose from {', '.join(SPLITS)}, all)")
        return list(self.splits.get(split, []))

    def counts(self) -> dict[str, int]:
        return {s: len(self.splits.get(s, [])) for s in SPLITS}


def split_bucket(text: str) -> float:
    """A number in [0, 1) fixed by the normalised text: the record's place in the split."""
    h = hashlib.sha256(neardup.dedup_key_text(text).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def is_held_out(rec: Record) -> bool:
    """Tagged as held-out ground truth: always test, never trained on."""
    return bool(HELD_OUT_TAGS & set(rec.tags))


def trainable(rec: Record) -> bool:
    """Has a trustworthy reference and may be used for training or evaluation."""
    if rec.reference is None or rec.status == Status.rejected:
        return False
    # A model's own unreviewed answer is not ground truth.
    return not (rec.source == Source.production and rec.status == Status.unreviewed)


def group_bucket(buckets: Iterable[float]) -> float:
    """A near-duplicate group's place in the split, from its members' `split_bucket`s: the
    lowest of k distinct buckets mapped back onto [0, 1) (1 - (1 - min)^k), so a group of any
    size lands in test with the test fraction (the bare minimum would favour test for large
    groups) and a group of one keeps its record's own bucket. Exact copies share a bucket."""
    distinct = set(buckets)
    return 1 - (1 - min(distinct)) ** len(distinct)


def default_assignment(
    records: list[Record],
    *,
    validation: float = 0.1,
    test: float = 0.2,
    pinned: Collection[int] = (),
    trained: Collection[int] = (),
) -> dict[int, str]:
    """Hash split by near-duplicate group (`neardup.groups`): every group on one side, placed
    by its human references' `group_bucket` (test first, then validation, the rest train).
    Teacher and synthetic labels (not `human_reference`) only ever train: a group of them
    alone trains, and in a test or validation group they are left out of the result.

    A group holding a held-out record or one of `pinned` (test in an earlier snapshot) keeps
    those in test and leaves its other members out of the result: they near-duplicate a test
    record, so they may not be trained on, and joining test would change the test set (as in
    curation's split). A group holding one of `trained` (trained on by an earlier snapshot)
    never joins test: that snapshot's model would be scored on what it learnt."""
    if not 0 <= validation < 1 or not 0 <= test < 1 or validation + test >= 1:
        raise InvalidInput("split fractions must be in [0, 1) and leave room for training")
    out: dict[int, str] = {}
    texts = [neardup.input_for_matching(r.input) for r in records]
    for members in neardup.groups(texts):
        group = [records[i] for i in members]
        ids = [int(r.id or 0) for r in group]
        # Only human references are scored on (`human_reference`): they alone decide where a
        # group goes, so a teacher label arriving near a record never moves it.
        humans = [r for r in group if human_reference(r)]
        tests = [int(r.id or 0) for r in humans if r.id in pinned or is_held_out(r)]
        if tests:
            out.update((rid, "test") for rid in tests)
            continue
        b = group_bucket(split_bucket(r.input_text) for r in humans) if humans else 1.0
        if b < test:
            split = "train" if any(rid in trained for rid in ids) else "test"
        elif b < test + validation:
            split = "validation"
        else:
            split = "train"
        # Teacher labels train only: in a test or validation group they near-duplicate a
        # record scored on, so they are left out like any other leak.
        placed = group if split == "train" else humans
        out.update((int(r.id or 0), split) for r in placed if not is_held_out(r))
    return out


def freeze(
    project: Project,
    task: str,
    assignment: dict[int, str],
    *,
    info: dict[str, Any] | None = None,
    weights: dict[int, float] | None = None,
    fingerprint: str | None = None,
) -> Snapshot:
    """Store a snapshot (idempotent: the same content gives the same id). `fingerprint` names
    anything else the content depends on (curation's rewritten texts), so it changes the id."""
    project.task(task)
    bad = {s for s in assignment.values() if s not in SPLITS}
    if bad:
        raise InvalidInput(f"unknown split(s) {sorted(bad)}")
    weights = weights or {}
    recs = {r.id: r for r in project.store.iter_records(task, ids=list(assignment))}
    missing = set(assignment) - set(recs)
    if missing:
        raise NotFound(f"snapshot names records that do not exist: {sorted(missing)[:5]}")
    h = hashlib.sha256(task.encode())
    for rid in sorted(assignment):
        r = recs[rid]
        h.update(
            canonical_json([rid, assignment[rid], weights.get(rid, 1.0), r.reference]).encode()
        )
    if fingerprint:
        h.update(fingerprint.encode())
    sid = h.hexdigest()[:16]
    info = dict(info or {})
    info.setdefault("counts", {s: sum(1 for v in assignment.values() if v == s) for s in SPLITS})
    members = [(rid, s, float(weights.get(rid, 1.0))) for rid, s in assignment.items()]
    stored.add_snapshot(project.store, sid, task, info, members, now=utcnow().isoformat())
    return load(project, sid)


def load(project: Project, snapshot_id: str) -> Snapshot:
    """Load by id or unique id prefix."""
    row, members = stored.snapshot_row(project.store, snapshot_id)
    splits: dict[str, list[int]] = {s: [] for s in SPLITS}
    weights: dict[int, float] = {}
    for rid, split, weight in members:
        splits[split].append(rid)
        if weight != 1.0:
            weights[rid] = weight
    return Snapshot(
        id=row["id"],
        task=row["task"],
        created_at=datetime.fromisoformat(row["created_at"]),
        info=row["info"],
        splits=splits,
        weights=weights,
    )


def latest(project: Project, task: str) -> Snapshot | None:
    sid = stored.latest_snapshot_id(project.store, task)
    return load(project, sid) if sid else None


def list_snapshots(project: Project, task: str | None = None) -> list[Snapshot]:
    return [load(project, i) for i in stored.snapshot_ids(project.store, task)]


# The curation decision that holds a record's text in a snapshot where it differs from the store.
HELD_TEXT = "rewritten"


def held_text(record: Record, inp: Input, reference: str) -> dict[str, Any]:
    """The detail of a `HELD_TEXT` decision: the parts of `inp`/`reference` that differ from
    the store's `record` ({} when neither does)."""
    detail: dict[str, Any] = {}
    if inp != record.input:
        detail["input"] = (
            inp if isinstance(inp, str) else [m.model_dump(exclude_none=True) for m in inp]
        )
    if reference != record.reference:
        detail["reference"] = reference
    return detail


def _as_held(rec: Record, detail: dict[str, Any] | None) -> Record:
    if not detail:
        return rec
    update: dict[str, Any] = {}
    if "input" in detail:
        inp = detail["input"]
        update["input"] = inp if isinstance(inp, str) else [Message.model_validate(m) for m in inp]
    if "reference" in detail:
        update["reference"] = detail["reference"]
    return rec.model_copy(update=update)


def records(project: Project, snap: Snapshot, split: str) -> list[Record]:
    """The records of a snapshot split with the text the snapshot holds (see the module's
    docstring): what training, validation and evaluation use. Copies: the store is untouched."""
    ids = snap.ids(split)
    if not ids:
        return []
    by_id = {r.id: r for r in project.store.iter_records(snap.task, ids=ids)}
    held = decision_details(project.store, snap.id, HELD_TEXT)
    return [_as_held(by_id[i], held.get(i)) for i in ids if i in by_id]


def test_ids_in_use(project: Project, task: str) -> set[int]:
    """Every record any snapshot of the task has put in its test split: never train on them."""
    return {rid for rid, _ in stored.record_splits(project.store, task, "test")}


def held_out_ids(project: Project, task: str) -> set[int]:
    """The records nothing may be trained on or near-duplicate in training: every earlier test
    record of the task and every held-out record."""
    ids = test_ids_in_use(project, task)
    for tag in HELD_OUT_TAGS:
        ids |= {r.id for r in project.store.iter_records(task, tag=tag) if r.id is not None}
    return ids


def _near_tests_elsewhere(
    project: Project, task: str, recs: list[Record], assignment: dict[int, str]
) -> set[int]:
    """The training/validation records of `assignment` that duplicate a test or held-out
    record outside `recs` (one no longer trainable, or an earlier snapshot's): what the gate's
    leakage rule would flag, found by its own definition (`neardup.best_matches`)."""
    outside = held_out_ids(project, task) - {r.id for r in recs}
    if not outside:
        return set()
    tests = project.store.iter_records(task, ids=sorted(outside))
    others = [r for r in recs if assignment.get(int(r.id or 0)) in ("train", "validation")]
    found = neardup.best_matches(
        [neardup.input_for_matching(r.input) for r in others],
        [neardup.input_for_matching(r.input) for r in tests],
    )
    return {int(others[m.i].id or 0) for m in found}


def snapshot_task(
    project: Project,
    task: str,
    *,
    validation: float = 0.1,
    test: float = 0.2,
    info: dict[str, Any] | None = None,
) -> Snapshot:
    """The default snapshot, without curation: every trainable record, split by near-duplicate
    group (`default_assignment`), with the test records of earlier snapshots kept in test.
    Records that near-duplicate a test record are left out and counted
    (`info["left_out_near_test"]`): `whetstone curate` can clean such data more carefully."""
    recs = [r for r in project.store.iter_records(task, has_reference=True) if trainable(r)]
    if not recs:
        raise InvalidInput(f"task {task!r} has no records with a reference to train or evaluate on")
    earlier = stored.record_splits(project.store, task)
    assignment = default_assignment(
        recs,
        validation=validation,
        test=test,
        pinned={rid for rid, s in earlier if s == "test"},
        trained={rid for rid, s in earlier if s != "test"},
    )
    for rid in _near_tests_elsewhere(project, task, recs, assignment):
        del assignment[rid]
    return freeze(
        project,
        task,
        assignment,
        info={
            "method": "default-split",
            "validation": validation,
            "test": test,
            "near_duplicate": neardup.THRESHOLD,
            "left_out_near_test": len(recs) - len(assignment),
            **(info or {}),
        },
    )
