"""One turn of the loop, composed from the stages: teach (when a hero is configured, its
teacher labels new records) → collect → curate → train → evaluate → gate → promote or refuse →
report → queue the next records to label.

A turn's progress lives in `.whetstone/flywheel/<task>/turn-NNNN.json`, written atomically after
every step. Running the flywheel again after an interruption resumes the unfinished turn at its
first unfinished step (a training run killed mid-way resumes from its last checkpoint); a
finished turn is never redone, and the next call starts a new one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from whetstone.models.generate import GENERATE_BATCH
from whetstone.project import Project
from whetstone.records import utcnow
from whetstone.util import atomic_write_text, write_jsonl


class FlywheelConfig(BaseModel):
    """`flywheel.yaml` or the `flywheel:` section of whetstone.yaml. Stage sections are passed
    through to the stage, which validates its own keys."""

    model_config = ConfigDict(extra="forbid")

    curate: dict[str, Any] = Field(
        default_factory=dict, description="curation settings (see curate)"
    )
    budget: int | None = Field(None, ge=1, description="train on at most this many curated records")
    train: dict[str, Any] = Field(default_factory=dict, description="training settings (see train)")
    tune_trials: int = Field(0, ge=0, description=">0: search hyper-parameters instead of one run")
    tune_timeout: float | None = Field(None, gt=0, description="seconds for the search")
    gate: dict[str, Any] = Field(default_factory=dict, description="promotion gate settings")
    split: str = Field("test", description="held-out split the gate and report use")
    eval_batch_size: int = Field(GENERATE_BATCH, ge=1)
    max_new_tokens: int | None = Field(
        None, ge=1, description="answer length cap when evaluating; default: from the references"
    )
    next_n: int = Field(50, ge=0, description="records to queue for labelling after the turn")
    teach_n: int = Field(
        200,
        ge=0,
        description="with a hero configured: unlabelled records its teacher labels before "
        "curation (escalations it already answered are free); 0: none",
    )
    teacher_samples: int = Field(1, ge=1, description="teacher samples per record (majority vote)")
    min_agreement: float = Field(
        2 / 3, ge=0, le=1, description="teacher labels agreed on less go to human review"
    )
    min_new_records: int = Field(0, ge=0, description="skip the turn when fewer new labels arrived")
    report: bool = True


def load_config(
    project: Project, path: str | Path | None = None, **overrides: Any
) -> FlywheelConfig:
    """`flywheel:` of whetstone.yaml, then a flywheel.yaml, then CLI options (None: not given)."""
    from whetstone.errors import from_validation
    from whetstone.util import read_yaml_mapping

    data: dict[str, Any] = dict(project.section("flywheel"))
    where = f"{project.config_path} (flywheel:)"
    if path is not None:
        data.update(read_yaml_mapping(path, "flywheel settings"))
        where = str(path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return FlywheelConfig.model_validate(data)
    except ValidationError as e:
        raise from_validation(e, where) from None


@dataclass
class Turn:
    """The state of one turn, persisted after each step."""

    task: str
    number: int
    path: Path
    started_at: str
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    finished_at: str | None = None

    def save(self) -> None:
        atomic_write_text(
            self.path, json.dumps(self.__dict__ | {"path": str(self.path)}, indent=2, default=str)
        )

    @classmethod
    def load(cls, path: Path) -> Turn:
        data = json.loads(path.read_text())
        data["path"] = Path(data["path"])
        return cls(**data)

    def done(self, step: str) -> bool:
        return step in self.steps

    def record(self, step: str, result: dict[str, Any], seconds: float) -> None:
        self.steps[step] = {**result, "seconds": round(seconds, 2)}
        self.save()


def turns_dir(project: Project, task: str) -> Path:
    return project.home / "flywheel" / task


def list_turns(project: Project, task: str) -> list[Turn]:
    return [Turn.load(p) for p in sorted(turns_dir(project, task).glob("turn-*.json"))]


def _current_turn(project: Project, task: str) -> Turn:
    turns = list_turns(project, task)
    if turns and turns[-1].finished_at is None:
        return turns[-1]
    number = (turns[-1].number + 1) if turns else 1
    turn = Turn(
        task=task,
        number=number,
        path=turns_dir(project, task) / f"turn-{number:04d}.json",
        started_at=utcnow().isoformat(),
    )
    turn.save()
    return turn


def _labelled_ids(project: Project, task: str) -> set[int]:
    from whetstone.snapshots import trainable

    return {
        r.id
        for r in project.store.iter_records(task, has_reference=True)
        if trainable(r) and r.id is not None
    }


def _last_labelled(project: Project, task: str, before: int) -> set[int]:
    for t in reversed(list_turns(project, task)):
        if t.number < before and "collect" in t.steps:
            return set(t.steps["collect"].get("labelled_ids", []))
    return set()


def _find_unfinished_run(project: Project, task: str, snapshot_id: str) -> str | None:
    """A training run of this turn that was killed before it registered its adapter."""
    from whetstone.train.runs import runs_dir

    candidates = []
    for info_path in runs_dir(project).glob("*/info.json"):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if (
            info.get("task") == task
            and info.get("snapshot_id") == snapshot_id
            and info.get("status") != "registered"
        ):
            candidates.append((info_path.stat().st_mtime, info_path.parent.name))
    return max(candidates)[1] if candidates else None


def incumbent(project: Project, task: str) -> str:
    """What a candidate has to beat: the production adapter, or the base model."""
    from whetstone import registry

    prod = registry.production(project, task)
    return prod.name if prod else "base"


@dataclass
class TurnSummary:
    task: str
    turn: int
    records_in: int
    new_labels: int
    records_used: int
    candidate: str | None
    incumbent: str
    before: dict[str, float] | None
    after: dict[str, float] | None
    main_metric: str
    decision: str  # promoted | refused | skipped
    reasons: list[str]
    seconds: float
    report: str | None
    queue: str | None
    steps: dict[str, dict[str, Any]]


@dataclass
class TurnContext:
    """What every step of a turn sees: the turn, its settings, and the finished steps' results
    (`turn.steps`, which a resumed turn reads back from its file)."""

    project: Project
    task: str
    cfg: FlywheelConfig
    turn: Turn
    progress: bool

    @property
    def snapshot(self) -> str:
        return str(self.turn.steps["curate"]["snapshot"])

    @property
    def candidate(self) -> str:
        return str(self.turn.steps["train"]["adapter"])

    def gate_config(self) -> Any:
        """The gate's settings for this turn: its split, snapshot and evaluation settings."""
        from whetstone.evaluate.gate import gate_config

        cfg = self.cfg
        defaults = {"batch_size": cfg.eval_batch_size, "max_new_tokens": cfg.max_new_tokens}
        return gate_config(
            self.project,
            **{**defaults, **cfg.gate, "split": cfg.split, "snapshot": self.snapshot},
        )


