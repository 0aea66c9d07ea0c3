"""Classification done right: the bundled SNIPS intents (7 labels) with the bundled
SmolLM2-135M-Instruct, scored by label likelihood.

One temporary project, the default leakage-free split of the 693 utterances (test ~20%,
validation ~10%, the rest, under 500, for training). Four models answer the same test records:
the base model and the embedding baseline (logistic regression on MiniLM sentence embeddings,
trained on the same training split), a LoRA specialist and a label-head specialist. Each gets
accuracy and macro-F1 with 95% intervals, train minutes and expected calibration error (the
cascade and `curate next` rank by this confidence).

Evaluation speed, same run, same base model and records: label likelihood (one forward over the
prompt, every label scored from its cache) against free generation (what classify evaluation
did before: greedy decoding up to 256 new tokens, the answer mapped to a label).

Targets (issue 19): base model >= 100 records/s by label likelihood on 2 cores and >= 20x
generation; the best specialist >= +20 accuracy points over the base model and above the
embedding baseline's interval.

Run:  python benchmarks/classify.py [--epochs 3] [--generation-records 48]
Writes benchmarks/results/classify.json.
      python benchmarks/classify.py --speed-only [--generation-records 48]
Only the base model's evaluation speed, label likelihood against generation on the same test
records (no training, nothing written).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import common

TASK = "intents"


def rate_by_generation(project: Any, snap: Any, n: int) -> dict[str, Any]:
    """Records/s of free generation (256-token budget) on the first n test records."""
    from whetstone import snapshots
    from whetstone.evaluate.metrics import map_label
    from whetstone.models.generate import generate
    from whetstone.predict import load_predictor
    from whetstone.prompts import chat

    recs = snapshots.records(project, snap, "test")[:n]
    pred = load_predictor(project, TASK, "base")
    t0 = time.perf_counter()
    gens = generate(
        pred.model, pred.tokenizer, [chat(pred.task, r.input) for r in recs], max_new_tokens=256
    )
    seconds = time.perf_counter() - t0
    labels = list(pred.task.labels or [])
    right = sum(map_label(g.text, labels) == r.reference for g, r in zip(gens, recs, strict=True))
    return {
        "records": len(recs),
        "seconds": round(seconds, 2),
        "records_per_s": round(len(recs) / seconds, 2),
        "accuracy": round(right / len(recs), 3),
        "mean_output_tokens": round(sum(g.output_tokens for g in gens) / len(gens), 1),
    }


def speed_only(args: argparse.Namespace, work: Path) -> None:
    """Base-model records/s by label likelihood (the predictor evaluation uses) and by
    generation, on the same first test records; prints them, writes nothing."""
    import os

    import whetstone
    from whetstone import snapshots
    from whetstone.demo_data import load_demo_classify
    from whetstone.predict import load_predictor

    project = whetstone.init(str(work / "proj"))
    load_demo_classify(project, TASK)
    snap = snapshots.snapshot_task(project, TASK)
    recs = snapshots.records(project, snap, "test")[: args.generation_records]
    pred = load_predictor(project, TASK, "base")
    pred([r.input for r in recs[:4]])  # warm-up: first-call allocations are not scoring
    load = os.getloadavg()
    t0 = time.perf_counter()
    gens = pred([r.input for r in recs])
    seconds = time.perf_counter() - t0
    right = sum(g.text == r.reference for g, r in zip(gens, recs, strict=True))
    ll = {
        "records": len(recs),
        "seconds": round(seconds, 2),
        "records_per_s": round(len(recs) / seconds, 2),
        "accuracy": round(right / len(recs), 3),
    }
    generation = rate_by_generation(project, snap, args.generation_records)
    project.close()
    speedup = round(ll["records_per_s"] / generation["records_per_s"], 1)
    print({"label_likelihood": ll, "generation": generation, "speedup": speedup})
    print(f"load average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f} (2 cores)")


def timed_eval(project: Any, model: str, snap: Any) -> tuple[Any, float]:
    from whetstone.evaluate.runner import evaluate

    t0 = time.perf_counter()
    ev = evaluate(project, TASK, model, "test", snap.id, reuse=False)
    return ev, time.perf_counter() - t0


def train(project: Any, snap: Any, method: str, epochs: int) -> tuple[str, float]:
    from whetstone.evaluate.metrics import main_score
    from whetstone.train import train_config, train_task

    kw: dict[str, Any] = {"method": method}
    if method != "label_head":
        kw["epochs"] = epochs
    t0 = time.perf_counter()
    res = train_task(
        project, TASK, train_config(**kw), snapshot_id=snap.id, progress=False, metric=main_score
    )
    return res.adapter, time.perf_counter() - t0


def row(name: str, ev: Any, eval_s: float | None, train_s: float | None) -> dict[str, Any]:
    cal = ev.info.get("calibration") or {}
    return {
        "model": name,
        "evaluation": ev.id,
        "n": ev.n,
        "accuracy": ev.metrics["accuracy"],
        "macro_f1": ev.metrics.get("macro_f1"),
        "ece": cal.get("ece"),
        "answered_by": ev.info.get("answered_by"),
        "eval_s": None if eval_s is None else round(eval_s, 2),
        "records_per_s": None if not eval_s else round(ev.n / eval_s, 1),
        "train_min": None if train_s is None else round(train_s / 60, 2),
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import whetstone
    from whetstone import snapshots
    from whetstone.demo_data import load_demo_classify
    from whetstone.evaluate.baseline import embedding_baseline

    project = whetstone.init(str(work / "proj"))
    load_demo_classify(project, TASK)
    snap = snapshots.snapshot_task(project, TASK)
    rows = []
    base_ev, base_s = timed_eval(project, "base", snap)
    rows.append(row("base model", base_ev, base_s, None))
    t0 = time.perf_counter()
    bl = embedding_baseline(project, TASK, snap.id, reuse=False)
    rows.append(row("embedding baseline (logreg, MiniLM)", bl, None, time.perf_counter() - t0))
    for method in ("lora", "label_head"):
        adapter, train_s = train(project, snap, method, args.epochs)
        ev, eval_s = timed_eval(project, adapter, snap)
        rows.append(row(f"{method} specialist ({adapter})", ev, eval_s, train_s))
    generation = rate_by_generation(project, snap, args.generation_records)
    project.close()
    return {"snapshot": snap.id, "counts": snap.counts(), "rows": rows, "generation": generation}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    rows = result["rows"]
    base, baseline, specialists = rows[0], rows[1], rows[2:]
    best = max(specialists, key=lambda r: r["accuracy"]["value"])
    ll_rate = base["records_per_s"]
    gen_rate = result["generation"]["records_per_s"]
    return {
        "best_specialist": best["model"],
        "gain_over_base_points": round(
            (best["accuracy"]["value"] - base["accuracy"]["value"]) * 100, 1
        ),
        "above_baseline_interval": best["accuracy"]["value"] > baseline["accuracy"]["high"],
        "base_records_per_s_label_likelihood": ll_rate,
        "base_records_per_s_generation": gen_rate,
        "speedup": round(ll_rate / gen_rate, 1) if gen_rate else None,
        "targets": {"records_per_s": 100, "speedup": 20, "gain_points": 20},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="LoRA epochs")
    ap.add_argument("--generation-records", type=int, default=48)
    ap.add_argument(
        "--speed-only",
        action="store_true",
        help="only the base model's records/s, label likelihood vs generation; writes nothing",
    )
    args = ap.parse_args()
    if args.speed_only:
        with tempfile.TemporaryDirectory(prefix="whetstone-classify-") as tmp:
            speed_only(args, Path(tmp))
        return
    with tempfile.TemporaryDirectory(prefix="whetstone-classify-") as tmp:
        result = run(args, Path(tmp))
    s = summary(result)
    table = [
        [
            r["model"],
            common.ci(r["accuracy"]),
            "-" if r["macro_f1"] is None else common.ci(r["macro_f1"]),
            "-" if r["ece"] is None else f"{r['ece']:.3f}",
            "-" if r["records_per_s"] is None else r["records_per_s"],
            "-" if r["train_min"] is None else r["train_min"],
        ]
        for r in result["rows"]
    ]
    common.print_table(
        f"SNIPS intents, {result['counts']} (points, 95% CI)",
        ["model", "accuracy", "macro-F1", "ECE", "eval rec/s", "train min"],
        table,
    )
    g = result["generation"]
    common.print_table(
        "Base model evaluation speed, same records",
        ["answered by", "records/s", "accuracy"],
        [
            [
                "label likelihood",
                s["base_records_per_s_label_likelihood"],
                f"{result['rows'][0]['accuracy']['value']:.3f}",
            ],
            [
                f"generation (256 tokens, {g['records']} records)",
                g["records_per_s"],
                f"{g['accuracy']:.3f}",
            ],
        ],
    )
    print(s)
    path = common.write_result("classify", {"summary": s, **result})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
