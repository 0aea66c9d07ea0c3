"""The registry's rows: adapter versions (`adapters`) and their history (`registry_events`).

Rows come back as dicts of column values with the JSON `info` decoded; `AdapterVersion`
and the stage rules live in `whetstone.registry`, which calls these."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from whetstone.store import schema

if TYPE_CHECKING:
    from whetstone.store import Store

_A, _EV = schema.adapters, schema.registry_events


def _adapter(row: Any) -> dict[str, Any]:
    return {**row, "info": json.loads(row["info"])}


def add_version(
    store: Store,
    task: str,
    fields: dict[str, Any],
    place: Callable[[int], tuple[int, str]],
    *,
    now: str,
) -> int:
    """Register the next version of `task` as a candidate, and its `register` event, in one
    transaction; return its number. `fields` are the other columns (`info` as a dict).

    `place(version)` is called inside the transaction with the first free number, puts the
    files in place and returns the version it used (it may skip numbers whose folder exists)
    and the files' path. The task's row is locked first, so concurrent registrations take
    their turns (on SQLite the write transaction already does) instead of racing to one
    number. On PostgreSQL the lock is FOR NO KEY UPDATE, which captures of the task (their
    foreign-key checks take KEY SHARE) do not wait for."""
    with store.begin() as c:
        lock = sa.select(schema.tasks.c.name).where(schema.tasks.c.name == task)
        c.execute(lock.with_for_update(key_share=True))
        last = c.execute(sa.select(sa.func.max(_A.c.version)).where(_A.c.task == task)).scalar()
        version, path = place(int(last or 0) + 1)
        values = {**fields, "info": json.dumps(fields.get("info") or {}, default=str)}
        c.execute(
            _A.insert().values(
                task=task, version=version, stage="candidate", path=path, created_at=now, **values
            )
        )
        _add_event(c, task, version, "register", None, "candidate", None, None, now)
    return version


def version_row(store: Store, task: str, version: int) -> dict[str, Any] | None:
    with store.read() as c:
        row = c.execute(sa.select(_A).where(_A.c.task == task, _A.c.version == version))
        found = row.mappings().first()
    return _adapter(found) if found else None


def production_row(store: Store, task: str) -> dict[str, Any] | None:
    with store.read() as c:
        row = c.execute(sa.select(_A).where(_A.c.task == task, _A.c.stage == "production"))
        found = row.mappings().first()
    return _adapter(found) if found else None


def version_rows(store: Store, task: str | None = None) -> list[dict[str, Any]]:
    q = sa.select(_A).order_by(_A.c.task, _A.c.version)
    if task:
        q = q.where(_A.c.task == task)
    with store.read() as c:
        return [_adapter(r) for r in c.execute(q).mappings()]


def production_versions(store: Store) -> dict[str, int]:
    """Every task's production version: what serving routes a task name to."""
    q = sa.select(_A.c.task, _A.c.version).where(_A.c.stage == "production")
    with store.read() as c:
        return {r[0]: r[1] for r in c.execute(q)}


def generation(store: Store) -> int:
    """A number that changes whenever the registry does (any stage change adds an event):
    serving polls it to learn of promotions. The count, not the newest id: on PostgreSQL ids
    can commit out of order, and events are never deleted, so every commit raises the count."""
    with store.read() as c:
        return int(c.execute(sa.select(sa.func.count()).select_from(_EV)).scalar() or 0)


def set_stage(
    store: Store,
    task: str,
    version: int,
    from_stage: str,
    stage: str,
    *,
    action: str,
    actor: str | None,
    reason: str | None,
    now: str,
) -> None:
    """Move one version to `stage`, with its event. Moving to production retires the current
    production version in the same transaction, so a task never has two."""
    with store.begin() as c:
        if stage == "production":
            replaced = c.execute(
                sa.select(_A.c.version).where(
                    _A.c.task == task, _A.c.stage == "production", _A.c.version != version
                )
            ).all()
            for (old,) in replaced:
                c.execute(
                    _A.update()
                    .where(_A.c.task == task, _A.c.version == old)
                    .values(stage="retired")
                )
                _add_event(
                    c, task, old, f"{action}:replaced", "production", "retired", actor, reason, now
                )
        c.execute(_A.update().where(_A.c.task == task, _A.c.version == version).values(stage=stage))
        _add_event(c, task, version, action, from_stage, stage, actor, reason, now)


def add_event(
    store: Store,
    task: str,
    version: int,
    action: str,
    stage: str,
    *,
    actor: str | None,
    reason: str | None,
    now: str,
) -> None:
    """An event that changes no stage (a refused promotion)."""
    with store.begin() as c:
        _add_event(c, task, version, action, stage, stage, actor, reason, now)


def _add_event(
    c: sa.Connection,
    task: str,
    version: int,
    action: str,
    from_stage: str | None,
    to_stage: str | None,
    actor: str | None,
    reason: str | None,
    now: str,
) -> None:
    c.execute(
        _EV.insert().values(
            task=task,
            version=version,
            action=action,
            from_stage=from_stage,
            to_stage=to_stage,
            actor=actor,
            reason=reason,
            created_at=now,
        )
    )


def set_info(store: Store, task: str, version: int, info: dict[str, Any]) -> None:
    with store.begin() as c:
        c.execute(
            _A.update()
            .where(_A.c.task == task, _A.c.version == version)
            .values(info=json.dumps(info, default=str))
        )


def events(store: Store, task: str) -> list[dict[str, Any]]:
    """Every registry event of `task`, oldest first."""
    with store.read() as c:
        rows = c.execute(sa.select(_EV).where(_EV.c.task == task).order_by(_EV.c.id))
        return [dict(r) for r in rows.mappings()]