def _teach(c: TurnContext) -> dict[str, Any]:
    """With a hero: its teacher labels the new unlabelled records (production traffic first;
    escalations it already answered cost nothing), so curation sees them; the labels it
    disagrees with itself on go to the review queue instead. A hero that is down costs the
    turn its teacher labels, not the turn. Without a hero: nothing, as before heroes."""
    from whetstone.models.hero import HeroError, project_hero, project_hero_config

    if "collect" in c.turn.steps:  # a turn begun before teaching existed: its data is taken
        return {"labelled": 0, "skipped": "turn resumed past collect"}
    if project_hero_config(c.project) is None or c.cfg.teach_n == 0:
        return {"labelled": 0, "skipped": "no hero configured" if c.cfg.teach_n else "teach_n 0"}
    from whetstone import distill

    try:
        s = distill.label(
            c.project,
            c.task,
            project_hero(c.project),
            n=c.cfg.teach_n,
            samples=c.cfg.teacher_samples,
            min_agreement=c.cfg.min_agreement,
        )
    except HeroError as e:
        return {"labelled": 0, "error": str(e)}
    return {
        "model": s.model,
        "asked": s.asked,
        "labelled": s.labelled,
        "to_review": s.disagreed,
        "failed": s.failed,
        "from_escalations": s.reused,
        "cost": s.cost,
        "tokens": s.tokens,
    }


def _collect(c: TurnContext) -> dict[str, Any]:
    """What reviewers and production produced since the last turn."""
    labelled = _labelled_ids(c.project, c.task)
    new = labelled - _last_labelled(c.project, c.task, c.turn.number)
    return {
        "records": c.project.store.count_records(c.task),
        "labelled": len(labelled),
        "new_labels": len(new),
        "labelled_ids": sorted(labelled),
    }


