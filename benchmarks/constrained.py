"""Schema validity on the address task: how many held-out answers are not JSON or break the
task's schema (`prompts.answer_fails_checks`, the rule the cascade escalates on), for the base
model and an adapter, each with and without constrained decoding (`models.constrain`, the
serving default for an extract task; `whetstone eval --constrained`).

The project is copied to a temporary folder first and opened there, so the source (a
benchmark's project, such as the hero benchmark's) is never modified. Records are the first
`--n` of the adapter's snapshot's test split; the decode budget is the task's own
(`evaluate.runner.decode_budget`), the same for every row of the table.

    python benchmarks/constrained.py --project ~/.cache/whetstone-bench/hero/shop \\
        --adapter addresses@1 [--n 100]

Writes benchmarks/results/constrained.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import common

RESULTS = common.RESULTS / "constrained.json"


def invalid(task: Any, answers: list[str]) -> dict[str, int]:
    """How many answers fail the task's checks, by reason."""
    from whetstone.prompts import answer_fails_checks

    counts = {"not_json": 0, "breaks_schema": 0}
    for text in answers:
        why = answer_fails_checks(task, text)
        if why is None:
            continue
        counts["breaks_schema" if "schema" in why else "not_json"] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, required=True, help="copied, never modified")
    ap.add_argument("--task", default="addresses")
    ap.add_argument("--adapter", default="addresses@1")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import whetstone
    from whetstone.evaluate import runner
    from whetstone.evaluate.metrics import aggregate
    from whetstone.predict import load_predictor

    copy = Path(tempfile.mkdtemp(prefix="whetstone-constrained-")) / "proj"
    shutil.copytree(args.project.expanduser(), copy)
    project = whetstone.open(copy)
    task = project.task(args.task)
    snap = runner.choose_snapshot(project, args.task, args.adapter, None)
    recs = runner.records_to_score(project, snap, "test", args.n)
    rows: list[dict[str, Any]] = []
    for model in ("base", args.adapter):
        predictor = load_predictor(project, args.task, model)
        budget = runner.decode_budget(project, task, snap, predictor.tokenizer)
        for constrained in (False, True):
            t0 = time.perf_counter()
            gens = predictor(
                [r.input for r in recs], max_new_tokens=budget, constrained=constrained
            )
            answers = [g.text for g in gens]
            bad = invalid(task, answers)
            # The task's own metrics: keys compared as parsed fields, never by their order.
            scores = aggregate(task, answers, [r.reference or "" for r in recs])
            row = {
                "model": predictor.name,
                "constrained": constrained,
                "records": len(recs),
                "invalid": bad["not_json"] + bad["breaks_schema"],
                **bad,
                "hit_budget": sum(1 for g in gens if g.output_tokens >= budget),
                "object_exact": round(scores["object_exact"] * len(recs)),
                "field_f1": round(scores["field_f1"], 4),
                "seconds": round(time.perf_counter() - t0, 1),
                "max_new_tokens": budget,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "task": args.task,
        "schema": task.schema_,
        "snapshot": snap.id,
        "adapter": args.adapter,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    common.write_result(args.out.stem, result)
    print(
        "\n| model | constrained | schema-invalid / N | not JSON | breaks schema | cut by budget "
        "| exact | field F1 |\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['model']} | {'yes' if r['constrained'] else 'no'} | {r['invalid']} / "
            f"{r['records']} | {r['not_json']} | {r['breaks_schema']} | {r['hit_budget']} "
            f"| {r['object_exact']} | {r['field_f1'] * 100:.1f} |"
        )
    print(f"wrote {args.out}")
    project.close()
    shutil.rmtree(copy.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
