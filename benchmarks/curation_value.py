"""Proof that curation pays: small and clean beats big and noisy, on the demo address task.

A fresh temporary project gets the 1,488 hand-labelled demo addresses, split once:

- a clean **test** split (`--test` records with the lowest text hash; never corrupted, never
  trained on, never used to choose anything), and every other address that is an exact, near
  (character 5-gram Jaccard >= 0.5) or semantic (MiniLM cosine >= 0.97) duplicate of a test
  address is set aside, so no arm can score by having seen a test row's twin;
- a clean **validation** split (`--validation` records) that picks each run's best checkpoint;
- a **training pool** of `--train-pool` records, `--noise` of whose references are corrupted
  with a fixed seed, in equal thirds: a wrong field (a value moved to another schema key, or
  two keys' values exchanged: still valid JSON that passes the schema), references swapped
  between two records, and truncated JSON; plus `--dups` near-duplicate rows (the same clean
  address with its whitespace or case changed, or its commas dropped).

The same adapter config, with the same number of optimizer steps (`--same-steps`, the
default: a set curation made smaller is not also given less training; it gets more epochs),
is then trained three ways and each adapter is scored on the test split (field F1 and
whole-object exact match, 95% bootstrap intervals, plus paired differences):

(a) **all noisy**: every pool row;
(b) **random N**: N pool rows drawn at random (`--seed`);
(c) **curated N**: what a user would do. Adapter (a) is what they already run in production
    (trained on the data they had), so it is promoted, and `whetstone curate --budget N`
    (every step, `drop_noisy` on) uses its per-example loss for the label-noise and
    hard-example steps, then picks N by difficulty and coverage.

All three use the same test records, and validation records from the same clean set (the
curation's split step keeps the splits earlier snapshots gave, less any row the curation
drops). Ground truth about which rows were corrupted is used only to
report what each arm trained on and how well the curation found the noise, never to choose.

Run:  python benchmarks/curation_value.py [--train-pool 200] [--budget 120] [--noise 0.3]
                                          [--epochs 4] [--seed 0] [--max-minutes 40]
About 30 minutes on 2 CPU cores (three trainings of 112 steps).
Writes benchmarks/results/curation_value.json.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import common

TASK = "addresses"
KINDS = ("wrong_field", "swapped", "truncated")
DUP_KINDS = ("spaces", "case", "commas")
# Field F1 and whole-object exact match (`object_exact`: extract tasks have no `exact_match`).
METRICS = ("field_f1", "object_exact")
# The demo task's instruction lists all 28 keys (a ~245-token prompt, for the base model's sake);
# a fine-tuned adapter learns the keys from its data, and a ~47-token prompt makes every
# training step and evaluation about 2.8x cheaper on CPU. The same prompt for every arm.
SHORT_INSTRUCTION = "Extract the parts of the US mailing address as a single-line JSON object."


# ---- the noise -------------------------------------------------------------------------------
def _canon(ref: dict[str, str]) -> str:
    return json.dumps(ref, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _wrong_field(ref: dict[str, str], keys: list[str], rng: random.Random) -> dict[str, str]:
    """A value under the wrong key: moved to a key the reference lacks, or (half the time, when
    there are two keys) two keys' values exchanged. Still passes the schema."""
    out = dict(ref)
    present = sorted(out)
    if len(present) >= 2 and rng.random() < 0.5:
        a, b = rng.sample(present, 2)
        if out[a] != out[b]:
            out[a], out[b] = out[b], out[a]
            return out
    key = rng.choice(present)
    new = rng.choice([k for k in keys if k not in out])
    out[new] = out.pop(key)
    return out


