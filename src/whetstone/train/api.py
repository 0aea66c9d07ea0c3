"""`train_task`: snapshot → train → register, the one function the CLI, `tune` and the
flywheel call. `resume_run` continues a killed run from its last checkpoint.

Under `accelerate launch` every process calls the same function; the main process snapshots,
writes and registers, the others train their share (see `whetstone.train.distributed`)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml

from whetstone.errors import InvalidInput, NotFound
from whetstone.project import Project
from whetstone.records import Record, Task, human_reference
from whetstone.train.config import LoopConfig, TrainConfig, build, from_stored
from whetstone.train.distributed import Processes
from whetstone.train.methods.lora import LoraConfig
from whetstone.train.runs import Run, load_checkpoint, new_run, open_run, training_lock

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from whetstone.models.types import CausalLM, Tokenizer
    from whetstone.train.data import DataReport, Example
    from whetstone.train.loop import Metric


@dataclass
class TrainResult:
    adapter: str  # the registered version, "T@N"
    run_id: str
    run_dir: str
    method: str
    snapshot_id: str
    best_metric: float | None
    best_step: int | None
    steps: int
    stopped_early: bool
    tokens_per_s: float
    timings: dict[str, float]
    data: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def set_threads() -> None:
    """Use every core this process may run on (a container's CPU quota, not the host's),
    shared with the other training processes on this machine."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def with_reference(recs: list[Record]) -> list[Record]:
    return [r for r in recs if r.reference is not None]


def upweighted(recs: list[Record], weights: dict[int, float]) -> list[Record]:
    """Curation up-weights hard examples in the snapshot; training honours a weight of w by
    showing the example round(w) times an epoch (over-sampling keeps the loss a plain mean)."""
    out: list[Record] = []
    for r in recs:
        out.extend([r] * max(1, round(weights.get(r.id or -1, 1.0))))
    return out


def train_task(
    project: Project,
    task: str,
    config: TrainConfig | None = None,
    snapshot_id: str | None = None,
    progress: bool = True,
    *,
    metric: Metric,
) -> TrainResult:
    """Freeze a snapshot (unless `snapshot_id`), train, register `task@N` as a candidate.
    `metric` (evaluation's `main_score`) picks the best validation step."""
    cfg = config or build(("project whetstone.yaml", project.section("train")))
    procs = Processes.current()
    with contextlib.ExitStack() as held:

        def start() -> str:
            run = _start(project, task, cfg, snapshot_id, procs.size)
            # Held to the end, so that a `--resume` of this run meanwhile is refused.
            held.enter_context(training_lock(run))
            return run.id

        run = open_run(project, procs.on_main(start))
        return _execute(
            project, run, cfg, resume=None, progress=progress, procs=procs, metric=metric
        )


def _start(
    project: Project, task: str, cfg: TrainConfig, snapshot_id: str | None, processes: int
) -> Run:
    """Freeze (or load) the snapshot and create the run folder."""
    from whetstone import snapshots
    from whetstone.models import base as base_models

    kind = project.task(task).kind.value
    if cfg.task_kinds is not None and kind not in cfg.task_kinds:
        raise InvalidInput(
            f"method {cfg.method} trains {'/'.join(sorted(cfg.task_kinds))} tasks; "
            f"task {task!r} is {kind}"
        )
    base = base_models.resolve(cfg.base_model or project.base_model)
    if snapshot_id:
        snap = snapshots.load(project, snapshot_id)
        if snap.task != task:
            raise InvalidInput(f"snapshot {snap.id} belongs to task {snap.task!r}, not {task!r}")
    else:
        snap = snapshots.snapshot_task(project, task)
    if not with_reference(snapshots.records(project, snap, "train")):
        c = snap.counts()
        raise InvalidInput(
            f"snapshot {snap.id} of task {task!r} has no training records with a reference "
            f"({c['validation']} validation, {c['test']} test: those are never trained on)"
        )
    init_from = warm_start_source(project, task, cfg, base.hash)
    run = new_run(project, task)
    run.write_info(
        task=task,
        snapshot_id=snap.id,
        base_model=base.name,
        base_hash=base.hash,
        method=cfg.method,
        init_from=init_from,
        status="running",
        created_at=time.time(),
        world_size=processes,
    )
    from whetstone.util import atomic_write_text

    atomic_write_text(run.config_path, cfg.to_yaml())
    return run


