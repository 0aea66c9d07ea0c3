"""A real `whetstone train` process killed with SIGKILL mid-run resumes from its checkpoint
and ends where an uninterrupted run of the same config ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from test_train import SCHEMA, add_city_records
from whetstone.evaluate.metrics import main_score

# `python -m whetstone`, with the train command registered if main.py does not (yet) do it.
CLI = (
    "import sys; from whetstone.cli import main, train; "
    "any(c.name == 'train' for c in main.app.registered_commands) or train.register(main.app); "
    "sys.argv[0] = 'whetstone'; main.run()"
)


def whetstone(*args: str) -> list[str]:
    return [sys.executable, "-c", CLI, *args]


def test_sigkilled_run_resumes_to_the_same_result(project: Any, tiny_base_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from whetstone import registry
    from whetstone.train import train_config, train_task

    project.create_task("cities", "extract", schema=SCHEMA)
    add_city_records(project, 60)
    settings = {
        "base_model": str(tiny_base_dir),
        "epochs": 10,
        "max_steps": 16,
        "batch_size": 4,
        "eval_every": 8,
        "eval_max_records": 2,
        "save_every": 2,
        "lora_dropout": 0.1,
    }
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        whetstone("--project", str(project.root), "train", "--task", "cities", *flags),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    runs = project.home / "runs"
    deadline = time.monotonic() + 300
    progress = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(runs.glob("*/checkpoint/progress.json")) if runs.exists() else []
        if found:
            progress = found[0]
            break
        time.sleep(0.02)
    assert progress is not None, proc.communicate()[0].decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(progress.read_text())["step"]
    assert 0 < killed_at < 16, "the run was not killed mid-way"
    assert registry.list_versions(project) == []
    run_id = progress.parent.parent.name

    res = subprocess.run(
        whetstone("--project", str(project.root), "train", "--resume", run_id, "--json"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = json.loads(res.stdout)
    assert resumed["run_id"] == run_id

    torch.set_num_threads(1)
    whole = train_task(
        project,
        "cities",
        train_config(**settings),
        snapshot_id=resumed["snapshot_id"],
        progress=False,
        metric=main_score,
    )
    assert resumed["steps"] == whole.steps == 16 and resumed["best_step"] == whole.best_step
    assert abs(resumed["best_metric"] - whole.best_metric) < 1e-6
    resumed_hist = [
        json.loads(line)
        for line in (Path(resumed["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in resumed_hist] == [
        r["step"] for r in whole.history
    ]  # nothing lost or repeated
    for a, b in zip(resumed_hist, whole.history, strict=True):
        key = {"train": "loss", "validation": "val_loss"}.get(a["kind"], "metric")
        assert abs(a[key] - b[key]) < 1e-4 * max(1.0, abs(b[key])), (a, b)
    wa = load_file(
        str(registry.get(project, resumed["adapter"]).path / "adapter_model.safetensors")
    )
    wb = load_file(str(registry.get(project, whole.adapter).path / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
