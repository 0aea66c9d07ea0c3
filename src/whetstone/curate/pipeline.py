"""`curate()`: run the named steps over a task's trainable records and freeze the result as a
dataset snapshot. Records in the store are never changed: every decision (left out, flagged,
redacted, up-weighted, and the text the snapshot holds where curation changed it) is kept per
record and per snapshot in `curation_decisions`. Every stage reads a snapshot's text through
`snapshots.records`, never from here."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from whetstone import snapshots
from whetstone.curate import config as config_mod
from whetstone.curate.config import STEPS, CurateConfig
from whetstone.curate.state import Decision, LossScorer, Row, Run, StepReport
from whetstone.errors import InvalidInput
from whetstone.project import Project
from whetstone.records import canonical_json
from whetstone.store import curation as stored
from whetstone.tables import Table, json_cell

# Steps that need sentence embeddings: the model is checked before any work starts.
_EMBEDDING_STEPS = {"dedup", "noise", "split", "select"}


@dataclass
class CurationResult(Table):
    snapshot: snapshots.Snapshot
    steps: list[StepReport]
    card_path: Path | None
    # Every decision of this run, as stored per record (`decisions_for`).
    decisions: list[Decision] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One row per decision: the record, the step, what it did and why."""
        return [
            {
                "record_id": d.record_id,
                "step": d.step,
                "action": d.action,
                "reason": d.reason,
                "detail": json_cell(d.detail),
            }
            for d in self.decisions
        ]


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
    *,
    scorer: LossScorer | None = None,
    **overrides: Any,
) -> CurationResult:
    """Curate `task` into a new snapshot. `overrides` are config keys (pii steps, reshuffle_test...).
    `scorer` (`whetstone.train.scoring.reference_losses`) lets the noise step score references
    under the production adapter; without it that rule is skipped, with a note."""
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
    ctx = Run(project, t, cfg, rows, scorer)
    names = [name for name in STEPS if cfg.runs(name)]
    reports = [_run_step(ctx, f"{i}/{len(names)}", name) for i, name in enumerate(names, 1)]
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
    decisions = ctx.decisions + rewritten
    _save_decisions(project, snap.id, decisions)
    card_path = None
    if cfg.card:
        from whetstone.curate import card

        card_path = card.write(ctx, snap, reports)
    return CurationResult(snapshot=snap, steps=reports, card_path=card_path, decisions=decisions)


def _run_step(ctx: Run, place: str, name: str) -> StepReport:
    """A step, with a line on stderr as it starts and ends: a curation of a large task takes
    minutes, and its slow loops (embedding, loss scoring, near-duplicate search) show bars."""
    from whetstone.progress import clock, console

    console.print(f"[dim]curate {place}: {name}[/dim]", highlight=False)
    report = ctx.run_step(name, _step_fn(name))
    console.print(
        f"[dim]curate {place}: {name} done in {clock(report.seconds)} · {report.after} rows[/dim]",
        highlight=False,
    )
    return report


def _rewritten(ctx: Run) -> list[Decision]:
    """One decision per snapshot row whose curated text differs from the store: the text the
    snapshot holds for it, which training, validation and evaluation use (`snapshots.records`)."""
    out = []
    for r in ctx.rows:
        detail = snapshots.held_text(r.record, r.input, r.reference)
        if detail:
            out.append(
                Decision(
                    r.id,
                    "pipeline",
                    snapshots.HELD_TEXT,
                    "curated text differs from the store",
                    detail,
                )
            )
    return out


def _save_decisions(project: Project, snapshot_id: str, decisions: list[Decision]) -> None:
    stored.replace_decisions(project.store, snapshot_id, [asdict(d) for d in decisions])


def decisions_for(project: Project, record_id: int) -> list[dict[str, Any]]:
    """Why a record is in or out of each curated snapshot, newest snapshot first."""
    return [
        {
            "snapshot": r["snapshot_id"],
            "step": r["step"],
            "action": r["action"],
            "reason": r["reason"],
            "detail": r["detail"],
        }
        for r in stored.record_decisions(project.store, record_id)
    ]
