"""A training run's folder, `.whetstone/runs/<run_id>/`:

run.json        task, snapshot, base model, status (running / finished / registered)
config.yaml     the full effective TrainConfig
metrics.jsonl   one row per logged step and per validation
curve.png       loss (train, validation), token accuracy and the task metric by step
checkpoint/     the latest resumable state (written atomically)
best/           the artefact folder of the best validation so far: what gets registered
train.lock      held (flock) by the process training the run; holds its pid. The file stays;
                the lock is the flock, which the kernel drops when that process ends
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from whetstone.errors import InvalidInput, NotFound, WhetstoneError
from whetstone.plots import read_jsonl_rows, training_curves
from whetstone.project import Project
from whetstone.util import atomic_dir, atomic_write_bytes, atomic_write_text


@dataclass
class Run:
    id: str
    dir: Path

    @property
    def config_path(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.dir / "metrics.jsonl"

    @property
    def curve_path(self) -> Path:
        return self.dir / "curve.png"

    @property
    def checkpoint_dir(self) -> Path:
        return self.dir / "checkpoint"

    @property
    def best_dir(self) -> Path:
        return self.dir / "best"

    @property
    def lock_path(self) -> Path:
        return self.dir / "train.lock"

    # ---- run.json -------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        path = self.dir / "run.json"
        if not path.exists():
            raise NotFound(f"run {self.id} has no run.json ({self.dir})")
        return dict(json.loads(path.read_text()))

    def write_info(self, **changes: Any) -> dict[str, Any]:
        path = self.dir / "run.json"
        info = json.loads(path.read_text()) if path.exists() else {}
        info.update(changes)
        atomic_write_text(path, json.dumps(info, indent=2, default=str))
        return dict(info)

    # ---- metrics.jsonl --------------------------------------------------------------
    def log(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def history(self) -> list[dict[str, Any]]:
        return read_jsonl_rows(self.metrics_path)

    def keep_history_until(self, step: int) -> None:
        """On resume: forget rows logged after the checkpoint, they will be logged again."""
        rows = [r for r in self.history() if r.get("step", 0) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))

    def plot(self, metric: str) -> None:
        """Draw curve.png from metrics.jsonl; `metric` names the task's main metric. Before
        anything is logged there is nothing to draw, and no file is written."""
        png = training_curves(self.history(), metric)
        if png is not None:
            atomic_write_bytes(self.curve_path, png)


def runs_dir(project: Project) -> Path:
    return project.home / "runs"


def new_run(project: Project, task: str) -> Run:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = f"{task}-{stamp}-{secrets.token_hex(2)}"
    run = Run(run_id, runs_dir(project) / run_id)
    run.dir.mkdir(parents=True)
    return run


def open_run(project: Project, run_id: str) -> Run:
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise InvalidInput(f"not a run id: {run_id!r}")
    folder = runs_dir(project) / run_id
    if not folder.is_dir():
        known = (
            sorted(p.name for p in runs_dir(project).glob("*") if p.is_dir())
            if runs_dir(project).exists()
            else []
        )
        hint = f" (latest: {known[-1]})" if known else ""
        raise NotFound(f"no training run {run_id!r} in {runs_dir(project)}{hint}")
    return Run(run_id, folder)


@contextlib.contextmanager
def training_lock(run: Run) -> Iterator[None]:
    """Hold the run for this process while it trains: a second process training the same run
    (two `--resume`s) would register it twice and log every metric row twice. A flock, not
    the file's existence, is the lock, so a killed holder never leaves the run stuck."""
    fd = os.open(run.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise WhetstoneError(
                f"run {run.id} is being trained by another process (pid {holder}); wait for "
                f"it to finish, or stop it and run `whetstone train --resume {run.id}` again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the lock


# ---- checkpoints ----------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np
    import torch

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run: Run, payload: dict[str, Any], progress: dict[str, Any]) -> None:
    """Everything a resume needs, built under a temp name and renamed into place: a kill at
    any moment leaves the previous checkpoint whole."""
    import torch

    with atomic_dir(run.checkpoint_dir, replace="owned") as tmp:
        torch.save({**payload, "rng": rng_state(), "progress": progress}, tmp / "state.pt")
        atomic_write_text(tmp / "progress.json", json.dumps(progress, indent=2))
        with open(tmp / "state.pt", "rb") as f:
            os.fsync(f.fileno())


def load_checkpoint(run: Run) -> dict[str, Any] | None:
    import torch

    path = run.checkpoint_dir / "state.pt"
    if not path.exists():
        return None
    return dict(torch.load(path, weights_only=False))
