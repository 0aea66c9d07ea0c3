"""`accelerate launch` with two CPU processes (DDP over gloo) trains to the same adapter as one
process: the same global batches in the same order, the same loss normalisation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from test_train import SCHEMA, add_city_records
from whetstone.evaluate.metrics import main_score

SETTINGS: dict[str, Any] = {
    "max_steps": 4,
    # 16 training examples in batches of 5: the last batch has one example, so one process
    # has none of it and must still take part in the step (with no weight).
    "batch_size": 5,
    "seed": 0,
    "lr": 1e-2,  # large enough that the weights move well beyond the tolerance below
    "eval_every": 4,
    "eval_max_records": 2,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_two_processes(root: Path, snapshot: str, base: Path) -> subprocess.CompletedProcess[str]:
    # Accelerate starts several CPU processes only through its torchrun launcher (`--cpu` with
    # --num_processes alone runs one process unless under mpirun); ACCELERATE_USE_CPU keeps
    # them on the CPU with gloo even where a GPU exists.
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        "-m", "whetstone", "--project", str(root),
        "train", "--task", "cities", "--from-snapshot", snapshot, f"--base-model={base}", *flags,
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def losses(run_dir: Path) -> list[tuple[str, int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        (
            r["kind"],
            r["step"],
            r[{"train": "loss", "validation": "val_loss"}.get(r["kind"], "metric")],
        )
        for r in rows
    ]


def test_two_processes_train_the_same_adapter_as_one(project: Any, tiny_base_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from whetstone import registry, snapshots
    from whetstone.train import train_config, train_task
    from whetstone.train.runs import open_run

    project.create_task("cities", "extract", schema=SCHEMA)
    add_city_records(project, 24)
    snap = snapshots.snapshot_task(project, "cities")
    assert snap.counts()["train"] == 16, "the batch-size comment above assumes 16"

    ddp = launch_two_processes(project.root, snap.id, tiny_base_dir)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = train_task(
        project,
        "cities",
        train_config(base_model=str(tiny_base_dir), **SETTINGS),
        snapshot_id=snap.id,
        progress=False,
        metric=main_score,
    )

    versions = registry.list_versions(project, "cities")
    assert len(versions) == 2 and len({v.run_id for v in versions}) == 2  # one per run
    (two,) = [v for v in versions if v.run_id != single.run_id]
    one = registry.get(project, single.adapter)
    assert (one.info["world_size"], two.info["world_size"]) == (1, 2)
    assert open_run(project, two.run_id).info()["world_size"] == 2
    assert two.info["steps"] == one.info["steps"] == 4

    a = losses(Path(single.run_dir))
    b = losses(open_run(project, two.run_id).dir)
    assert [r[:2] for r in a] == [r[:2] for r in b]
    assert [r[:2] for r in a if r[0] == "validation"] == [("validation", 4)]
    for (_, step, la), (_, _, lb) in zip(a, b, strict=True):
        assert abs(la - lb) <= 1e-4 * abs(la), (step, la, lb)

    wa = load_file(str(one.path / "adapter_model.safetensors"))
    wb = load_file(str(two.path / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    # LoRA B starts at zero: everything in it was learnt, so agreeing on it means something.
    assert max(float(w.abs().max()) for k, w in wa.items() if "lora_B" in k) > 1e-2
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-4, rtol=0, msg=k)

    # Tokens are counted over all processes: the same totals as one process.
    def progress(run_id: str) -> dict[str, Any]:
        path = open_run(project, run_id).checkpoint_dir / "progress.json"
        return dict(json.loads(path.read_text()))

    assert progress(two.run_id)["tokens"] == progress(single.run_id)["tokens"] > 0