def warm_start_source(project: Project, task: str, cfg: TrainConfig, base_hash: str) -> str | None:
    """The adapter version a run starts from (`init_from`), resolved once when the run is
    created so a resumed run starts from the same one; None for a cold start."""
    from whetstone import registry

    # `init_from` is an option of the LoRA methods only: the config refuses it elsewhere.
    if not isinstance(cfg, LoraConfig) or cfg.init_from is None:
        return None
    auto = cfg.init_from == "production"
    av = registry.production(project, task) if auto else registry.get(project, cfg.init_from)
    if av is None:
        return None  # nothing in production yet: the first turn starts from zero
    if av.task != task:
        raise InvalidInput(f"init_from: {av.name} is an adapter of task {av.task!r}, not {task!r}")
    rank = av.info.get("config", {}).get("lora_r")
    mismatch = None
    if av.method != cfg.method or av.base_hash != base_hash:
        mismatch = (
            f"{av.name} is a {av.method} adapter on base {av.base_model}; this run trains "
            f"{cfg.method} on another base or method"
        )
    elif rank is not None and rank != cfg.lora_r:
        mismatch = f"{av.name} has lora_r {rank}, this run {cfg.lora_r}: use the same lora_r"
    if mismatch:
        # `production` is chosen automatically: one that does not fit (say after a switch to
        # dora or another rank) means this run starts cold; a named adapter is an error.
        if auto:
            return None
        raise InvalidInput(f"init_from: {mismatch}")
    if not av.path.exists():
        raise NotFound(f"init_from: the files of {av.name} are missing ({av.path})")
    return av.name


