"""The first hour, timed: README's quick start on the real bundled model and the bundled
address data, each command run as a user runs it (a fresh project in a temporary folder, the
`whetstone` command in its own process), step by step.

Reported: wall seconds of each command, the validation share of training time (from the run's
own timings), how many full evaluations ran and how many were reused from the store, the
gate's decision with the quality gain (field F1, candidate minus base model, with its 95%
interval) and the leakage rule. Target (issue 21): init to a promoted adapter in at most 10
minutes on 2 CPU cores, promoted by the gate (not forced), at least +40 points of field F1 over
the base model. Measure on a quiet machine: the load average is recorded with the result.

Run:  python benchmarks/quickstart.py [--max-steps 40]
Writes benchmarks/results/quickstart.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

TASK = "addresses"
TARGET_S = 600
TARGET_GAIN = 0.40


def run(cwd: Path, *args: str) -> tuple[float, str]:
    """One `whetstone` command in its own process: (wall seconds, stdout)."""
    env = {**os.environ, "PYTHONPATH": str(common.ROOT / "src")}
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "whetstone", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    print(f"whetstone {' '.join(args)}: {seconds:.1f} s", flush=True)  # kept if a later step fails
    if done.returncode not in (0, 3):  # 3: the gate refused, reported below
        sys.exit(f"whetstone {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def quick_start(work: Path, max_steps: int) -> dict[str, Any]:
    steps: list[tuple[str, float]] = []
    s, _ = run(work, "init", "shop")
    steps.append(("init shop", s))
    shop = work / "shop"
    s, _ = run(shop, "demo-data")
    steps.append(("demo-data", s))
    s, _ = run(shop, "predict", "--task", TASK, "1600 Pennsylvania Ave NW, Washington DC 20500")
    steps.append(("predict (base model, one address)", s))
    s, out = run(shop, "train", "--task", TASK, "--max-steps", str(max_steps), "--json")
    steps.append((f"train --max-steps {max_steps}", s))
    trained = json.loads(out)
    s, out = run(shop, "eval", "--task", TASK, "--model", f"{TASK}@1", "--json")
    steps.append((f"eval --model {TASK}@1", s))
    evaluated = json.loads(out)
    s, out = run(shop, "promote", f"{TASK}@1", "--json")
    steps.append((f"promote {TASK}@1", s))
    return {
        "steps": steps,
        "train": trained,
        "eval": evaluated,
        "promote": json.loads(out),
        "evaluations": stored_evaluations(shop),
    }


def stored_evaluations(shop: Path) -> list[dict[str, Any]]:
    sys.path.insert(0, str(common.ROOT / "src"))
    import whetstone
    from whetstone.evaluate.runner import list_evaluations

    p = whetstone.open(str(shop))
    try:
        return [
            {"id": e["id"], "model": e["model"], "split": e["split"]}
            for e in list_evaluations(p, TASK)
        ]
    finally:
        p.close()


def summary(result: dict[str, Any]) -> dict[str, Any]:
    rules = {r["name"]: r for r in result["promote"]["rules"]}
    gain = rules["beats-baseline"]["numbers"]
    total = sum(s for _, s in result["steps"])
    timings = result["train"]["timings"]
    return {
        "total_s": round(total, 1),
        "target_s": TARGET_S,
        "within_target": total <= TARGET_S,
        "promoted": result["promote"]["promoted"],
        "forced": result["promote"]["forced"],
        "failed_rules": [r["name"] for r in result["promote"]["rules"] if not r["passed"]],
        "field_f1_candidate": gain.get("candidate"),
        "field_f1_base": gain.get("baseline"),
        "gain": gain.get("diff"),
        "gain_ci": [gain.get("low"), gain.get("high")],
        "gain_target": TARGET_GAIN,
        "leakage": rules["leakage"]["message"],
        "validation_share": timings["validation_share"],
        "train_s": timings["train_s"],
        "validation_s": timings["eval_s"],
        "full_evaluations_run": len(result["evaluations"]),
        "evaluation_reused_by_promote": result["promote"]["evaluations"].get("candidate")
        == result["eval"]["id"],
        "eval_max_new_tokens": result["eval"]["info"].get("max_new_tokens"),
        "eval_hit_budget": result["eval"]["info"].get("hit_budget"),
    }


def _points(ci: list[float | None]) -> str:
    low, high = ci
    return "" if low is None or high is None else f"[{low * 100:+.1f}, {high * 100:+.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=40, help="train --max-steps (README's: 40)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="whetstone-quickstart-") as tmp:
        result = quick_start(Path(tmp), args.max_steps)
    s = summary(result)
    rows = [[name, f"{sec:.1f}"] for name, sec in result["steps"]]
    rows.append(["total (target <= 600)", f"{s['total_s']:.1f}"])
    common.print_table("Quick start, step by step (seconds)", ["command", "wall s"], rows)
    gain = "n/a" if s["gain"] is None else f"{s['gain'] * 100:+.1f}"
    common.print_table(
        "Outcome",
        ["what", "value"],
        [
            ["promoted by the gate", s["promoted"] and not s["forced"]],
            ["failed rules", ", ".join(s["failed_rules"]) or "none"],
            ["field F1 base -> adapter", f"{s['field_f1_base']} -> {s['field_f1_candidate']}"],
            ["gain, points [95% CI]", f"{gain} {_points(s['gain_ci'])} (target >= +40)"],
            ["validation share of training", f"{s['validation_share']:.1%}"],
            ["full evaluations run", s["full_evaluations_run"]],
            ["promote reused eval's evaluation", s["evaluation_reused_by_promote"]],
            [
                "eval decode budget (answers at it)",
                f"{s['eval_max_new_tokens']} ({s['eval_hit_budget']})",
            ],
        ],
    )
    path = common.write_result(
        "quickstart",
        {
            "max_steps": args.max_steps,
            "summary": s,
            "steps": [{"command": n, "seconds": round(sec, 2)} for n, sec in result["steps"]],
            "train_timings": result["train"]["timings"],
            "evaluations": result["evaluations"],
            "gate": result["promote"],
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
