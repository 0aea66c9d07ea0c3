"""`curate()`: run the named steps over a task's trainable records and freeze the result as a
dataset snapshot. Records in the store are never changed: every decision (left out, flagged,
redacted, up-weighted, and the curated text training must use) is kept per record and per
snapshot in `curation_decisions`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from whetstone import snapshots
from whetstone.curate import config as config_mod
from whetstone.curate.config import STEPS, CurateConfig
from whetstone.curate.state import Decision, Row, Run, StepReport
from whetstone.errors import InvalidInput
from whetstone.project import Project
from whetstone.records import Input, Message, Record, canonical_json
from whetstone.store import schema

# Steps that need sentence embeddings: the model is checked before any work starts.
_EMBEDDING_STEPS = {"dedup", "noise", "split", "select"}


@dataclass
class CurationResult:
    snapshot: snapshots.Snapshot
    steps: list[StepReport]
    card_path: Path | None


def _step_fn(name: str) -> Any:
    import importlib

    module = {
        "validate": "normalise",
        "filters": "filters",
        "pii": "pii",
        "dedup": "dedup",
        "noise": "noise",
        "hard": "hard",
        "split": "split",
        "select": "select",
    }[name]
    return importlib.import_module(f"whetstone.curate.{module}").run


def _input_json(inp: Input) -> Any:
    return inp if isinstance(inp, str) else [m.model_dump(exclude_none=True) for m in inp]


def resolve_config(
    project: Project, config: CurateConfig | dict[str, Any] | str | Path | None, **overrides: Any
) -> CurateConfig:
    """A CurateConfig from an object, a dict, a YAML path or the project's `curate:` section,
    with non-None overrides (CLI flags) applied and validated like the rest."""
    if isinstance(config, CurateConfig):
        data = {**config.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        return config_mod.parse(data, "curation config")
    if isinstance(config, dict):
        data = {**config, **{k: v for k, v in overrides.items() if v is not None}}
        return config_mod.parse(data, "curation config")
    return config_mod.load(project, config, **overrides)


def curate(
    project: Project,
    task: str,
    config: CurateConfig | dict[str, Any] | str | Path | None = None,
    budget: int | None = None,
    **overrides: Any,
) -> CurationResult:
    """Curate `task` into a new snapshot. `overrides` are config keys (pii steps, reshuffle_test...)."""
    from whetstone.curate.split import prior_splits

    cfg = resolve_config(project, config, budget=budget, **overrides)
    t = project.task(task)
    if _EMBEDDING_STEPS & {s for s in STEPS if cfg.runs(s)}:
        from whetstone.models import embeddings

        embeddings.load(cfg.embedding_model or project.embedding_model)  # fail early, clearly
    recs = [
        r for r in project.store.iter_records(task, has_reference=True) if snapshots.trainable(r)
    ]
    if not recs:
        raise InvalidInput(f"task {task!r} has no records with a reference to curate")
    prior = {} if cfg.reshuffle_test else prior_splits(project, task)
    rows = [
        Row(record=r, input=r.input, reference=r.reference or "", prior_split=prior.get(r.id or -1))
        for r in recs
    ]
    ctx = Run(project, t, cfg, rows)
    reports = [ctx.run_step(name, _step_fn(name)) for name in STEPS if cfg.runs(name)]
    if not ctx.rows:
        raise InvalidInput(f"curation left no records of task {task!r}: see the step reasons")
    rewritten = _rewritten(ctx)
    fingerprint = hashlib.sha256(
        canonical_json(
            [cfg.model_dump(), sorted((d.record_id, d.detail) for d in rewritten)]
        ).encode()
    ).hexdigest()
    info = {
        "method": "curate",
        "config": cfg.model_dump(),
        "embedding_model": ctx.embedding_model,
        "validation": cfg.validation,
        "test": cfg.test,
        "steps": [r.as_dict() for r in reports],
    }
    snap = snapshots.freeze(
        project,
        task,
        {r.id: r.split or "train" for r in ctx.rows},
        info=info,
        weights={r.id: r.weight for r in ctx.rows if r.weight != 1.0},
        fingerprint=fingerprint,
    )
    _save_decisions(project, snap.id, ctx.decisions + rewritten)
    card_path = None
    if cfg.card:
        from whetstone.curate import card

        card_path = card.write(ctx, snap, reports)
    return CurationResult(snapshot=snap, steps=reports, card_path=card_path)


def _rewritten(ctx: Run) -> list[Decision]:
    """One decision per snapshot row whose curated text differs from the store: the text
    training must use instead (see `training_records`)."""
    out = []
    for r in ctx.rows:
        detail = {}
        if r.input != r.record.input:
            detail["input"] = _input_json(r.input)
        if r.reference != r.record.reference:
            detail["reference"] = r.reference
        if detail:
            out.append(
                Decision(
                    r.id, "pipeline", "rewritten", "curated text differs from the store", detail
                )
            )
    return out


def _save_decisions(project: Project, snapshot_id: str, decisions: list[Decision]) -> None:
    t = schema.curation_decisions
    rows = [
        {
            "snapshot_id": snapshot_id,
            "record_id": d.record_id,
            "step": d.step,
            "action": d.action,
            "reason": d.reason,
            "detail": json.dumps(d.detail, default=str, ensure_ascii=False),
        }
        for d in decisions
    ]
    with project.store.begin() as c:
        # The same content gives the same snapshot: its decisions are replaced, not doubled.
        c.execute(t.delete().where(t.c.snapshot_id == snapshot_id))
        for i in range(0, len(rows), 5000):
            c.execute(t.insert(), rows[i : i + 5000])


def decisions_for(project: Project, record_id: int) -> list[dict[str, Any]]:
    """Why a record is in or out of each curated snapshot, newest snapshot first."""
    d, s = schema.curation_decisions, schema.snapshots
    q = (
        sa.select(d.c.snapshot_id, s.c.created_at, d.c.step, d.c.action, d.c.reason, d.c.detail)
        .join(s, s.c.id == d.c.snapshot_id)
        .where(d.c.record_id == record_id)
        .order_by(s.c.created_at.desc(), d.c.id)
    )
    with project.store.begin() as c:
        rows = c.execute(q).mappings().all()
    return [
        {
            "snapshot": r["snapshot_id"],
            "step": r["step"],
            "action": r["action"],
            "reason": r["reason"],
            "detail": json.loads(r["detail"]),
        }
        for r in rows
    ]


def rewrites(project: Project, snapshot_id: str) -> dict[int, dict[str, Any]]:
    """Curated texts of a snapshot's records: id -> {"input"?, "reference"?}."""
    d = schema.curation_decisions
    q = sa.select(d.c.record_id, d.c.detail).where(
        d.c.snapshot_id == snapshot_id, d.c.action == "rewritten"
    )
    with project.store.begin() as c:
        return {rid: json.loads(detail) for rid, detail in c.execute(q)}


def training_records(project: Project, snap: snapshots.Snapshot, split: str) -> list[Record]:
    """The records of a snapshot split as curation left them (normalised, PII redacted): copies,
    the store is untouched. For snapshots made without curation this equals snapshots.records."""
    recs = snapshots.records(project, snap, split)
    changes = rewrites(project, snap.id)
    out = []
    for r in recs:
        change = changes.get(r.id or -1)
        if change:
            update: dict[str, Any] = {}
            if "input" in change:
                inp = change["input"]
                update["input"] = (
                    inp if isinstance(inp, str) else [Message.model_validate(m) for m in inp]
                )
            if "reference" in change:
                update["reference"] = change["reference"]
            r = r.model_copy(update=update)
        out.append(r)
    return out