def warm_start(model: CausalLM, project: Project, ref: str) -> None:
    """Copy a registered LoRA/DoRA adapter's weights into the freshly prepared PEFT model."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from whetstone import registry

    av = registry.get(project, ref)
    try:
        state = load_file(str(av.path / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(model, state)
    except (OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[:2]
        raise InvalidInput(
            f"init_from: cannot start from {av.name}: {' '.join(first)} (use the same lora_r "
            "and target_modules)"
        ) from None
    # Missing keys include every base weight (the file holds the adapter only); what matters
    # is that the file and this run's adapter hold the same LoRA weights.
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    unexpected = list(getattr(result, "unexpected_keys", []))
    if missing or unexpected:
        raise InvalidInput(
            f"init_from: {av.name} and this run's adapter do not hold the same weights "
            f"(e.g. {(missing or unexpected)[0]}): use the same lora_r and target_modules"
        )


def resume_run(
    project: Project, run_id: str, progress: bool = True, *, metric: Metric
) -> TrainResult:
    """Continue a run from its last checkpoint (weights, optimizer, scheduler, RNG, data
    order); a run killed before its first checkpoint starts again from step 0. One process at
    a time: another one training the run (fresh or resumed) makes this one fail at once."""
    run = open_run(project, run_id)
    procs = Processes.current()
    with contextlib.ExitStack() as held:
        # The main process holds the lock for all of them: it alone writes the run folder.
        procs.on_main(lambda: held.enter_context(training_lock(run)))
        # Read only under the lock: a holder that just finished has registered it by now.
        info = run.info()
        if info.get("status") == "registered":
            raise InvalidInput(
                f"run {run_id} already finished and was registered as {info.get('adapter')}"
            )
        stored = yaml.safe_load(run.config_path.read_text()) or {}
        kind = project.task(info["task"]).kind.value
        cfg = from_stored(stored, str(run.config_path), kind)
        state = load_checkpoint(run)  # the same on any number of processes (distributed.py)
        if state is None:
            procs.on_main(lambda: run.metrics_path.unlink(missing_ok=True))
        procs.on_main(lambda: run.write_info(world_size=procs.size))
        return _execute(
            project, run, cfg, resume=state, progress=progress, procs=procs, metric=metric
        )


@dataclass
class _Job:
    """What every step of a run reads: the run, its settings and what it trains on."""

    project: Project
    run: Run
    cfg: TrainConfig
    info: dict[str, Any]
    task: Task
    base: Any  # the resolved base model
    snap: Any  # the snapshot
    procs: Processes
    progress: bool
    metric: Metric

    def artefact_meta(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "task_kind": self.task.kind.value,
            "base_model": self.base.name,
            "base_hash": self.base.hash,
            "run_id": self.run.id,
            "snapshot_id": self.snap.id,
        }


def _execute(
    project: Project,
    run: Run,
    cfg: TrainConfig,
    *,
    resume: dict[str, Any] | None,
    progress: bool,
    procs: Processes,
    metric: Metric,
) -> TrainResult:
    import torch

    from whetstone.models import base as base_models

    t_start = time.perf_counter()
    job = _open_job(project, run, cfg, procs, progress, metric)
    train_recs, val_recs = _records(job)
    set_threads()
    seed_everything(cfg.seed)
    model, tok = base_models.load(job.base, dtype=torch.float32, for_training=True)
    if isinstance(cfg, LoopConfig):
        p, data = _train_lm(job, cfg, model, tok, train_recs, val_recs, resume)
    else:
        p, data = _train_label_head(job, model, tok, train_recs, val_recs)
    timings = {
        "train_s": round(p.train_seconds, 2),
        "eval_s": round(p.eval_seconds, 2),
        # Validation's share of the time spent training and validating (the issue a user
        # meets first when validation is costly: report it with every run).
        "validation_share": round(p.eval_seconds / max(p.train_seconds + p.eval_seconds, 1e-9), 3),
        "total_s": round(time.perf_counter() - t_start, 2),
    }
    adapter = procs.on_main(lambda: _register(job, p, data, timings))
    return TrainResult(
        adapter=adapter,
        run_id=run.id,
        run_dir=str(run.dir),
        method=cfg.method,
        snapshot_id=job.snap.id,
        best_metric=p.best_metric,
        best_step=p.best_step,
        steps=p.step,
        stopped_early=p.stopped_early,
        tokens_per_s=_tokens_per_s(p),
        timings=timings,
        data=data,
        history=run.history(),
    )


def _open_job(
    project: Project,
    run: Run,
    cfg: TrainConfig,
    procs: Processes,
    progress: bool,
    metric: Metric,
) -> _Job:
    """The run's task, base model (refused if its weights changed since the run started) and
    snapshot."""
    from whetstone import snapshots
    from whetstone.models import base as base_models

    info = run.info()
    base = base_models.resolve(info["base_model"])
    if base.hash != info["base_hash"]:
        raise InvalidInput(
            f"run {run.id} was started on base model {base.name} ({info['base_hash'][:12]}); "
            f"it now resolves to different weights ({base.hash[:12]})"
        )
    snap = snapshots.load(project, info["snapshot_id"])
    task = project.task(info["task"])
    return _Job(project, run, cfg, info, task, base, snap, procs, progress, metric)


def _records(job: _Job) -> tuple[list[Record], list[Record]]:
    """The snapshot's training records (up-weighted) and validation records, with a reference,
    in the text the snapshot holds: the text evaluation scores too."""
    from whetstone import snapshots

    project, snap = job.project, job.snap
    train_recs = upweighted(with_reference(snapshots.records(project, snap, "train")), snap.weights)
    val_recs = with_reference(snapshots.records(project, snap, "validation"))
    return train_recs, val_recs


def _train_label_head(
    job: _Job,
    model: PreTrainedModel,
    tok: Tokenizer,
    train_recs: list[Record],
    val_recs: list[Record],
) -> tuple[Any, dict[str, Any]]:
    from whetstone.train.label_head import train_label_head

    if job.procs.size > 1:
        raise InvalidInput(
            "the classify label head trains in seconds on one process: "
            "run `whetstone train` without a multi-process launcher"
        )
    return train_label_head(
        model,
        tok,
        job.task,
        train_recs,
        val_recs,
        job.cfg,
        job.run,
        job.artefact_meta(),
        metric=job.metric,
        show=job.progress,
    )


def _train_lm(
    job: _Job,
    cfg: LoopConfig,
    model: PreTrainedModel,
    tok: Tokenizer,
    train_recs: list[Record],
    val_recs: list[Record],
    resume: dict[str, Any] | None,
) -> tuple[Any, dict[str, Any]]:
    """Encode the records, prepare the method on the model and run the training loop."""
    from whetstone.models.decoding import Decoder, answer_budget
    from whetstone.train import methods
    from whetstone.train.data import shared_prefix
    from whetstone.train.loop import Setup, train_loop

    # Answers end where this model's decoding will stop them.
    stop_ids = Decoder.of(model, tok).stop_ids
    train, val, report = _encode(job, cfg, tok, stop_ids, train_recs, val_recs)
    prepared: CausalLM = methods.get(cfg.method).prepare(model, cfg)
    if job.info.get("init_from") and resume is None:
        warm_start(prepared, job.project, str(job.info["init_from"]))
    sample = validation_sample(val, cfg)
    eval_recs = val_recs[:sample]
    setup = Setup(
        cfg=cfg,
        task=job.task,
        model=prepared,
        tok=tok,
        train=train,
        val_examples=val[:sample],
        val_records=eval_recs,
        run=job.run,
        max_new_tokens=cfg.max_new_tokens
        or answer_budget(tok, job.task, [(r.input, str(r.reference)) for r in train_recs]),
        artefact_meta=job.artefact_meta(),
        metric=job.metric,
        train_prefix=shared_prefix(train) if cfg.packing else [],
        val_prefix=shared_prefix(val) if cfg.packing else [],
        procs=job.procs,
    )
    if resume is not None:
        step = resume["progress"]["step"]
        job.procs.on_main(lambda: job.run.keep_history_until(step))
    p = train_loop(setup, resume=resume, show=job.progress)
    return p, {
        **report.__dict__,
        "train_records": len(train_recs),
        "validation_records": len(val_recs),
        "validation_used": len(eval_recs),
    }


def validation_sample(val: list[Example], cfg: LoopConfig) -> int:
    """How many validation examples (and records) a run validates on: the first ones, up to
    `eval_max_records` and `eval_max_tokens`, so a large validation split costs no more than a
    small one (always at least one)."""
    tokens = 0
    for n, example in enumerate(val[: cfg.eval_max_records]):
        tokens += len(example)
        if tokens > cfg.eval_max_tokens:
            return max(1, n)
    return min(len(val), cfg.eval_max_records)


def _encode(
    job: _Job,
    cfg: LoopConfig,
    tok: Tokenizer,
    stop_ids: frozenset[int],
    train_recs: list[Record],
    val_recs: list[Record],
) -> tuple[list[Example], list[Example], DataReport]:
    """Training and validation examples, and the report of what did not fit (printed)."""
    from whetstone.progress import console
    from whetstone.train.data import encode_records

    train, report = encode_records(
        tok,
        job.task,
        train_recs,
        stop_ids=stop_ids,
        max_length=cfg.max_length,
        policy=cfg.truncation,
        weight_of=lambda r: 1.0 if human_reference(r) else cfg.teacher_weight,
    )
    val, _ = encode_records(
        tok,
        job.task,
        val_recs,
        stop_ids=stop_ids,
        max_length=cfg.max_length,
        policy=cfg.truncation,
    )
    if not train:
        raise InvalidInput(
            f"no training example fits max_length={cfg.max_length}: {report.summary()}"
        )
    if len(train) < cfg.batch_size:
        report.notes.append(
            f"only {len(train)} training examples: one batch of {len(train)} per step, "
            f"not {cfg.batch_size}"
        )
    for note in [report.summary()] * bool(report.too_long) + report.notes:
        if job.procs.is_main:
            console.print(f"[yellow]{note}[/yellow]")
    return train, val, report


def _tokens_per_s(p: Any) -> float:
    return p.tokens / p.train_seconds if p.train_seconds else 0.0


def _register(job: _Job, p: Any, data: dict[str, Any], timings: dict[str, float]) -> str:
    """Main process: plot the curve, register the best checkpoint, mark the run registered."""
    from whetstone import registry
    from whetstone.util import VERSION

    run = job.run
    run.plot(job.task.main_metric)
    run.write_info(status="finished", best_metric=p.best_metric, best_step=p.best_step)
    av = registry.register(
        job.project,
        job.task.name,
        run.best_dir,
        method=job.cfg.method,
        base_model=job.base.name,
        base_hash=job.base.hash,
        snapshot_id=job.snap.id,
        run_id=run.id,
        info={
            "config": job.cfg.effective(),
            "metric": job.task.main_metric,
            "best_metric": p.best_metric,
            "best_step": p.best_step,
            "steps": p.step,
            "stopped_early": p.stopped_early,
            "validation": p.evals,
            "curve": str(run.curve_path),
            "metrics": str(run.metrics_path),
            "whetstone_version": VERSION,
            "init_from": job.info.get("init_from"),
            "tokens_per_s": round(_tokens_per_s(p), 1),
            "timings": timings,
            "world_size": job.procs.size,
            "data": data,
        },
    )
    run.write_info(status="registered", adapter=av.name)
    return av.name