def _curate(c: TurnContext) -> dict[str, Any]:
    """Curate into a snapshot (the held-out test split stays fixed across turns)."""
    from whetstone.curate import curate
    from whetstone.train.scoring import reference_losses

    res = curate(
        c.project, c.task, c.cfg.curate or None, budget=c.cfg.budget, scorer=reference_losses
    )
    return {
        "snapshot": res.snapshot.id,
        "counts": res.snapshot.counts(),
        "steps": [s.__dict__ if hasattr(s, "__dict__") else s for s in res.steps],
        "card": str(res.card_path) if res.card_path else None,
    }


def _train(c: TurnContext) -> dict[str, Any]:
    """Train a candidate on the snapshot (or search hyper-parameters within a time budget);
    a run this turn started and did not finish is resumed instead."""
    from whetstone.evaluate.metrics import main_score
    from whetstone.train import api as train_api
    from whetstone.train.config import build

    project, cfg = c.project, c.cfg
    unfinished = _find_unfinished_run(project, c.task, c.snapshot)
    if unfinished:
        res = train_api.resume_run(project, unfinished, progress=c.progress, metric=main_score)
    elif cfg.tune_trials:
        from whetstone.train.tune import tune

        res = tune(
            project,
            c.task,
            trials=cfg.tune_trials,
            timeout=cfg.tune_timeout,
            base=cfg.train,
            snapshot_id=c.snapshot,
            progress=c.progress,
            metric=main_score,
        ).best
    else:
        tc = build(
            ("project whetstone.yaml (train:)", project.section("train")),
            ("flywheel config (train:)", cfg.train),
        )
        res = train_api.train_task(
            project, c.task, tc, snapshot_id=c.snapshot, progress=c.progress, metric=main_score
        )
    return {
        "adapter": res.adapter,
        "run": res.run_id,
        "best_metric": res.best_metric,
        "steps": res.steps,
        # total_s already includes the train_s and eval_s parts: summing them counted it twice.
        "train_seconds": round(res.timings["total_s"], 1),
        "records": res.data.get("examples") if isinstance(res.data, dict) else None,
    }


def _evaluate(c: TurnContext) -> dict[str, Any]:
    """Evaluate candidate and incumbent on the same held-out records (reusing stored ones)."""
    from whetstone.evaluate.runner import evaluate

    inc = incumbent(c.project, c.task)
    out: dict[str, Any] = {"incumbent": inc}
    for role, model in (("before", inc), ("after", c.candidate)):
        ev = evaluate(  # a stored evaluation with the same settings is reused
            c.project,
            c.task,
            model,
            c.cfg.split,
            c.snapshot,
            batch_size=c.cfg.eval_batch_size,
            max_new_tokens=c.cfg.max_new_tokens,
        )
        out[role] = {"evaluation": ev.id, "model": model, "n": ev.n, "metrics": ev.metrics}
    return out


def _gate(c: TurnContext) -> dict[str, Any]:
    """The gate decides; promotion happens only when every rule passes."""
    from whetstone.evaluate.gate import promote

    outcome = promote(c.project, c.candidate, c.gate_config(), actor="flywheel")
    rules = outcome.decision.rules
    return {
        "promoted": outcome.promoted,
        "failed": [r.message for r in rules if not r.passed],
        "rules": [{"name": r.name, "passed": r.passed, "message": r.message} for r in rules],
    }


def _report(c: TurnContext) -> dict[str, Any]:
    """The report people read."""
    if not c.cfg.report:
        return {"path": None}
    from whetstone.evaluate.report import write_report

    # The comparison the gate made, with the turn's evaluation settings: both evaluations
    # are stored already, so the report runs no model.
    baseline = c.turn.steps["evaluate"]["incumbent"]
    path = write_report(c.project, c.candidate, config=c.gate_config(), baseline=baseline)
    return {"path": str(path)}


def _next(c: TurnContext) -> dict[str, Any]:
    """What a human should label next."""
    if c.cfg.next_n == 0:
        return {"path": None, "n": 0}
    from whetstone.curate import next_to_label

    ranked = next_to_label(c.project, c.task, c.cfg.next_n)
    path = turns_dir(c.project, c.task) / f"turn-{c.turn.number:04d}-next.jsonl"
    rows = [
        {
            "record_id": r.id,
            "score": round(s, 4),
            **{k: round(v, 4) for k, v in parts.items()},
            "input": r.input_text,
            "output": r.output,
        }
        for r, s, parts in ranked
    ]
    write_jsonl(path, rows)
    return {"path": str(path), "n": len(rows)}