def corrupt(
    refs: list[dict[str, str]], keys: list[str], frac: float, seed: int
) -> tuple[list[str], list[str | None]]:
    """Reference strings for `refs` with `frac` of them corrupted (equal shares of KINDS), and
    per row the kind of corruption, or None. Deterministic in `seed`."""
    rng = random.Random(seed)
    n = round(frac * len(refs))
    chosen = rng.sample(range(len(refs)), n)
    # Swaps need pairs: their share is rounded down to an even count.
    n_swap = (n // 3) // 2 * 2
    n_wrong = (n - n_swap) // 2
    kinds: list[str | None] = [None] * len(refs)
    for i, pos in enumerate(chosen):
        kinds[pos] = (
            "swapped" if i < n_swap else "wrong_field" if i < n_swap + n_wrong else "truncated"
        )
    out = [_canon(r) for r in refs]
    swaps = chosen[:n_swap]
    for a, b in zip(swaps[::2], swaps[1::2], strict=True):
        out[a], out[b] = _canon(refs[b]), _canon(refs[a])
    for pos in chosen[n_swap:]:
        if kinds[pos] == "wrong_field":
            out[pos] = _canon(_wrong_field(refs[pos], keys, rng))
        else:
            text = out[pos]
            out[pos] = text[: rng.randint(len(text) // 3, len(text) - 2)]
    return out, kinds


def near_duplicate(
    text: str, ref: dict[str, str], rng: random.Random
) -> tuple[str, dict[str, str], str]:
    """The same address with a trivial change, its reference changed to match: (text, ref, kind)."""
    kind = rng.choice(DUP_KINDS)
    if kind == "commas" and ("," not in text or any("," in v for v in ref.values())):
        kind = "spaces"
    if kind == "case":
        # Upper or lower case, whichever changes the text (an all-caps address only lowers).
        for up in sorted((True, False), key=lambda _: rng.random()):
            changed = text.upper() if up else text.lower()
            if changed != text:
                return changed, {k: v.upper() if up else v.lower() for k, v in ref.items()}, kind
        kind = "spaces"
    if kind == "commas":
        return re.sub(r"\s*,\s*", " ", text).strip(), dict(ref), kind
    words = text.split(" ")
    i = rng.randrange(max(1, len(words) - 1)) + 1
    return " ".join(words[:i]) + "   " + " ".join(words[i:]) + " ", dict(ref), kind


# ---- the data set ----------------------------------------------------------------------------
def split_demo(
    n_test: int, n_val: int, n_pool: int, data: list[tuple[str, Any]] | None = None
) -> dict[str, Any]:
    """Test, validation and pool rows of the demo data (or of `data`, (text, reference)
    pairs); pool rows that duplicate a test row (exactly, by 5-gram Jaccard >= 0.5 or MiniLM
    cosine >= 0.97) are set aside."""
    import numpy as np

    from whetstone import neardup
    from whetstone.demo_data import demo_rows
    from whetstone.models import embeddings
    from whetstone.snapshots import split_bucket

    rows = sorted(demo_rows() if data is None else data, key=lambda r: split_bucket(r[0]))
    test, rest = rows[:n_test], rows[n_test:]
    vecs = embeddings.embed([t for t, _ in rows])
    test_vecs, rest_vecs = vecs[:n_test], vecs[n_test:]
    near = {m.i for m in neardup.best_matches([t for t, _ in rest], [t for t, _ in test], 0.5)}
    clean, aside = [], 0
    for i, ((text, ref), v) in enumerate(zip(rest, rest_vecs, strict=True)):
        if i in near or float(np.max(test_vecs @ v)) >= 0.97:
            aside += 1
            continue
        clean.append((text, ref))
    if len(clean) < n_val + n_pool:
        raise SystemExit(
            f"only {len(clean)} rows left after the test split: cannot take {n_val}+{n_pool}"
        )
    return {
        "test": test,
        "validation": clean[:n_val],
        "pool": clean[n_val : n_val + n_pool],
        "set_aside_as_test_duplicates": aside,
    }


def build_project(project: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Store every row and freeze the base snapshot (all noisy rows in train). Returns the ids
    by role and each pool row's corruption kind (None when clean)."""
    from whetstone import snapshots
    from whetstone.demo_data import demo_instruction, demo_schema
    from whetstone.records import Kind, Record, Source, Status, content_key

    instruction = demo_instruction() if args.instruction == "demo" else SHORT_INSTRUCTION
    project.create_task(TASK, Kind.extract, instruction=instruction, schema=demo_schema())
    parts = split_demo(args.test, args.validation, args.train_pool)
    keys = list(demo_schema()["properties"])
    pool_refs, kinds = corrupt([r for _, r in parts["pool"]], keys, args.noise, args.seed)
    rng = random.Random(args.seed + 1)
    clean_pool = [i for i, k in enumerate(kinds) if k is None]
    dups = []
    for i in rng.sample(clean_pool, min(args.dups, len(clean_pool))):
        text, ref, kind = near_duplicate(*parts["pool"][i], rng)
        dups.append((text, _canon(ref), f"dup_{kind}"))

    def rec(text: str, ref: str, role: str, n: int, noise: str | None) -> Record:
        return Record(
            task=TASK,
            input=text,
            reference=ref,
            status=Status.accepted,
            source=Source.imported,
            tags=["demo"],
            meta={"benchmark_role": role, "corruption": noise},
            source_key=content_key("curation-value", role, n, text, ref),
        )

    rows = (
        [(t, _canon(r), "test", None) for t, r in parts["test"]]
        + [(t, _canon(r), "validation", None) for t, r in parts["validation"]]
        + [
            (t, ref, "pool", k)
            for (t, _), ref, k in zip(parts["pool"], pool_refs, kinds, strict=True)
        ]
        + [(t, ref, "pool", k) for t, ref, k in dups]
    )
    ids = project.store.add_records(
        [rec(t, ref, role, n, k) for n, (t, ref, role, k) in enumerate(rows)]
    )
    roles: dict[str, list[int]] = {"test": [], "validation": [], "train": []}
    noise: dict[int, str | None] = {}
    for rid, (_, _, role, k) in zip(ids, rows, strict=True):
        assert rid is not None
        roles["train" if role == "pool" else role].append(rid)
        if role == "pool":
            noise[rid] = k
    assignment = {rid: split for split, rids in roles.items() for rid in rids}
    snap = snapshots.freeze(
        project, TASK, assignment, info={"method": "benchmark-split", "arm": "all noisy"}
    )
    return {
        "snapshot": snap,
        "roles": roles,
        "noise": noise,
        "set_aside": parts["set_aside_as_test_duplicates"],
    }


def random_snapshot(project: Any, data: dict[str, Any], n: int, seed: int) -> Any:
    from whetstone import snapshots

    roles = data["roles"]
    picked = random.Random(seed + 2).sample(roles["train"], n)
    assignment = {rid: "train" for rid in picked}
    assignment |= {rid: "test" for rid in roles["test"]}
    assignment |= {rid: "validation" for rid in roles["validation"]}
    return snapshots.freeze(
        project, TASK, assignment, info={"method": "benchmark-random", "n": n, "seed": seed}
    )


def composition(ids: list[int], noise: dict[int, str | None]) -> dict[str, int]:
    """How many of the training rows are clean, corrupted (by kind) or added near-duplicates."""
    c = Counter(noise.get(i) or "clean" for i in ids)
    return {k: c.get(k, 0) for k in ("clean", *KINDS, *(f"dup_{d}" for d in DUP_KINDS))}


def noise_detection(project: Any, snap_id: str, noise: dict[int, str | None]) -> dict[str, Any]:
    """Per step, which kinds of bad rows it removed or flagged (ground truth only reported)."""
    from whetstone.store.curation import snapshot_decisions

    out: dict[str, Counter[str]] = {}
    for d in snapshot_decisions(project.store, snap_id):
        if d["action"] in ("removed", "flagged", "upweighted") and d["record_id"] in noise:
            key = f"{d['step']}:{d['action']}"
            out.setdefault(key, Counter())[noise[d["record_id"]] or "clean"] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


# ---- the arms --------------------------------------------------------------------------------
def train_and_eval(
    project: Any, snap: Any, cfg: Any, test_snap: str, max_new: int
) -> tuple[Any, Any, float]:
    from whetstone.evaluate.metrics import main_score
    from whetstone.evaluate.runner import evaluate
    from whetstone.train import train_task

    t0 = time.perf_counter()
    result = train_task(project, TASK, cfg, snapshot_id=snap.id, progress=False, metric=main_score)
    wall = time.perf_counter() - t0
    ev = evaluate(
        project, TASK, result.adapter, "test", test_snap, max_new_tokens=max_new, batch_size=16
    )
    return result, ev, wall


def outcome_of(diff: dict[str, float]) -> str:
    """ "beats" or "loses" only when the paired 95% interval excludes zero; else "ties"."""
    if diff["low"] > 0:
        return "beats"
    return "loses" if diff["high"] < 0 else "ties"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train-pool", type=int, default=200, help="clean pool rows before noise")
    ap.add_argument(
        "--budget",
        type=int,
        default=120,
        help="N for the random and curated arms; when curation keeps fewer training rows, N is "
        "what it keeps",
    )
    ap.add_argument(
        "--noise", type=float, default=0.3, help="fraction of pool references corrupted"
    )
    ap.add_argument("--dups", type=int, default=20, help="near-duplicate rows added to the pool")
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--validation", type=int, default=24)
    ap.add_argument("--instruction", choices=["short", "demo"], default="short")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-minutes", type=float, default=40.0, help="reported against, not enforced"
    )
    # 4 epochs of the pool (112 steps): at 2 every arm's best checkpoint was its last, so the
    # adapters were still learning and had not yet fitted the corrupted labels either.
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument(
        "--same-steps",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="every arm trains the steps --epochs give the whole pool (--no-same-steps: every "
        "arm trains --epochs)",
    )
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=192, help="no example is cut at 192 (short)")
    ap.add_argument(
        "--eval-max-records", type=int, default=24, help="validation records per check (all 24)"
    )
    ap.add_argument("--evals-per-run", type=int, default=3, help="validations per training run")
    ap.add_argument("--keep", action="store_true", help="keep the temporary project")
    args = ap.parse_args()

    import whetstone
    from whetstone import registry
    from whetstone.curate import curate
    from whetstone.errors import InvalidInput
    from whetstone.evaluate.compare import compare_evaluations
    from whetstone.train import TrainConfig, train_config
    from whetstone.train.scoring import reference_losses

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="whetstone-curation-value-"))
    project = whetstone.init(tmp / "proj")
    data = build_project(project, args)
    base_snap, noise = data["snapshot"], data["noise"]
    task = project.task(TASK)
    max_new = common.answer_budget(
        task, project.store.iter_records(TASK, ids=data["roles"]["test"])
    )

    pool_steps = -(-len(data["roles"]["train"]) // args.batch_size) * args.epochs

    def config(n_train: int) -> TrainConfig:
        # With --same-steps every arm takes the optimizer steps `--epochs` give the whole pool,
        # so a smaller set is not also a smaller training budget (it gets more epochs instead);
        # without it, every arm takes `--epochs`. eval_every is sized so every arm is validated
        # the same number of times; everything else is identical.
        per_epoch = -(-n_train // args.batch_size)
        steps = pool_steps if args.same_steps else per_epoch * args.epochs
        return train_config(
            epochs=-(-steps // per_epoch),
            max_steps=steps,
            lr=args.lr,
            lora_r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            batch_size=args.batch_size,
            max_length=args.max_length,
            eval_every=max(1, steps // args.evals_per_run),
            eval_max_records=args.eval_max_records,
            patience=args.evals_per_run,
            seed=args.seed,
        )

    arms: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}

    def run_arm(name: str, snap: Any) -> None:
        train_ids = snap.ids("train")
        print(
            f"[{(time.perf_counter() - t_start) / 60:5.1f} min] training {name} on {len(train_ids)} rows"
        )
        result, ev, wall = train_and_eval(
            project, snap, config(len(train_ids)), base_snap.id, max_new
        )
        timings[f"train_{name}_s"] = round(wall, 1)
        arms[name] = {
            "snapshot": snap.id,
            "train_rows": len(train_ids),
            "composition": composition(train_ids, noise),
            "adapter": result.adapter,
            "steps": result.steps,
            "best_step": result.best_step,
            "best_validation_metric": result.best_metric,
            "train_wall_s": round(wall, 1),
            "evaluation": ev,
        }

    run_arm("all noisy", base_snap)
    # What a user runs in production before curating: the adapter trained on the data they had.
    registry.set_stage(
        project,
        arms["all noisy"]["adapter"],
        "production",
        action="promote",
        actor="benchmark",
        reason="the model in production before curation",
    )
    print(f"[{(time.perf_counter() - t_start) / 60:5.1f} min] curating")
    t0 = time.perf_counter()
    try:
        cur = curate(
            project, TASK, {"drop_noisy": True}, budget=args.budget, scorer=reference_losses
        )
    except InvalidInput as e:
        if "budget" not in str(e):
            raise
        # Curation kept fewer training rows than the budget: both N arms take what it kept.
        print(f"  {e}: curating again without a budget")
        cur = curate(project, TASK, {"drop_noisy": True}, scorer=reference_losses)
    timings["curate_s"] = round(time.perf_counter() - t0, 1)
    cur_snap = cur.snapshot
    n = len(cur_snap.ids("train"))
    same_splits = {
        s: sorted(cur_snap.ids(s)) == sorted(base_snap.ids(s)) for s in ("validation", "test")
    }
    run_arm("random N", random_snapshot(project, data, n, args.seed))
    run_arm("curated N", cur_snap)

    # ---- report ------------------------------------------------------------------------------
    rows = []
    for name, arm in arms.items():
        ev = arm.pop("evaluation")
        arm["metrics"] = {k: ev.metrics[k] for k in METRICS}
        arm["_ev"] = ev
        comp = arm["composition"]
        bad = sum(comp[k] for k in KINDS)
        rows.append(
            [
                name,
                arm["train_rows"],
                f"{bad} ({100 * bad / arm['train_rows']:.0f}%)",
                common.ci(ev.metrics["field_f1"]),
                common.ci(ev.metrics["object_exact"]),
                f"{arm['train_wall_s'] / 60:.1f}",
            ]
        )
    paired = {}
    cur_ev = arms["curated N"]["_ev"]
    for other in ("all noisy", "random N"):
        comp = compare_evaluations(project, task, cur_ev, arms[other]["_ev"])
        paired[f"curated N - {other}"] = {
            k: {x: comp.metrics[k][x] for x in ("diff", "low", "high", "p_value")} for k in METRICS
        }
    for arm in arms.values():
        arm["evaluation_id"] = arm.pop("_ev").id
    total_min = (time.perf_counter() - t_start) / 60
    common.print_table(
        f"Demo addresses: {args.test} clean held-out test records, {100 * args.noise:.0f}% of "
        f"{args.train_pool} training references corrupted (95% bootstrap CI)",
        ["arm", "train rows", "corrupted in train", "field F1", "exact match", "train min"],
        rows,
    )
    common.print_table(
        "Curated N minus each baseline, paired bootstrap on the same test records (points)",
        ["comparison", "field F1", "exact match"],
        [
            [
                k,
                *(
                    f"{100 * v[m]['diff']:+.1f} [{100 * v[m]['low']:+.1f}, {100 * v[m]['high']:+.1f}]"
                    for m in METRICS
                ),
            ]
            for k, v in paired.items()
        ],
    )
    common.print_table(
        "Curation steps",
        ["step", "before", "removed", "flagged", "changed", "seconds"],
        [
            [s.name, s.before, s.removed, s.flagged, s.changed, f"{s.seconds:.1f}"]
            for s in cur.steps
        ],
    )
    detection = noise_detection(project, cur_snap.id, noise)
    for k, v in detection.items():
        print(f"  {k}: {v}")
    outcome = {
        o: outcome_of(paired[f"curated N - {o}"]["field_f1"]) for o in ("all noisy", "random N")
    }
    verdict = all(v == "beats" for v in outcome.values())
    print(
        f"curated N on field F1: {outcome} · beats both: {verdict} · total {total_min:.1f} min "
        f"(budget {args.max_minutes:.0f}) · project {'kept at ' + str(tmp) if args.keep else 'removed'}"
    )
    path = common.write_result(
        "curation_value",
        {
            "settings": {
                **vars(args),
                "n": n,
                "train_config": config(n).effective(),
                "steps_by_arm": {k: config(a["train_rows"]).max_steps for k, a in arms.items()},
                "eval_every_by_arm": {
                    n: config(a["train_rows"]).eval_every for n, a in arms.items()
                },
                "max_new_tokens": max_new,
                "curate_config": {
                    "drop_noisy": True,
                    "budget": args.budget if n == args.budget else None,
                    "other keys": "defaults",
                },
            },
            "data": {
                "test": len(data["roles"]["test"]),
                "validation": len(data["roles"]["validation"]),
                "pool_rows": len(data["roles"]["train"]),
                "pool_composition": composition(data["roles"]["train"], noise),
                "set_aside_as_test_duplicates": data["set_aside"],
            },
            "arms": arms,
            "paired_differences": paired,
            "curated_vs_field_f1": outcome,
            "curated_beats_both_on_field_f1": verdict,
            "curation": {
                "snapshot": cur_snap.id,
                "same_validation_and_test_as_baselines": same_splits,
                "steps": [s.as_dict() for s in cur.steps],
                "what_each_step_caught": detection,
            },
            "timings": {**timings, "total_s": round(total_min * 60, 1)},
            "within_budget": total_min <= args.max_minutes,
            "peak_rss_mib": common.peak_rss_mib(),
        },
    )
    print(f"wrote {path}")
    project.close()
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
