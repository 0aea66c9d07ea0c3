"""The adapter registry: versions `T@N` of a task's specialist, their lineage and stage.

Stages: `candidate` (trained, not yet trusted), `production` (served for the task name),
`retired` (was production, replaced or rolled back). Every change is an event in
`registry_events`, so the full history stays readable. Production changes only here:
`promote` (once the gate in `evaluate.gate` has decided), `rollback` to an earlier
production version, and `production_stack`, the order they served in.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whetstone.errors import InvalidInput, NotFound
from whetstone.project import Project
from whetstone.records import TASK_NAME, utcnow
from whetstone.store import registry as stored

if TYPE_CHECKING:
    from whetstone.models.types import InferenceModel, Tokenizer

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
    project.task(task)
    if not src.is_dir():
        raise NotFound(f"no artefact folder at {src}")
    # Copied under a temp name first, so the transaction that numbers the version (and holds
    # the store's write lock) only renames it.
    with tempfile.TemporaryDirectory(dir=_staging_dir(project, task), prefix=".new-") as staging:
        files = Path(staging) / "files"
        shutil.copytree(src, files)

        def place(version: int) -> tuple[int, str]:
            dest = adapters_dir(project, task) / str(version)
            while dest.exists():  # left by a crash between copy and insert: never reuse it
                version += 1
                dest = adapters_dir(project, task) / str(version)
            os.replace(files, dest)  # atomic: the folder is there whole, or not at all
            return version, str(dest.relative_to(project.home))

        fields = {
            "method": method,
            "base_model": base_model,
            "base_hash": base_hash,
            "snapshot_id": snapshot_id,
            "run_id": run_id,
            "info": info or {},
        }
        version = stored.add_version(project.store, task, fields, place, now=utcnow().isoformat())
    return get(project, f"{task}@{version}")


def _staging_dir(project: Project, task: str) -> Path:
    d = adapters_dir(project, task)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _row(project: Project, row: dict[str, Any]) -> AdapterVersion:
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
        info=row["info"],
        created_at=datetime.fromisoformat(row["created_at"]),
    )


def get(project: Project, ref: str) -> AdapterVersion:
    """`T@N` exactly, or `T` for the task's production version."""
    task, version = parse_ref(ref)
    if version is None:
        row = stored.production_row(project.store, task)
        if row is None:
            project.task(task)
            raise NotFound(
                f"task {task!r} has no production adapter yet (promote one with whetstone promote)"
            )
    else:
        row = stored.version_row(project.store, task, version)
        if row is None:
            raise NotFound(f"unknown adapter version {task}@{version}")
    return _row(project, row)


def production(project: Project, task: str) -> AdapterVersion | None:
    row = stored.production_row(project.store, task)
    return _row(project, row) if row else None


def production_versions(project: Project) -> dict[str, int]:
    """Every task's production version number (what serving routes task names to)."""
    return stored.production_versions(project.store)


def generation(project: Project) -> int:
    """Changes whenever the registry does: a cheap check before re-reading production versions."""
    return stored.generation(project.store)


def list_versions(project: Project, task: str | None = None) -> list[AdapterVersion]:
    return [_row(project, r) for r in stored.version_rows(project.store, task)]


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
    stored.set_stage(
        project.store,
        av.task,
        av.version,
        av.stage,
        stage,
        action=action,
        actor=actor,
        reason=reason,
        now=utcnow().isoformat(),
    )
    return get(project, av.name)


def record_event(
    project: Project, ref: str, action: str, *, actor: str | None = None, reason: str | None = None
) -> None:
    """An event that changes no stage (a refused promotion), so the history still shows it."""
    av = get(project, ref)
    stored.add_event(
        project.store,
        av.task,
        av.version,
        action,
        av.stage,
        actor=actor,
        reason=reason,
        now=utcnow().isoformat(),
    )


def update_info(project: Project, ref: str, **info: Any) -> AdapterVersion:
    av = get(project, ref)
    stored.set_info(project.store, av.task, av.version, {**av.info, **info})
    return get(project, av.name)


def history(project: Project, task: str) -> list[dict[str, Any]]:
    return stored.events(project.store, task)


# ---------------------------------------------------------------- production changes


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def promote(
    project: Project,
    ref: str,
    *,
    reason: str,
    forced: bool = False,
    actor: str | None = None,
) -> AdapterVersion:
    """Make `T@N` the production version of its task (the one it replaces is retired), with
    the audit event `promote`, or `promote-forced` when a person overruled the gate. Whether
    it may is the gate's decision (`evaluate.gate.promote`), taken before this is called."""
    return set_stage(
        project,
        ref,
        "production",
        action="promote-forced" if forced else "promote",
        actor=actor or default_actor(),
        reason=reason,
    )


def refuse(project: Project, ref: str, *, reason: str, actor: str | None = None) -> None:
    """Record that the gate refused to promote `T@N`: no stage changes."""
    record_event(project, ref, "gate-refused", actor=actor or default_actor(), reason=reason)


def production_stack(project: Project, task: str) -> list[int]:
    """The versions that were production, oldest first, with rolled-back ones removed: the
    last is the current one, the one before it is where a rollback goes."""
    stack: list[int] = []
    for ev in history(project, task):
        if ev["to_stage"] != "production":
            continue
        v = ev["version"]
        if ev["action"] == "rollback" and v in stack:
            del stack[stack.index(v) + 1 :]
        else:
            if v in stack:
                stack.remove(v)
            stack.append(v)
    return stack


def rollback(
    project: Project,
    task: str,
    to: int | None = None,
    *,
    actor: str | None = None,
    reason: str | None = None,
) -> tuple[AdapterVersion, AdapterVersion]:
    """Make the previous production version (or version `to`, which must have been in
    production before) production again; the current one is retired. Returns (new, old)."""
    project.task(task)
    current = production(project, task)
    if current is None:
        raise NotFound(f"task {task!r} has no production version to roll back from")
    earlier = [v for v in production_stack(project, task) if v != current.version]
    if not earlier:
        raise InvalidInput(
            f"nothing to roll back to: {current.name} is the first production "
            f"version of {task!r} still on record"
        )
    target = earlier[-1] if to is None else to
    if target not in earlier:
        was = ", ".join(f"{task}@{v}" for v in earlier)
        raise InvalidInput(
            f"{task}@{target} was never production before {current.name} "
            f"(rollback targets: {was}); promote it through the gate instead"
        )
    new = set_stage(
        project,
        f"{task}@{target}",
        "production",
        action="rollback",
        actor=actor or default_actor(),
        reason=reason or f"rolled back from {current.name}",
    )
    return new, get(project, current.name)


def load_adapter_model(
    project: Project, ref: str, *, task: str | None = None, base_model: str | None = None
) -> tuple[InferenceModel, Tokenizer, str]:
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
    from whetstone.models.artefacts import load_for_inference

    model, tok = load_for_inference(av.path, base)
    return model, tok, av.name
