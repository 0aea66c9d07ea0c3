"""What the hero benchmarks (`cascade.py`, `distill.py`) share: one fixed split of the bundled
addresses, a hero trained on its own share of them and served over HTTP, and the workhorse.

The split (by a hash of the address text, the same every run; 1,488 hand-labelled records):

    test        300  human-labelled; every score in both benchmarks is on these, never trained on
    validation  150  human-labelled; checkpoint choice, and the cascade's threshold calibration
    pool        200  the workhorse's training inputs: human-labelled in one arm, the teacher's
                     labels in the other (distill)
    hero        600  the hero's own training data, disjoint from all of the above

The hero is the bundled SmolLM2-135M-Instruct with a LoRA adapter trained on the 600 hero
records for `HERO_STEPS` steps, served by a second `whetstone serve` (its own process and
project) speaking the OpenAI chat API on localhost: a real HTTP hero, with the latency and
failure modes of one, standing in for a paid generalist. It is a stronger model, not a larger
one: no larger instruction-tuned model ships in a package the machine can install.

Everything expensive is cached under the work folder (`--work`, default
`~/.cache/whetstone-bench/hero`) so the two benchmarks share the hero and a rerun resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common

TASK = "addresses"
SIZES = {"test": 300, "validation": 150, "pool": 200, "hero": 600}
HERO_STEPS = 150
STUDENT_STEPS = 40  # the quick start's recipe: the workhorse a new user gets in ten minutes
# What the hero's tokens are priced at: a GPT-4o-mini-class API per 1,000 tokens (only the
# ratio of cascade to hero-only cost is reported, so the unit does not matter).
PRICE_IN, PRICE_OUT = 0.00015, 0.0006
DEFAULT_WORK = Path.home() / ".cache" / "whetstone-bench" / "hero"


def ordered_records(project: Any) -> list[Any]:
    from whetstone import snapshots

    return sorted(
        project.store.iter_records(TASK, has_reference=True),
        key=lambda r: snapshots.split_bucket(r.input_text),
    )


def parts(project: Any) -> dict[str, list[Any]]:
    """The fixed split of the project's human-labelled addresses into SIZES' parts."""
    recs, out, at = ordered_records(project), {}, 0
    for name, n in SIZES.items():
        out[name] = recs[at : at + n]
        at += n
    if at > len(recs):
        raise SystemExit(f"only {len(recs)} records: cannot take {sum(SIZES.values())}")
    return out


def new_project(path: Path) -> Any:
    import whetstone
    from whetstone.demo_data import load_demo_data

    project = whetstone.init(str(path))
    load_demo_data(project)
    return project


def open_project(path: Path) -> Any:
    import whetstone

    return whetstone.open(str(path))


def freeze(project: Any, assignment: dict[int, str], why: str) -> Any:
    from whetstone import snapshots

    return snapshots.freeze(project, TASK, assignment, info={"method": why})


def train(project: Any, snapshot_id: str, steps: int, seed: int = 0) -> Any:
    from whetstone.evaluate.metrics import main_score
    from whetstone.train import train_config, train_task

    cfg = train_config(method="lora", max_steps=steps, seed=seed)
    return train_task(project, TASK, cfg, snapshot_id=snapshot_id, metric=main_score)


def marker(work: Path, name: str) -> dict[str, Any] | None:
    path = work / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def mark(work: Path, name: str, value: dict[str, Any]) -> dict[str, Any]:
    path = work / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    tmp.replace(path)
    return value


def trained_project(
    work: Path, name: str, train_part: str, steps: int, role: str
) -> dict[str, Any]:
    """Project `name` trained on the split's `train_part` for `steps`, its adapter promoted,
    with the shared test and validation parts (cached: a rerun reads the marker)."""
    done = marker(work, name)
    if done:
        return done
    project = new_project(work / name)
    p = parts(project)
    assignment = {r.id: "test" for r in p["test"]}
    assignment |= {r.id: "validation" for r in p["validation"]}
    assignment |= {r.id: "train" for r in p[train_part]}
    snap = freeze(project, assignment, "hero-benchmark-split")
    t0 = time.perf_counter()
    result = train(project, snap.id, steps)
    train_s = time.perf_counter() - t0
    from whetstone import registry

    registry.promote(project, result.adapter, reason=f"the benchmark's {role}", forced=True)
    project.close()
    return mark(
        work,
        name,
        {
            "adapter": result.adapter,
            "snapshot": snap.id,
            "train_s": round(train_s, 1),
            "steps": result.steps,
            "records": len(p[train_part]),
        },
    )


def hero_project(work: Path) -> dict[str, Any]:
    """The hero: its 600 records, HERO_STEPS steps."""
    return trained_project(work, "hero", "hero", HERO_STEPS, "hero")


def shop_name(steps: int = STUDENT_STEPS) -> str:
    """The workhorse project's folder: `shop` for the quick start's recipe, `shop-N` for N
    steps (the cascade can be measured with a longer-trained workhorse too)."""
    return "shop" if steps == STUDENT_STEPS else f"shop-{steps}"


def shop_project(work: Path, steps: int = STUDENT_STEPS) -> dict[str, Any]:
    """The workhorse: the pool's 200 human labels, `steps` LoRA steps (default: the quick
    start's recipe)."""
    return trained_project(work, shop_name(steps), "pool", steps, "workhorse")


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the hero server exited ({proc.returncode})")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(1)
    raise SystemExit("the hero server did not become healthy")


@contextlib.contextmanager
def serving_hero(work: Path, port: int) -> Iterator[str]:
    """`whetstone serve` on the hero project in its own process; yields its OpenAI base URL."""
    env = {**os.environ, "PYTHONPATH": str(common.ROOT / "src")}
    log = (work / "hero-serve.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "whetstone",
            "--project",
            str(work / "hero"),
            "serve",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield f"{url}/v1"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        log.close()


def hero_section(base_url: str, *, route: str = "cascade", concurrency: int = 16) -> dict[str, Any]:
    """The `hero:` section a project gets for the served hero."""
    return {
        "base_url": base_url,
        "model": TASK,  # the hero server's route: the task's production adapter
        "price_input_per_1k": PRICE_IN,
        "price_output_per_1k": PRICE_OUT,
        "timeout_s": 120,
        "max_concurrency": concurrency,
        "routes": {TASK: route},
    }


def set_hero(project_root: Path, section: dict[str, Any]) -> None:
    import yaml

    from whetstone.util import CONFIG_NAME, atomic_write_text

    path = project_root / CONFIG_NAME
    config = yaml.safe_load(path.read_text()) or {}
    config["hero"] = section
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


def arguments(description: str) -> Any:
    import argparse

    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK, help="cache and projects folder")
    ap.add_argument("--port", type=int, default=8765, help="the hero server's port")
    return ap
