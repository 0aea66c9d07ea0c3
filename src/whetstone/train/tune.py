"""`tune`: a hyper-parameter search over the training engine with Optuna.

Every trial trains on the same dataset snapshot with `train_task`, in a child process: the
parent reads the run's validation rows from its metrics.jsonl as they are written, reports
each to Optuna, and kills the child the moment the pruner says the trial is worse than the
median of earlier ones at the same point. A child also gives its memory back when it ends,
so a long study does not grow, and a crashed trial does not end the study.

Sampler: TPE with a fixed seed. Pruner: MedianPruner. The step a value is reported at is the
validation's ordinal (1st, 2nd, ...), its value the validation's token accuracy: validations
fall at the same fractions of every trial (`eval_every` defaults to a quarter of the run, or
the whole run when validating would cost more than a tenth of training), so trials of
different lengths compare. A trial's value is its run's `best_metric`, the task's metric on
generations at the end of the run.

Search space (each can be narrowed through `base` or `methods`):
    method     the methods whose config says `tuned_by_default` and that train the task's kind
               (lora, dora, topk; label_head on a classify task), or the given list
    lr         the method's default rate times a log-uniform factor in [0.2, 5]
    lora_r     4, 8, 16 or 32 (alpha = 2r, so the update's scale stays put), LoRA-based only

`base` settings apply to the trials whose method has them (a topk option to topk trials only);
a key that is no method's option is an error.
    epochs     1 to 4

Registration: `train_task` registers every trial that completes; once the study ends the
best trial's adapter stays a candidate and every other completed trial's adapter is moved
to `retired` (with a registry event naming the study and the winner). They stay queryable,
lineage and metrics included, which is why they are kept rather than deleted. Pruned trials
are never registered: their runs stay on disk with status `pruned`.

The study lives in `.whetstone/tune/<study>.db` (Optuna RDB storage): running the same
command again resumes it, counting the trials already finished towards `trials`. The table
of trials is written to `.whetstone/tune/<study>/trials.csv` and `trials.json`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from whetstone.errors import InvalidInput, WhetstoneError
from whetstone.project import Project
from whetstone.train import methods as training_methods
from whetstone.train.api import TrainResult
from whetstone.train.config import (
    TrainConfig,
    all_options,
    build,
    config_class,
    option_problem,
    options_of,
    train_config,
)

if TYPE_CHECKING:
    from whetstone.train.loop import Metric

LORA_RANKS = (4, 8, 16, 32)
LR_FACTOR = (0.2, 5.0)
EPOCHS = (1, 4)
SEARCHED = frozenset({"method", "lr", "epochs", "lora_r", "lora_alpha"})
POLL_S = 0.25
TABLE_COLUMNS = (
    "trial", "state", "method", "lr", "lora_r", "epochs", "value", "best_step", "steps",
    "validations", "seconds", "adapter", "run_id",
)  # fmt: skip


@dataclass
class TuneResult:
    best: TrainResult
    trials: list[dict[str, Any]]
    study_name: str
    table_path: str


class TrialCrashed(WhetstoneError):
    """A trial's process died or failed; the trial is marked failed and the study goes on."""


# ---------------------------------------------------------------- the search space


def default_methods(task_kind: str) -> list[str]:
    out = []
    for name in training_methods.names():
        cls = config_class(name)
        if cls.tuned_by_default and (cls.task_kinds is None or task_kind in cls.task_kinds):
            out.append(name)
    return out


def check_base(base: dict[str, Any], methods: Sequence[str]) -> None:
    """Fail now, not in every trial, on an unknown key or a bad value. `base` is shared by
    trials of several methods: each trial takes the options of its own method."""
    for key in base:
        if key not in all_options():
            raise InvalidInput(f"tune base config: {option_problem(key, methods[0])}")
    for method in methods:
        build(("tune base config", {**options_of(method, base), "method": method}))


def suggest(trial: Any, methods: Sequence[str], base: dict[str, Any]) -> dict[str, Any]:
    """The trial's settings: only the keys searched, the rest comes from `base`."""
    method = trial.suggest_categorical("method", list(methods))
    factor = trial.suggest_float("lr_factor", *LR_FACTOR, log=True)
    defaults = build(("tune base config", {**options_of(method, base), "method": method}))
    params: dict[str, Any] = {
        "method": method,
        "lr": float(f"{defaults.learning_rate * factor:.3g}"),
        "epochs": trial.suggest_int("epochs", *EPOCHS),
    }
    if defaults.uses_lora:
        r = trial.suggest_categorical("lora_r", list(LORA_RANKS))
        params |= {"lora_r": r, "lora_alpha": 2 * r}
    return params


def check_methods(methods: Sequence[str]) -> list[str]:
    out = []
    for m in methods:
        training_methods.get(m)  # an unknown name is an error that lists the methods
        out.append(m)
    if not out:
        raise InvalidInput("give at least one method to search over")
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------- one trial, in a child


