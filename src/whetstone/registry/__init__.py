"""The adapter registry: versions `T@N` of a task's specialist, their lineage and stage.

Stages: `candidate` (trained, not yet trusted), `production` (served for the task name),
`retired` (was production, replaced or rolled back). Every change is an event in
`registry_events`, so the full history stays readable.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from whetstone.errors import InvalidInput, NotFound
from whetstone.project import Project
from whetstone.records import TASK_NAME, utcnow
from whetstone.store import schema

STAGES = ("candidate", "production", "retired")
REF = re.compile(r"^(?P<task>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?:@(?P<version>[0-9]{1,9}))?$")


@dataclass
class AdapterVersion:
    task: str
    version: int
    stage: str
    path: Path  # absolute, always inside the project's .whetstone/adapters/
    method: str
    base_model: str
    base_hash: str
    snapshot_id: str | None
    run_id: str | None
    info: dict[str, Any]
    created_at: datetime

    @property
    def name(self) -> str:
        return f"{self.task}@{self.version}"

    @property
    def is_peft(self) -> bool:
        return (self.path / "adapter_config.json").exists()


def parse_ref(ref: str) -> tuple[str, int | None]:
    """`T@N` or `T`. Strict, so a name from a request can never become a path outside the project."""
    m = REF.match(ref.strip())
    if not m or not TASK_NAME.match(m["task"]):
        raise InvalidInput(f"not a model name: {ref!r} (use base, a task name, or task@version)")
    return m["task"], int(m["version"]) if m["version"] else None


def adapters_dir(project: Project, task: str) -> Path:
    return project.home / "adapters" / task


def register(
    project: Project,
    task: str,
    src: Path,
    *,
    method: str,
    base_model: str,
    base_hash: str,
    snapshot_id: str | None = None,
    run_id: str | None = None,
    info: dict[str, Any] | None = None,
) -> AdapterVersion:
    """Copy a finished artefact folder in as the next version of `task`, stage candidate.

    The copy goes to a temp name and is renamed into place before the row is written, so a
    failure (a full disk, a kill) never leaves a registered version with half its files.
    """
    from whetstone.util import atomic_dir

    project.task(task)
    if not src.is_dir():
        raise NotFound(f"no artefact folder at {src}")
    t = schema.adapters
    with project.store.begin() as c:
        last = c.execute(sa.select(sa.func.max(t.c.version)).where(t.c.task == task)).scalar()
    version = int(last or 0) + 1
    dest = adapters_dir(project, task) / str(version)
    while dest.exists():  # left by a crash between copy and insert: never reuse it blindly
        version += 1
        dest = adapters_dir(project, task) / str(version)
    with atomic_dir(dest) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    now = utcnow().isoformat()
    with project.store.begin() as c:
        c.execute(
            t.insert().values(
                task=task,
                version=version,
                stage="candidate",
                path=str(dest.relative_to(project.home)),
                method=method,
                base_model=base_model,
                base_hash=base_hash,
                snapshot_id=snapshot_id,
                run_id=run_id,
                info=json.dumps(info or {}, default=str),
                created_at=now,
            )
        )
        c.execute(
            schema.registry_events.insert().values(
                task=task,
                version=version,
                action="register",
                from_stage=None,
                to_stage="candidate",
                actor=None,
                reason=None,
                created_at=now,
            )
        )
    return get(project, f"{task}@{version}")


def _row(project: Project, row: Any) -> AdapterVersion:
    return AdapterVersion(
        task=row["task"],
        version=row["version"],
        stage=row["stage"],
        path=project.home / row["path"],
        method=row["method"],
        base_model=row["base_model"],
        base_hash=row["base_hash"],
        snapshot_id=row["snapshot_id"],
        run_id=row["run_id"],
        info=json.loads(row["info"]),
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def get(project: Project, ref: str) -> AdapterVersion:
    """`T@N` exactly, or `T` for the task's production version."""
    task, version = parse_ref(ref)
    t = schema.adapters
    with project.store.begin() as c:
        if version is None:
            row = (
                c.execute(sa.select(t).where(t.c.task == task, t.c.stage == "production"))
                .mappings()
                .first()
            )
            if row is None:
                project.task(task)
                raise NotFound(
                    f"task {task!r} has no production adapter yet (promote one with whetstone promote)"
                )
        else:
            row = (
                c.execute(sa.select(t).where(t.c.task == task, t.c.version == version))
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(f"unknown adapter version {task}@{version}")
    return _row(project, row)


def production(project: Project, task: str) -> AdapterVersion | None:
    t = schema.adapters
    with project.store.begin() as c:
        row = (
            c.execute(sa.select(t).where(t.c.task == task, t.c.stage == "production"))
            .mappings()
            .first()
        )
    return _row(project, row) if row else None


def list_versions(project: Project, task: str | None = None) -> list[AdapterVersion]:
    t = schema.adapters
    q = sa.select(t).order_by(t.c.task, t.c.version)
    if task:
        q = q.where(t.c.task == task)
    with project.store.begin() as c:
        return [_row(project, r) for r in c.execute(q).mappings()]


def set_stage(
    project: Project,
    ref: str,
    stage: str,
    *,
    action: str,
    actor: str | None = None,
    reason: str | None = None,
) -> AdapterVersion:
    """Move a version to `stage`. Promoting to production retires the current production
    version in the same transaction, so a task never has two."""
    if stage not in STAGES:
        raise InvalidInput(f"unknown stage {stage!r} (choose from {', '.join(STAGES)})")
    av = get(project, ref)
    t, ev = schema.adapters, schema.registry_events
    now = utcnow().isoformat()
    with project.store.begin() as c:
        if stage == "production":
            for old in c.execute(
                sa.select(t.c.version).where(
                    t.c.task == av.task, t.c.stage == "production", t.c.version != av.version
                )
            ).all():
                c.execute(
                    t.update()
                    .where(t.c.task == av.task, t.c.version == old[0])
                    .values(stage="retired")
                )
                c.execute(
                    ev.insert().values(
                        task=av.task,
                        version=old[0],
                        action=f"{action}:replaced",
                        from_stage="production",
                        to_stage="retired",
                        actor=actor,
                        reason=reason,
                        created_at=now,
                    )
                )
        c.execute(
            t.update().where(t.c.task == av.task, t.c.version == av.version).values(stage=stage)
        )
        c.execute(
            ev.insert().values(
                task=av.task,
                version=av.version,
                action=action,
                from_stage=av.stage,
                to_stage=stage,
                actor=actor,
                reason=reason,
                created_at=now,
            )
        )
    return get(project, av.name)


def record_event(
    project: Project, ref: str, action: str, *, actor: str | None = None, reason: str | None = None
) -> None:
    """An event that changes no stage (a refused promotion), so the history still shows it."""
    av = get(project, ref)
    with project.store.begin() as c:
        c.execute(
            schema.registry_events.insert().values(
                task=av.task,
                version=av.version,
                action=action,
                from_stage=av.stage,
                to_stage=av.stage,
                actor=actor,
                reason=reason,
                created_at=utcnow().isoformat(),
            )
        )


def update_info(project: Project, ref: str, **info: Any) -> AdapterVersion:
    av = get(project, ref)
    merged = {**av.info, **info}
    t = schema.adapters
    with project.store.begin() as c:
        c.execute(
            t.update()
            .where(t.c.task == av.task, t.c.version == av.version)
            .values(info=json.dumps(merged, default=str))
        )
    return get(project, av.name)


def history(project: Project, task: str) -> list[dict[str, Any]]:
    ev = schema.registry_events
    with project.store.begin() as c:
        rows = c.execute(sa.select(ev).where(ev.c.task == task).order_by(ev.c.id)).mappings().all()
    return [dict(r) for r in rows]


def load_adapter_model(
    project: Project, ref: str, *, task: str | None = None, base_model: str | None = None
) -> tuple[Any, Any, str]:
    """Load base + adapter for inference: (model, tokenizer, "T@N")."""
    from whetstone.models import base as base_models

    av = get(project, ref)
    if task is not None and av.task != task:
        raise InvalidInput(f"{av.name} is an adapter of task {av.task!r}, not {task!r}")
    if not av.path.exists():
        raise NotFound(f"the files of {av.name} are missing ({av.path})")
    base = base_models.resolve(base_model or av.base_model)
    if base.hash != av.base_hash:
        raise InvalidInput(
            f"{av.name} was trained on base model {av.base_model} ({av.base_hash[:12]}), "
            f"not {base.name} ({base.hash[:12]})"
        )
    from whetstone.train.artefacts import load_for_inference

    model, tok = load_for_inference(av.path, base)
    return model, tok, av.name
