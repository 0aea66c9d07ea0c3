"""Proof that it learns: the bundled SmolLM2-135M-Instruct on the demo address task, before
and after training an adapter with the engine.

A fresh temporary project gets the 1,488 hand-labelled demo addresses. A fixed test split
(`--test` records, chosen by a hash of the address text, so it is the same every run) is
never trained on and never used to pick settings or checkpoints; the best checkpoint is
chosen on a separate validation split. Training uses at most `--records` records and should
finish within `--minutes` (the engine has no wall-clock stop, so the epochs/steps below are
sized to fit; the result says whether the budget held). Base model and adapter are then
scored on the test split: field F1 and exact match with 95% bootstrap intervals.

Run:  python benchmarks/address_quality.py [--records 300] [--minutes 15] [--method lora]
Writes benchmarks/results/address_quality.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import common

# Points over the base model. Whole-object exact match is `object_exact` for extract tasks.
TARGET = {"field_f1": 40.0, "object_exact": 20.0}


def split_records(project: Any, task: str, n_test: int, n_val: int, n_train: int) -> Any:
    """Freeze a snapshot: the n_test records with the lowest text hash are the test split,
    the next n_val validation, the next n_train train; the rest are left out."""
    from whetstone import snapshots

    recs = sorted(
        project.store.iter_records(task, has_reference=True),
        key=lambda r: snapshots.split_bucket(r.input_text),
    )
    if len(recs) < n_test + n_val + n_train:
        raise SystemExit(f"only {len(recs)} records: cannot take {n_test}+{n_val}+{n_train}")
    assignment = {r.id: "test" for r in recs[:n_test]}
    assignment |= {r.id: "validation" for r in recs[n_test : n_test + n_val]}
    assignment |= {r.id: "train" for r in recs[n_test + n_val : n_test + n_val + n_train]}
    return snapshots.freeze(project, task, assignment, info={"method": "benchmark-split"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=300, help="training records (at most)")
    ap.add_argument("--test", type=int, default=200, help="held-out test records")
    ap.add_argument(
        "--validation", type=int, default=40, help="validation records (checkpoint choice)"
    )
    ap.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    ap.add_argument("--method", default="lora")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--eval-every", type=int, default=13)
    ap.add_argument("--eval-max-records", type=int, default=24)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--no-packing", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = ap.parse_args()

    import whetstone
    from whetstone import snapshots
    from whetstone.demo_data import load_demo_data
    from whetstone.evaluate.metrics import main_score
    from whetstone.evaluate.runner import evaluate
    from whetstone.train import train_config, train_task
    from whetstone.train.config import options_of

    tmp = Path(tempfile.mkdtemp(prefix="whetstone-address-quality-"))
    project = whetstone.init(tmp / "proj")
    load_demo_data(project)
    snap = split_records(project, "addresses", args.test, args.validation, args.records)
    lora = options_of(args.method, {"lora_r": args.lora_r, "lora_alpha": args.lora_alpha})
    cfg = train_config(
        method=args.method,
        epochs=args.epochs,
        max_steps=args.max_steps,
        lr=args.lr,
        **lora,  # the LoRA-based methods' options
        batch_size=args.batch_size,
        max_length=args.max_length,
        eval_every=args.eval_every,
        eval_max_records=args.eval_max_records,
        patience=args.patience,
        packing=not args.no_packing,
        seed=args.seed,
    )
    max_new = common.answer_budget(
        project.task("addresses"), snapshots.records(project, snap, "all")
    )

    t0 = time.perf_counter()
    result = train_task(project, "addresses", cfg, snapshot_id=snap.id, metric=main_score)
    train_wall = time.perf_counter() - t0

    evals = {}
    for model in ("base", result.adapter):
        evals[model] = evaluate(
            project, "addresses", model, "test", snap.id, max_new_tokens=max_new, batch_size=16
        )
    base_ev, tuned_ev = evals["base"], evals[result.adapter]

    rows, metrics = [], {}
    for name in TARGET:
        b, a = base_ev.metrics[name], tuned_ev.metrics[name]
        delta = (a["value"] - b["value"]) * 100
        metrics[name] = {
            "base": b,
            "adapter": a,
            "delta_points": round(delta, 1),
            "target_points": TARGET[name],
            "met": delta >= TARGET[name],
        }
        rows.append([name, common.ci(b), common.ci(a), f"{delta:+.1f}", f"+{TARGET[name]:.0f}"])
    budget_s = args.minutes * 60
    common.print_table(
        f"Demo addresses, {args.test} held-out test records (95% bootstrap CI)",
        ["metric", "base", result.adapter, "delta (points)", "target"],
        rows,
    )
    print(
        f"trained on {result.data.get('train_records')} records · {result.steps} steps · "
        f"best step {result.best_step} (validation {result.best_metric}) · "
        f"train_task wall {train_wall / 60:.1f} min of a {args.minutes:.0f} min budget "
        f"(optimizer {result.timings['train_s']:.0f}s, validation {result.timings['eval_s']:.0f}s) · "
        f"{result.tokens_per_s:,.0f} tokens/s"
    )
    path = common.write_result(
        "address_quality",
        {
            "settings": {
                **vars(args),
                "effective_config": cfg.effective(),
                "max_new_tokens": max_new,
            },
            "snapshot": {"id": snap.id, "counts": snap.counts()},
            "adapter": result.adapter,
            "metrics": metrics,
            "training": {
                "wall_s": round(train_wall, 1),
                "budget_s": budget_s,
                "within_budget": train_wall <= budget_s,
                "steps": result.steps,
                "best_step": result.best_step,
                "best_validation_metric": result.best_metric,
                "stopped_early": result.stopped_early,
                "tokens_per_s": round(result.tokens_per_s, 1),
                "timings": result.timings,
                "data": result.data,
                "validations": [r for r in result.history if r.get("kind") == "validation"],
            },
            "peak_rss_mib": common.peak_rss_mib(),
        },
    )
    print(f"wrote {path}" + (f" · project kept at {tmp}" if args.keep else ""))
    project.close()
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
