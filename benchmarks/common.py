"""What every benchmark shares: a description of the machine it ran on, a rich table on
screen, and a JSON result file under benchmarks/results/ stamped with date and machine."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

# Benchmarks never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Before torch loads OpenMP: on a shared machine spinning worker threads wait for time slices
# (measured 2x slower training steps on 2 busy cores); sleeping ones cost nothing measurable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """The cores this process may run on (a container's quota, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "ram_gib": ram_gib(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*[str(v) for v in r])
    Console().print(table)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """benchmarks/results/<name>.json with the date and machine first."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {
        "benchmark": name,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        **payload,
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def ci(m: dict[str, Any], scale: float = 100.0) -> str:
    """`value [low, high]` of a metric with its bootstrap interval, in points."""
    return f"{m['value'] * scale:.1f} [{m['low'] * scale:.1f}, {m['high'] * scale:.1f}]"


def answer_budget(task: Any, records: Any) -> int:
    """`max_new_tokens` for a benchmark's generations: the task's default decode budget
    (`whetstone.models.decoding.answer_budget`, what `evaluate` and training's validation
    use), from `records`' references under the bundled model's tokenizer; the same for every
    model a benchmark compares."""
    from whetstone.models import base
    from whetstone.models.decoding import answer_budget as budget

    tok = base.load_tokenizer(base.resolve(None))
    return budget(tok, task, [(r.input, str(r.reference)) for r in records if r.reference])
