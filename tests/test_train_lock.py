"""One process trains a run at a time (issue 14, item 8): a second `whetstone train --resume`
of a run being trained fails at once with one line, and the run registers one version with
each metric row once. The lock is a flock, so a killed holder never leaves the run stuck."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from test_train import SCHEMA, add_city_records
from test_train_resume import whetstone
from whetstone.errors import WhetstoneError
from whetstone.evaluate.metrics import main_score
from whetstone.train.runs import open_run, training_lock


def new_run(project: Any, tiny_base_dir: Path) -> str:
    """A run created and never trained: what a kill before the first checkpoint leaves."""
    from whetstone.train import train_config
    from whetstone.train.api import _start

    project.create_task("cities", "extract", schema=SCHEMA)
    add_city_records(project, 12)
    cfg = train_config(
        base_model=str(tiny_base_dir),
        max_steps=2,
        batch_size=4,
        eval_every=2,
        eval_max_records=2,
        save_every=2,
    )
    return _start(project, "cities", cfg, None, 1).id


def resume_paused(root: str, run_id: str, started: Any, go: Any) -> None:
    """In a child process: the real `resume_run`, paused at the start of the training loop
    (lock held, nothing trained) until the test says go."""
    import whetstone
    from whetstone.train import loop, resume_run

    real = loop.train_loop

    def paused(*args: Any, **kw: Any) -> Any:
        started.set()
        go.wait(120)
        return real(*args, **kw)

    loop.train_loop = paused
    p = whetstone.open(root)
    try:
        resume_run(p, run_id, progress=False, metric=main_score)
    finally:
        p.close()


def test_a_second_resume_is_refused_while_the_first_trains(
    project: Any, tiny_base_dir: Path
) -> None:
    from whetstone import registry

    run_id = new_run(project, tiny_base_dir)
    ctx = mp.get_context("spawn")
    started, go = ctx.Event(), ctx.Event()
    first = ctx.Process(target=resume_paused, args=(str(project.root), run_id, started, go))
    first.start()
    try:
        assert started.wait(120), "the first resume never reached the training loop"
        second = subprocess.run(
            whetstone("--project", str(project.root), "train", "--resume", run_id),
            env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "400"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode == 1, second.stderr[-2000:]
        lines = second.stderr.strip().splitlines()
        assert lines == [
            f"error: run {run_id} is being trained by another process (pid {first.pid}); "
            f"wait for it to finish, or stop it and run `whetstone train --resume {run_id}` "
            "again"
        ], second.stderr
    finally:
        go.set()
        first.join(300)
    assert first.exitcode == 0

    assert [av.name for av in registry.list_versions(project, "cities")] == ["cities@1"]
    rows = open_run(project, run_id).history()
    keys = [(r["kind"], r["step"]) for r in rows]
    assert rows and len(keys) == len(set(keys)), keys


HOLDER = """
import sys, time
from pathlib import Path
from whetstone.train.runs import Run, training_lock
with training_lock(Run("r", Path(sys.argv[1]))):
    print("held", flush=True)
    time.sleep(300)
"""


def test_the_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    from whetstone.train.runs import Run

    run = Run("r", tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(WhetstoneError, match=rf"pid {holder.pid}\)"), training_lock(run):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with training_lock(run):
        assert run.lock_path.read_text().strip() == str(os.getpid())
    with training_lock(run):  # released on leaving the block, too
        pass