def _trial_worker(
    root: str,
    db: str,
    task: str,
    settings: dict[str, Any],
    snapshot_id: str,
    out: str,
    metric: Metric,
) -> None:
    """Child process: train one trial and write its TrainResult (or error) to `out`."""
    import os

    # Before torch loads OpenMP: spinning worker threads on a busy machine (several trials'
    # worth of other work on a few cores) made every small op wait for a time slice, 5-15x
    # slower; sleeping threads cost nothing measurable on an idle one.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from whetstone.project import Project
    from whetstone.train.api import train_task

    project = Project(Path(root), db=db)
    try:
        result = train_task(
            project,
            task,
            train_config(**settings),
            snapshot_id=snapshot_id,
            progress=False,
            metric=metric,
        )
        payload: dict[str, Any] = {"result": {**asdict(result), "history": []}}
    except WhetstoneError as e:
        payload = {"error": str(e), "invalid": isinstance(e, InvalidInput)}
    except Exception as e:
        payload = {"error": f"{type(e).__name__}: {e}", "invalid": False}
    finally:
        project.close()
    Path(out).write_text(json.dumps(payload, default=str))


def _find_run(project: Project, known: set[str], config_yaml: str) -> Any:
    """The run the child created: a new folder under runs/ whose config is this trial's."""
    from whetstone.train.runs import Run, runs_dir

    folder = runs_dir(project)
    if not folder.exists():
        return None
    for d in sorted(folder.iterdir()):
        cfg = d / "config.yaml"
        if d.name not in known and cfg.exists() and cfg.read_text() == config_yaml:
            return Run(d.name, d)
    return None


def _validations(run: Any, seen: int) -> list[dict[str, Any]]:
    if run is None:
        return []
    rows = [r for r in run.history() if r.get("kind") == "validation"]
    return rows[seen:]


def run_trial(
    project: Project,
    trial: Any,
    task: str,
    cfg: TrainConfig,
    snapshot_id: str,
    work: Path,
    metric: Metric,
) -> TrainResult:
    """Train one trial in a child process, reporting each validation to Optuna and killing
    the child when the pruner says so."""
    import multiprocessing as mp

    from whetstone.train.runs import runs_dir

    known = {d.name for d in runs_dir(project).iterdir()} if runs_dir(project).exists() else set()
    out = work / f"trial-{trial.number}.json"
    out.unlink(missing_ok=True)
    # spawn, not fork: the parent may hold threads (Optuna's heartbeat, torch's pools). The
    # metric crosses by reference (a module-level function), as pickle sends functions.
    child = mp.get_context("spawn").Process(
        target=_trial_worker,
        args=(
            str(project.root),
            project.db_url,
            task,
            cfg.model_dump(),
            snapshot_id,
            str(out),
            metric,
        ),
        daemon=True,
    )
    child.start()
    try:
        _follow(trial, child, project, known, cfg.to_yaml())
    finally:
        if child.is_alive():  # interrupted (Ctrl-C) or an error below: leave no orphan
            child.kill()
            child.join()
    child.join()
    return _trial_result(trial.number, child.exitcode, out)


def _follow(trial: Any, child: Any, project: Project, known: set[str], config_yaml: str) -> None:
    """Report each validation of the trial's run to Optuna as the child writes it, until the
    child ends; kill the child (the trial is pruned) the moment the pruner says so."""
    import optuna

    run, reported = None, 0
    while True:
        alive = child.is_alive()
        run = run or _find_run(project, known, config_yaml)
        if run is not None:
            trial.set_user_attr("run_id", run.id)
        for row in _validations(run, reported):
            reported += 1
            # A language-model run's validations score by token accuracy (its task metric on
            # generations comes once, at the end); the label head's by its metric.
            score = row.get("token_accuracy", row.get("metric"))
            if score is None:
                continue
            trial.report(float(score), reported)
            # A child that already ended has registered its adapter: too late to prune.
            if alive and trial.should_prune():
                child.kill()
                child.join()
                run.write_info(status="pruned", pruned_at_validation=reported)
                raise optuna.TrialPruned(f"validation {reported}: {score:.4f} below the median")
        if not alive:
            return
        time.sleep(POLL_S)


def _trial_result(number: int, exitcode: int | None, out: Path) -> TrainResult:
    """What the trial's child process handed back in `out`: its TrainResult, or its error
    raised here (a bad setting as InvalidInput, which ends the study; anything else as
    TrialCrashed, which fails only the trial)."""
    if not out.exists():
        raise TrialCrashed(f"trial {number} died (exit code {exitcode}) before it finished")
    payload = json.loads(out.read_text())
    if "error" in payload:
        if payload["invalid"]:
            raise InvalidInput(payload["error"])
        raise TrialCrashed(f"trial {number} failed: {payload['error']}")
    return TrainResult(**payload["result"])


