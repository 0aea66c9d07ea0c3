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

The test split is stable across snapshots: a record's split is decided by a hash of its
normalised input text, so the same input always lands in the same split and numbers stay
comparable from one flywheel turn to the next.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from whetstone.errors import InvalidInput, NotFound
from whetstone.neardup import dedup_key_text
from whetstone.project import Project
from whetstone.records import Input, Message, Record, Source, Status, canonical_json, utcnow
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
    h = hashlib.sha256(dedup_key_text(text).encode()).digest()
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


def default_assignment(
    records: list[Record], *, validation: float = 0.1, test: float = 0.2
) -> dict[int, str]:
    """Hash split: test first (stable), then validation, the rest train."""
    if not 0 <= validation < 1 or not 0 <= test < 1 or validation + test >= 1:
        raise InvalidInput("split fractions must be in [0, 1) and leave room for training")
    out: dict[int, str] = {}
    for r in records:
        assert r.id is not None
        b = split_bucket(r.input_text)
        if b < test or is_held_out(r):
            out[r.id] = "test"
        elif b < test + validation:
            out[r.id] = "validation"
        else:
            out[r.id] = "train"
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


def snapshot_task(
    project: Project,
    task: str,
    *,
    validation: float = 0.1,
    test: float = 0.2,
    info: dict[str, Any] | None = None,
) -> Snapshot:
    """The default snapshot, without curation: every trainable record, hash-split, with the
    test records of earlier snapshots kept in test."""
    recs = [r for r in project.store.iter_records(task, has_reference=True) if trainable(r)]
    if not recs:
        raise InvalidInput(f"task {task!r} has no records with a reference to train or evaluate on")
    assignment = default_assignment(recs, validation=validation, test=test)
    for rid in test_ids_in_use(project, task) & set(assignment):
        assignment[rid] = "test"
    return freeze(
        project,
        task,
        assignment,
        info={"method": "default-split", "validation": validation, "test": test, **(info or {})},
    )