# A turn, in order. Each step reads what earlier ones recorded in `turn.steps`, so a resumed
# turn runs only the steps its file does not hold yet.
TURN_STEPS: tuple[tuple[str, Callable[[TurnContext], dict[str, Any]]], ...] = (
    ("teach", _teach),
    ("collect", _collect),
    ("curate", _curate),
    ("train", _train),
    ("evaluate", _evaluate),
    ("gate", _gate),
    ("report", _report),
    ("next", _next),
)
STEPS = tuple(name for name, _ in TURN_STEPS)


def run_turn(
    project: Project,
    task: str,
    config: FlywheelConfig | None = None,
    *,
    progress: bool = True,
    on_step: Callable[[str, dict[str, Any]], None] | None = None,
) -> TurnSummary:
    """Run (or resume) one turn of the flywheel for `task`."""
    from whetstone.progress import console

    cfg = config or load_config(project)
    main_metric = project.task(task).main_metric  # an unknown task fails before a turn begins
    turn = _current_turn(project, task)
    if turn.steps:
        console.print(
            f"[bold]Resuming flywheel turn {turn.number}[/bold] after step {list(turn.steps)[-1]}"
        )
    c = TurnContext(project, task, cfg, turn, progress)
    for name, run in TURN_STEPS:
        result = _run_step(c, name, run, on_step)
        if name == "collect" and (reason := _skip_reason(result, cfg)):
            turn.steps["skipped"] = {"reason": reason}
            turn.finished_at = utcnow().isoformat()
            turn.save()
            return _summary(project, turn, main_metric, "skipped", [reason])
    turn.finished_at = utcnow().isoformat()
    turn.save()
    steps = turn.steps
    decision = "promoted" if steps["gate"]["promoted"] else "refused"
    return _summary(
        project,
        turn,
        main_metric,
        decision,
        steps["gate"]["failed"],
        steps["evaluate"],
        steps["report"],
        steps["next"],
    )


def _run_step(
    c: TurnContext,
    name: str,
    run: Callable[[TurnContext], dict[str, Any]],
    on_step: Callable[[str, dict[str, Any]], None] | None,
) -> dict[str, Any]:
    """Run step `name` unless the turn has it already, and record its result and time."""
    turn = c.turn
    if turn.done(name):
        return turn.steps[name]
    if c.progress:
        from whetstone.progress import console

        console.print(f"[bold cyan]▶ {name}[/bold cyan]")
    t0 = time.perf_counter()
    result = run(c)
    turn.record(name, result, time.perf_counter() - t0)
    if on_step is not None:
        on_step(name, turn.steps[name])
    return turn.steps[name]


def _skip_reason(collected: dict[str, Any], cfg: FlywheelConfig) -> str | None:
    """Why the turn stops after collecting, if it does: no labels, or too few new ones."""
    if collected["labelled"] == 0:
        return "no labelled records yet"
    if collected["new_labels"] < cfg.min_new_records:
        return (
            f"only {collected['new_labels']} new label(s) since the last turn "
            f"(min_new_records: {cfg.min_new_records})"
        )
    return None


def _summary(
    project: Project,
    turn: Turn,
    main_metric: str,
    decision: str,
    reasons: list[str],
    evals: dict[str, Any] | None = None,
    reported: dict[str, Any] | None = None,
    queued: dict[str, Any] | None = None,
) -> TurnSummary:
    collected = turn.steps.get("collect", {})
    seconds = sum(float(s.get("seconds", 0)) for s in turn.steps.values())
    snap_counts = turn.steps.get("curate", {}).get("counts", {})
    before = (evals or {}).get("before", {}).get("metrics")
    after = (evals or {}).get("after", {}).get("metrics")
    return TurnSummary(
        task=turn.task,
        turn=turn.number,
        records_in=collected.get("records", 0),
        new_labels=collected.get("new_labels", 0),
        records_used=int(snap_counts.get("train", 0)) + int(snap_counts.get("validation", 0)),
        candidate=turn.steps.get("train", {}).get("adapter"),
        incumbent=(evals or {}).get("incumbent", incumbent(project, turn.task)),
        before=before.get(main_metric) if before else None,
        after=after.get(main_metric) if after else None,
        main_metric=main_metric,
        decision=decision,
        reasons=reasons,
        seconds=seconds,
        report=(reported or {}).get("path"),
        queue=(queued or {}).get("path"),
        steps=turn.steps,
    )