# ---------------------------------------------------------------- the study


def tune_dir(project: Project) -> Path:
    return project.home / "tune"


def storage_url(project: Project, study: str) -> str:
    path = tune_dir(project) / f"{study}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def trial_row(t: Any) -> dict[str, Any]:
    res = t.user_attrs.get("result") or {}
    seconds = (
        round((t.datetime_complete - t.datetime_start).total_seconds(), 1)
        if t.datetime_complete and t.datetime_start
        else None
    )
    settings = t.user_attrs.get("settings", {})
    return {
        "trial": t.number,
        "state": t.state.name.lower(),
        "method": settings.get("method"),
        "lr": settings.get("lr"),
        "lora_r": settings.get("lora_r"),
        "epochs": settings.get("epochs"),
        "value": t.value,
        "best_step": res.get("best_step"),
        "steps": res.get("steps"),
        "validations": [round(v, 4) for _, v in sorted(t.intermediate_values.items())],
        "seconds": seconds,
        "adapter": res.get("adapter"),
        "run_id": t.user_attrs.get("run_id"),
    }


def write_table(project: Project, study: str, rows: list[dict[str, Any]]) -> Path:
    from whetstone.util import atomic_write_text

    folder = tune_dir(project) / study
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS))
    w.writeheader()
    for r in rows:
        w.writerow({**r, "validations": " ".join(str(v) for v in r["validations"])})
    atomic_write_text(folder / "trials.csv", buf.getvalue())
    atomic_write_text(folder / "trials.json", json.dumps(rows, indent=2, default=str))
    return folder / "trials.csv"


def print_table(study: str, rows: list[dict[str, Any]], best: int | None) -> None:
    from rich.table import Table

    from whetstone.progress import console

    table = Table(title=f"study {study}")
    for c in TABLE_COLUMNS[:-1]:
        table.add_column(c, justify="left" if c in ("state", "method", "adapter") else "right")

    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return " ".join(f"{x:.3f}" for x in v)
        return str(v)

    for r in rows:
        style = "bold green" if r["trial"] == best else None
        table.add_row(*[cell(r[c]) for c in TABLE_COLUMNS[:-1]], style=style)
    console.print(table)


def _fail_stale(study: Any) -> None:
    """Trials left RUNNING by a killed `tune` will never report again: mark them failed so a
    resumed study neither waits for nor counts them."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)


def _retire_losers(project: Project, study_name: str, trials: list[Any], best: Any) -> None:
    from whetstone import registry

    for t in trials:
        adapter = (t.user_attrs.get("result") or {}).get("adapter")
        if t.number == best.number or not adapter:
            continue
        with contextlib.suppress(WhetstoneError):  # deleted or already moved by a person
            if registry.get(project, adapter).stage == "candidate":
                registry.set_stage(
                    project,
                    adapter,
                    "retired",
                    action="tune:not-best",
                    reason=f"study {study_name}: trial {t.number} scored {t.value}, "
                    f"trial {best.number} scored {best.value}",
                )


def checked_methods(
    project: Project, task: str, base: dict[str, Any], methods: Sequence[str] | None
) -> list[str]:
    """The methods to search, after refusing a `base` that sets what tune searches or a key
    that no method has (each trial takes the keys of its own method)."""
    t = project.task(task)
    searched = SEARCHED & set(base)
    if searched:
        raise InvalidInput(
            f"the base config sets {', '.join(sorted(searched))}, which tune searches: "
            "remove it (use --method to limit the methods)"
        )
    out = check_methods(methods or default_methods(t.kind.value))
    check_base(base, out)
    return out


def study_snapshot(project: Project, task: str, snapshot_id: str | None) -> Any:
    """The snapshot every trial trains on (the given one, or one taken now); it must hold
    validation records with references, since they rank the trials."""
    from whetstone import snapshots

    snap = (
        snapshots.load(project, snapshot_id)
        if snapshot_id
        else snapshots.snapshot_task(project, task)
    )
    if snap.task != task:
        raise InvalidInput(f"snapshot {snap.id} belongs to task {snap.task!r}, not {task!r}")
    if not [r for r in snapshots.records(project, snap, "validation") if r.reference is not None]:
        raise InvalidInput(
            f"snapshot {snap.id} has no validation records: tune ranks trials by the validation "
            "metric and never looks at the test split"
        )
    return snap


def open_study(
    project: Project,
    name: str,
    task: str,
    snapshot_id: str,
    methods: list[str],
    *,
    seed: int,
    pruner: Any,
) -> Any:
    """The Optuna study `name`, new or resumed; a resumed one must search the same snapshot
    and methods. Trials a killed `tune` left running are marked failed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name,
        storage=storage_url(project, name),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        load_if_exists=True,
    )
    pinned = study.user_attrs.get("snapshot_id")
    if pinned and pinned != snapshot_id:
        raise InvalidInput(
            f"study {name} was started on snapshot {pinned}, not {snapshot_id}: pass "
            f"--snapshot {pinned} to resume it, or another --study name"
        )
    # Optuna cannot change a categorical's choices within a study.
    known = study.user_attrs.get("methods")
    if known and known != methods:
        raise InvalidInput(
            f"study {name} searches methods {', '.join(known)}; resume it with the same "
            "--method choices, or start another --study"
        )
    study.set_user_attr("methods", methods)
    study.set_user_attr("snapshot_id", snapshot_id)
    study.set_user_attr("task", task)
    _fail_stale(study)
    return study


@dataclass
class Objective:
    """Optuna's objective: suggest a trial's settings, train it in a child process and return
    its best validation metric."""

    project: Project
    task: str
    snapshot_id: str
    methods: list[str]
    base: dict[str, Any]
    work: Path  # where trials' results are handed back
    metric: Metric
    progress: bool

    def __call__(self, trial: Any) -> float:
        from whetstone.progress import console

        params = suggest(trial, self.methods, self.base)
        trial.set_user_attr("settings", params)
        method_base = options_of(params["method"], self.base)
        cfg = build(("tune base config", method_base), (f"trial {trial.number}", params))
        if self.progress:
            shown = ", ".join(f"{k}={v}" for k, v in params.items() if k != "lora_alpha")
            console.print(f"trial {trial.number}: {shown}")
        result = run_trial(
            self.project, trial, self.task, cfg, self.snapshot_id, self.work, self.metric
        )
        trial.set_user_attr("result", {**asdict(result), "history": []})
        if result.best_metric is None:
            raise TrialCrashed(f"trial {trial.number} produced no validation metric")
        if self.progress:
            console.print(f"trial {trial.number}: {result.best_metric:.4f} ({result.adapter})")
        return float(result.best_metric)


def study_result(project: Project, study: Any, name: str, progress: bool) -> TuneResult:
    """Write (and show) the table of trials, retire every completed trial's adapter but the
    best one, and return the best."""
    from optuna.trial import TrialState

    from whetstone.progress import console
    from whetstone.train.runs import open_run

    all_trials = study.get_trials(deepcopy=False)
    rows = [trial_row(tr) for tr in all_trials]
    complete = [tr for tr in all_trials if tr.state == TrialState.COMPLETE]
    best_trial = study.best_trial if complete else None
    path = write_table(project, name, rows)
    if progress:
        print_table(name, rows, best_trial.number if best_trial else None)
        console.print(f"trials table: {path}")
    if best_trial is None:
        raise WhetstoneError(
            f"no trial of study {name} completed ({len(all_trials)} pruned or failed); see {path}"
        )
    _retire_losers(project, name, complete, best_trial)
    best = TrainResult(**best_trial.user_attrs["result"])
    with contextlib.suppress(WhetstoneError):
        best.history = open_run(project, best.run_id).history()
    return TuneResult(best=best, trials=rows, study_name=name, table_path=str(path))


def tune(
    project: Project,
    task: str,
    trials: int,
    timeout: float | None = None,
    base: dict[str, Any] | None = None,
    snapshot_id: str | None = None,
    progress: bool = True,
    *,
    methods: Sequence[str] | None = None,
    study_name: str | None = None,
    seed: int = 0,
    pruner: Any = None,
    metric: Metric,
) -> TuneResult:
    """Search `trials` trials (counting those a resumed study already finished), or until
    `timeout` seconds have passed (checked between trials: a started trial finishes). `base`
    holds the fixed training settings (max_steps, batch_size, ...). Returns the best trial's
    registered adapter and the table of trials. `metric` (evaluation's `main_score`, a
    module-level function: trials run in child processes) ranks validation steps and trials."""
    from optuna.trial import TrialState

    if trials < 1:
        raise InvalidInput(f"--trials must be at least 1, not {trials}")
    base = dict(base or {})
    chosen = checked_methods(project, task, base, methods)
    snap = study_snapshot(project, task, snapshot_id)
    name = study_name or f"{task}-{snap.id[:8]}"
    study = open_study(project, name, task, snap.id, chosen, seed=seed, pruner=pruner)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    work = tune_dir(project) / name
    work.mkdir(parents=True, exist_ok=True)
    remaining = max(0, trials - done)
    if remaining:
        study.optimize(
            Objective(project, task, snap.id, chosen, base, work, metric, progress),
            n_trials=remaining,
            timeout=timeout,
            catch=(TrialCrashed,),
            gc_after_trial=True,
        )
    return study_result(project, study, name, progress)
