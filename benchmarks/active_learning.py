"""Does `curate next` save labels? A multi-seed active-learning benchmark on a bundled task.

`--task addresses` (the default): the 1,488 hand-labelled US addresses, an extract task scored
by field F1 (and whole-object exact match). `--task intents`: the 693 SNIPS voice-assistant
requests, a classify task over 7 intents scored by accuracy (and macro F1), so the default
strategy is not tuned to addresses alone. What differs by task is one `TaskSpec` (below); the
code path is the same.

The rows are split once (by a hash of the text, as `curation_value.py` does): a fixed held-out
**test** split (`--test`; pool rows that duplicate a test row are set aside), a fixed
**validation** split (`--validation`, checkpoint choice only) and an unlabelled **pool**
(`--pool`). Addresses: 400 / 40 / 900. Intents: 150 / 40 / 480 (11 pool rows duplicate a test
row, so 492 are left after test and validation; the 150 test rows hold 17 to 34 of each
intent). Each arm labels the pool in sequential batches up to each budget of the curve
(addresses 40, 80, 160, 320; intents 20, 40, 80, 160): the batch that takes an arm from
budget a to budget b is chosen with the uncertainty of the adapter that arm trained at budget
a (the base model's for the first batch), as a user running `curate next` between turns
would. The arms:

    random               uniform over the unlabelled pool (seeded)
    curate-next          today's `curate next`: uncertainty x novelty x typicality, greedy
                         (whetstone.curate.next.rank, the function `curate next` runs)
    uncertainty          the most uncertain records (`curate.next.uncertainty`)
    diversity            k-center greedy on the MiniLM embeddings (coreset; Sener & Savarese
                         2018), from what is labelled (a seeded random record at cold start)
    cluster-uncertainty  k-means into as many clusters as the batch, the most uncertain record
                         of each (diverse mini-batch active learning, Zhdanov 2019): it covers
                         the pool when the model's uncertainty means little (the cold start)

A record's uncertainty is what `curate next` reads from a stored record, 1 - exp(confidence),
with the confidence the predictor gives (`predict.load_predictor`, as `whetstone predict` and
the server store it): for addresses the answer's mean token log-prob, for intents the log of
the chosen label's probability under label likelihood (`models.label_scoring`), so 1 - the top
label's probability (least confidence).

Every arm trains the same recipe from the base model on all its labels: LoRA (the project's
default method for every task kind, intents included), the same optimizer steps for a label
count (`--steps` at every budget, or `--steps-per-label`, default max(40, budget/4), batches
of 8), the checkpoint chosen on the validation split, and is scored on the test split. On the
addresses at 40 and 80 labels that default leaves every run's best checkpoint at its last step
(README): there the steps, not the labels, bound the score, so a curve that means to measure
labels there needs `--steps-per-label` (steps that grow with the labels). The committed
intents curve keeps the addresses' default rule: a label answer is a few tokens, so a step is
as cheap as an address step, and the many passes over the smallest budgets (16 at 20 labels)
are what the validation checkpoint guards against in both tasks; one rule keeps the two
curves comparable. Seeds (`--seeds`, >= 3 for a claim)
vary both the picks and the training.

Reported: the curve of the main metric per arm with a band across seeds (PNG), the area under
it (trapezoid, normalised by the budget range), and the labels each arm needs to reach
random's mean score at the largest budget, with a 95% interval from a bootstrap over seeds
(linear interpolation between budgets; "never" when the arm's curve stays below).

Resumable and cached under `--work` (default ~/.cache/whetstone-bench/active-learning, with
`-intents` for the intents): the split, the decode budget, pool embeddings, every model's
per-record pool confidences, and one JSON state per (arm, budget, seed) under runs/, skipped
when present.
`--report-only` summarises what is there. Results go to benchmarks/results/active_learning.json
(addresses) or active_learning_intents.json, each with its PNG (or `--out NAME`, or a path).

Run:  python benchmarks/active_learning.py [--task intents] [--arms random,curate-next]
          [--budgets 40,80] [--seeds 0,1,2] [--steps 20 | --steps-per-label 1] [--test-max 200]
Every arm at every point on 2 CPU cores is many hours (each 40-step training is minutes, and
each uncertainty pass answers the whole pool); a GPU runs the full grid.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

ARMS = ("random", "curate-next", "uncertainty", "diversity", "cluster-uncertainty")
NEEDS_UNCERTAINTY = frozenset({"curate-next", "uncertainty", "cluster-uncertainty"})
WORK_ROOT = Path.home() / ".cache" / "whetstone-bench"


# ---- the tasks ---------------------------------------------------------------------------------
def _address_rows() -> list[tuple[str, str]]:
    from whetstone.demo_data import demo_rows
    from whetstone.records import canonical_json

    return [(text, canonical_json(ref)) for text, ref in demo_rows()]


def _address_task(project: Any, name: str) -> None:
    from curation_value import SHORT_INSTRUCTION

    from whetstone.demo_data import demo_schema
    from whetstone.records import Kind

    # The short prompt (same for every arm) makes each step and answer ~2.8x cheaper on CPU.
    project.create_task(name, Kind.extract, instruction=SHORT_INSTRUCTION, schema=demo_schema())


def _intent_rows() -> list[tuple[str, str]]:
    from whetstone.demo_data import intent_rows

    return intent_rows()


def _intent_task(project: Any, name: str) -> None:
    from whetstone.demo_data import intent_labels, intents_instruction
    from whetstone.records import Kind

    # The demo's own instruction: it names the labels, which label likelihood scores.
    project.create_task(
        name, Kind.classify, instruction=intents_instruction(), labels=list(intent_labels())
    )


@dataclass(frozen=True)
class TaskSpec:
    """What the benchmark does differently per task; everything else is one code path."""

    name: str  # the task in the benchmark's project
    metrics: tuple[str, ...]  # evaluation metrics kept; the first is the curve's and the AUC's
    metric_label: str  # the first metric, as tables and the plot name it
    title: str
    test: int  # default split sizes (test fixed, validation for the checkpoint, pool)
    validation: int
    pool: int
    budgets: tuple[int, ...]  # default curve
    results: str  # results/<results>.json and .png
    work: Path  # default --work
    rows: Callable[[], list[tuple[str, str]]]  # (text, stored reference) of every labelled row
    create_task: Callable[[Any, str], None]  # (project, name): the task, as the arms train it


TASKS = {
    "addresses": TaskSpec(
        name="addresses",
        metrics=("field_f1", "object_exact"),
        metric_label="field F1",
        title="Active learning on the demo addresses",
        test=400,
        validation=40,
        pool=900,
        budgets=(40, 80, 160, 320),
        results="active_learning",  # the name results committed before --task keep
        work=WORK_ROOT / "active-learning",
        rows=_address_rows,
        create_task=_address_task,
    ),
    "intents": TaskSpec(
        name="intents",
        metrics=("accuracy", "macro_f1"),
        metric_label="accuracy",
        title="Active learning on the demo intents",
        test=150,
        validation=40,
        pool=480,  # of the 492 left after test, validation and the test duplicates
        budgets=(20, 40, 80, 160),  # 7 intents: the first batch is ~3 of each
        results="active_learning_intents",
        work=WORK_ROOT / "active-learning-intents",
        rows=_intent_rows,
        create_task=_intent_task,
    ),
}


# ---- the strategies: positions into the pool, on plain arrays ---------------------------------
def pick_random(unlabelled: list[int], n: int, rng: random.Random) -> list[int]:
    return rng.sample(unlabelled, min(n, len(unlabelled)))


def pick_uncertainty(unlabelled: list[int], unc: Any, n: int, rng: random.Random) -> list[int]:
    """The n most uncertain; ties (the base model is unsure of everything) broken at random."""
    order = sorted(unlabelled, key=lambda i: (-float(unc[i]), rng.random()))
    return order[:n]


def pick_diversity(vecs: Any, labelled: list[int], n: int, rng: random.Random) -> list[int]:
    """k-center greedy from what is labelled (the curation step's `k_center`); at cold start
    from a random record, so seeds differ."""
    from whetstone.curate.select import k_center

    start = list(labelled) or [rng.randrange(len(vecs))]
    chosen = k_center(vecs, len(labelled) + n, start)
    return [i for i in chosen if i not in set(labelled)][:n]


def pick_cluster_uncertainty(
    vecs: Any, unlabelled: list[int], unc: Any, n: int, seed: int
) -> list[int]:
    """k-means of the unlabelled pool into n clusters; from each, the most uncertain record
    (ties: the one nearest its centroid)."""
    import numpy as np
    from sklearn.cluster import KMeans

    if n >= len(unlabelled):
        return list(unlabelled)
    x = vecs[unlabelled]
    km = KMeans(n_clusters=n, n_init=3, random_state=seed).fit(x)
    dist = np.linalg.norm(x - km.cluster_centers_[km.labels_], axis=1)
    out = []
    for c in range(n):
        members = np.flatnonzero(km.labels_ == c)
        if len(members) == 0:
            continue
        best = min(members, key=lambda j: (-float(unc[unlabelled[j]]), float(dist[j])))
        out.append(unlabelled[int(best)])
    return out


def pick_curate_next(
    vecs: Any, unlabelled: list[int], labelled: list[int], unc: Any, n: int
) -> list[int]:
    """What `curate next` would queue: whetstone.curate.next.rank on the unlabelled pool."""
    import numpy as np

    from whetstone.curate.next import rank

    unl = np.array(unlabelled)
    lv = vecs[labelled] if labelled else None
    return [int(unl[i]) for i, _, _ in rank(np.asarray(unc)[unl], vecs[unl], lv, n)]


def candidates(n_pool: int, labelled: list[int], limit: int | None, seed: int) -> list[int]:
    """The unlabelled positions an uncertainty arm considers: all, or a seeded sample of
    `limit` (a subsampled pool, as Gal et al. 2017 do, so that each model answers only that
    many). At cold start the sample does not depend on the seed, so every seed shares the base
    model's answers."""
    taken = set(labelled)
    unlabelled = [i for i in range(n_pool) if i not in taken]
    if not limit or limit >= len(unlabelled):
        return unlabelled
    rng = random.Random(f"candidates:{len(labelled)}:{seed if labelled else 'cold'}")
    return sorted(rng.sample(unlabelled, limit))


def choose(
    arm: str,
    vecs: Any,
    labelled: list[int],
    unc: Any | None,
    n: int,
    seed: int,
    limit: int | None = None,
) -> list[int]:
    """The arm's next batch of n pool positions, given the labelled positions and the pool's
    uncertainty under the arm's current model (None for arms that do not use it; `limit`:
    uncertainty arms choose among that many candidates)."""
    rng = random.Random(f"{arm}:{seed}:{len(labelled)}")
    unlabelled = candidates(len(vecs), labelled, None, seed)
    if arm == "random":
        return pick_random(unlabelled, n, rng)
    if arm == "diversity":
        return pick_diversity(vecs, labelled, n, rng)
    if unc is None:
        raise ValueError(f"arm {arm!r} needs the pool's uncertainty")
    unlabelled = candidates(len(vecs), labelled, limit, seed)
    if arm == "uncertainty":
        return pick_uncertainty(unlabelled, unc, n, rng)
    if arm == "cluster-uncertainty":
        return pick_cluster_uncertainty(vecs, unlabelled, unc, n, seed)
    if arm == "curate-next":
        return pick_curate_next(vecs, unlabelled, labelled, unc, n)
    raise ValueError(f"unknown arm {arm!r} (choose from {', '.join(ARMS)})")


# ---- the summary -------------------------------------------------------------------------------
def auc(budgets: list[int], scores: list[float]) -> float:
    """Area under the curve (trapezoid), normalised by the budget range: a mean score."""
    if len(budgets) < 2:
        return scores[0]
    area = sum(
        (b1 - b0) * (s0 + s1) / 2
        for b0, b1, s0, s1 in zip(budgets, budgets[1:], scores, scores[1:], strict=False)
    )
    return area / (budgets[-1] - budgets[0])


def labels_to_reach(budgets: list[int], scores: list[float], target: float) -> float | None:
    """The first label count at which the curve reaches `target`, interpolated linearly
    between budgets; None when it never does."""
    for i, (b, s) in enumerate(zip(budgets, scores, strict=True)):
        if s >= target:
            if i == 0:
                return float(b)
            b0, s0 = budgets[i - 1], scores[i - 1]
            return b0 + (b - b0) * (target - s0) / (s - s0)
    return None


def bootstrap_labels(
    curves: dict[str, dict[int, list[float]]], budgets: list[int], resamples: int = 2000
) -> dict[str, dict[str, Any]]:
    """Per arm, labels needed to reach random's mean score at the largest budget: the point
    estimate and a 95% percentile interval, resampling each arm's seeds with replacement."""
    import numpy as np

    rng = np.random.default_rng(0)
    rnd = curves.get("random")
    if not rnd or any(not rnd.get(b) for b in budgets):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for arm, per_budget in curves.items():
        if any(not per_budget.get(b) for b in budgets):
            continue
        arr = np.array([per_budget[b] for b in budgets])  # budgets x seeds
        rarr = np.array([rnd[b] for b in budgets])
        point = labels_to_reach(budgets, list(arr.mean(axis=1)), float(rarr[-1].mean()))
        draws: list[float] = []
        never = 0
        for _ in range(resamples):
            a = arr[:, rng.integers(arr.shape[1], size=arr.shape[1])].mean(axis=1)
            target = rarr[-1, rng.integers(rarr.shape[1], size=rarr.shape[1])].mean()
            got = labels_to_reach(budgets, list(a), float(target))
            if got is None:
                never += 1
            else:
                draws.append(got)
        lo_hi = [round(float(np.percentile(draws, q)), 1) for q in (2.5, 97.5)] if draws else None
        out[arm] = {
            "labels": None if point is None else round(point, 1),
            "interval_95": lo_hi,
            "share_never": round(never / resamples, 3),
            "of_random_budget": None if point is None else round(point / budgets[-1], 3),
        }
    return out


def summarise(
    states: list[dict[str, Any]],
    base: dict[str, Any] | None,
    budgets: list[int],
    metrics: tuple[str, ...],
) -> dict[str, Any]:
    """Curves of each of `metrics` (mean, min, max across seeds); for the first, the AUC per
    arm and the labels to reach random's final."""
    import numpy as np

    main = metrics[0]
    curves: dict[str, dict[str, dict[int, list[float]]]] = {m: {} for m in metrics}
    for s in states:
        for m in metrics:
            curves[m].setdefault(s["arm"], {}).setdefault(s["budget"], []).append(
                s["metrics"][m]["value"]
            )
    table: dict[str, Any] = {}
    for arm, per_budget in curves[main].items():
        done = [b for b in budgets if per_budget.get(b)]
        means = [float(np.mean(per_budget[b])) for b in done]
        table[arm] = {
            "points": {
                str(b): {
                    m: {
                        "mean": round(float(np.mean(curves[m][arm][b])), 4),
                        "min": round(float(np.min(curves[m][arm][b])), 4),
                        "max": round(float(np.max(curves[m][arm][b])), 4),
                        "seeds": len(curves[m][arm][b]),
                    }
                    for m in metrics
                }
                for b in done
            },
            f"auc_{main}": round(auc(done, means), 4) if done else None,
        }
    # The bootstrap resamples whole curves: only seeds that have every budget.
    by_seed: dict[str, dict[int, dict[int, float]]] = {}
    for s in states:
        by_seed.setdefault(s["arm"], {}).setdefault(s["seed"], {})[s["budget"]] = s["metrics"][
            main
        ]["value"]
    whole = {
        arm: {b: [c[b] for c in seeds.values() if len(c) == len(budgets)] for b in budgets}
        for arm, seeds in by_seed.items()
    }
    return {
        "base": base,
        "arms": table,
        "labels_to_reach_random_final": bootstrap_labels(whole, budgets),
    }


def plot(summary: dict[str, Any], path: Path, spec: TaskSpec) -> None:
    from whetstone.plots import figure_png

    # Every curve starts at the base model (0 labels), which every arm shares.
    main = spec.metrics[0]
    start = []
    if summary.get("base"):
        b0 = summary["base"][main]["value"]
        start = [{"mean": b0, "min": b0, "max": b0}]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        for arm, row in summary["arms"].items():
            pts = row["points"]
            xs = [0] * len(start) + [int(b) for b in pts]
            ys = start + [pts[b][main] for b in pts]
            ax.plot(xs, [p["mean"] * 100 for p in ys], marker="o", label=arm)
            ax.fill_between(
                xs, [p["min"] * 100 for p in ys], [p["max"] * 100 for p in ys], alpha=0.15
            )
        ax.set_xlabel("human labels")
        ax.set_ylabel(f"{spec.metric_label} % on the test split (band: min-max over seeds)")
        ax.set_title(spec.title)
        ax.legend()

    path.write_bytes(figure_png(draw, (7, 4.5), dpi=120))


# ---- the running -------------------------------------------------------------------------------
def _dump(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str))
    tmp.replace(path)


def setup(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The project, its fixed split (ids by role, the pool in a fixed order) and the pool's
    unit embeddings; built once, then read from the work folder."""
    import numpy as np

    import whetstone
    from whetstone.models import embeddings

    spec: TaskSpec = TASKS[args.task]
    split_path = work / "split.json"
    if split_path.exists():
        split = json.loads(split_path.read_text())
        if split["sizes"] != {"test": args.test, "validation": args.validation, "pool": args.pool}:
            raise SystemExit(
                f"{split_path} holds another split {split['sizes']}: use another --work"
            )
        project = whetstone.open(str(work / "project"))
    else:
        from curation_value import split_demo

        from whetstone.records import Record, Source, Status, content_key

        project = whetstone.init(str(work / "project"))
        spec.create_task(project, spec.name)
        parts = split_demo(args.test, args.validation, args.pool, spec.rows())
        ids: dict[str, list[int]] = {}
        for role in ("test", "validation", "pool"):
            recs = [
                Record(
                    task=spec.name,
                    input=text,
                    reference=ref,
                    status=Status.accepted,
                    source=Source.imported,
                    tags=["demo", f"al-{role}"],
                    source_key=content_key("active-learning", role, text),
                )
                for text, ref in parts[role]
            ]
            ids[role] = [int(i) for i in project.store.add_records(recs) if i is not None]
        split = {
            "sizes": {"test": args.test, "validation": args.validation, "pool": args.pool},
            "ids": ids,
            "set_aside_as_test_duplicates": parts["set_aside_as_test_duplicates"],
        }
        _dump(split_path, split)
    emb_path = work / "pool-embeddings.npy"
    if emb_path.exists():
        vecs = np.load(emb_path)
    else:
        texts = texts_of(project, spec.name, split["ids"]["pool"])
        vecs = np.asarray(embeddings.embed(texts), dtype=np.float32)
        np.save(emb_path, vecs)
    return {"project": project, "split": split, "vecs": vecs}


def texts_of(project: Any, task: str, ids: list[int]) -> list[str]:
    by_id = {r.id: r.input_text for r in project.store.iter_records(task, ids=ids)}
    return [by_id[i] for i in ids]


def confidences(ctx: dict[str, Any], model: str, ids: list[int]) -> dict[int, float]:
    """Each pool record's answer confidence under `model` as the predictor gives it (an
    extract answer's mean token log-prob, a classify answer's label log-probability), cached
    per model; records answered before are not answered again."""
    from whetstone.predict import load_predictor

    path = ctx["work"] / "uncertainty" / f"{model.replace('/', '_').replace('@', '-')}.json"
    have = {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}
    todo = [i for i in ids if i not in have]
    if todo:
        t0 = time.perf_counter()
        task = ctx["spec"].name
        predictor = load_predictor(ctx["project"], task, model)
        texts: list[Any] = texts_of(ctx["project"], task, todo)  # prompts, as the predictor takes
        for start in range(0, len(todo), 64):  # saved as it goes: an interrupted pass resumes
            gens = predictor(
                texts[start : start + 64],
                batch_size=ctx["args"].batch_size,
                max_new_tokens=ctx["max_new"],
            )
            have |= {i: g.confidence for i, g in zip(todo[start : start + 64], gens, strict=True)}
            _dump(path, {str(k): v for k, v in have.items()})
        print(
            f"  confidences of {len(todo)} pool records under {model}: {time.perf_counter() - t0:.0f} s"
        )
    return {i: have[i] for i in ids}


def steps_for(budget: int, steps: int | None, per_label: float | None = None) -> int:
    """The same optimizer steps for a label count in every arm: `steps` at every budget, else
    `per_label` steps per label (at least 40), else max(40, budget / 4)."""
    if steps:
        return steps
    if per_label:
        return max(40, round(per_label * budget))
    return max(40, budget // 4)


def train_and_score(
    ctx: dict[str, Any], picked: list[int], seed: int, steps: int
) -> dict[str, Any]:
    from whetstone import snapshots
    from whetstone.evaluate.metrics import main_score
    from whetstone.evaluate.runner import evaluate
    from whetstone.train import train_config, train_task

    ids, args = ctx["split"]["ids"], ctx["args"]
    assignment = {rid: "train" for rid in picked}
    assignment |= {rid: "validation" for rid in ids["validation"]}
    assignment |= {rid: "test" for rid in ids["test"][: args.test_max]}
    project, spec = ctx["project"], ctx["spec"]
    snap = snapshots.freeze(project, spec.name, assignment, info={"method": "active-learning"})
    cfg = train_config(
        method="lora",
        max_steps=steps,
        epochs=1000,  # the steps bound the run, not the epochs
        lr=2e-3,
        batch_size=8,
        lora_r=16,
        lora_alpha=32,
        max_length=256,
        eval_every=max(5, steps // 3),
        eval_max_records=args.val_records or args.validation,
        seed=seed,
    )
    t0 = time.perf_counter()
    result = train_task(project, spec.name, cfg, snapshot_id=snap.id, metric=main_score)
    train_s = time.perf_counter() - t0
    ev = evaluate(
        project,
        spec.name,
        result.adapter,
        "test",
        snap.id,
        batch_size=args.batch_size,
        max_new_tokens=ctx["max_new"],
    )
    return {
        "adapter": result.adapter,
        "snapshot": snap.id,
        "steps": result.steps,
        "best_step": result.best_step,
        "best_validation": result.best_metric,
        "train_s": round(train_s, 1),
        "eval_s": round(time.perf_counter() - t0 - train_s, 1),
        "metrics": {m: ev.metrics[m] for m in spec.metrics},
    }


def run_point(
    ctx: dict[str, Any], arm: str, seed: int, budget: int, prev: dict[str, Any] | None
) -> dict[str, Any]:
    """One (arm, budget, seed): pick the batch from the previous point's labels and model,
    train from the base model on every label so far, score on the test split."""
    import numpy as np

    pool_ids = ctx["split"]["ids"]["pool"]
    pos = {rid: i for i, rid in enumerate(pool_ids)}
    labelled = [pos[r] for r in prev["picked"]] if prev else []
    model = prev["adapter"] if prev else "base"
    unc = None
    if arm in NEEDS_UNCERTAINTY:
        from whetstone.curate.next import uncertainty
        from whetstone.records import Record

        limit = ctx["args"].candidates
        todo = [pool_ids[i] for i in candidates(len(pool_ids), labelled, limit, seed)]
        conf = confidences(ctx, model, todo)
        unc = np.zeros(len(pool_ids), dtype=np.float32)
        for rid, c in conf.items():
            unc[pos[rid]] = uncertainty(Record(task=ctx["spec"].name, input="", confidence=c))
    t0 = time.perf_counter()
    batch = choose(
        arm, ctx["vecs"], labelled, unc, budget - len(labelled), seed, ctx["args"].candidates
    )
    pick_s = time.perf_counter() - t0
    picked = [pool_ids[i] for i in labelled + batch]
    steps = steps_for(budget, ctx["args"].steps, ctx["args"].steps_per_label)
    out = train_and_score(ctx, picked, seed, steps)
    return {
        "arm": arm,
        "budget": budget,
        "seed": seed,
        "prev_budget": prev["budget"] if prev else 0,
        "uncertainty_from": model if arm in NEEDS_UNCERTAINTY else None,
        "picked": picked,
        "pick_s": round(pick_s, 2),
        "test_records": min(ctx["args"].test_max, len(ctx["split"]["ids"]["test"])),
        **out,
    }


def base_score(ctx: dict[str, Any]) -> dict[str, Any]:
    """The base model on the test split (budget 0 of every curve), cached."""
    from whetstone import snapshots
    from whetstone.evaluate.runner import evaluate

    path = ctx["work"] / f"base-test{ctx['args'].test_max}.json"
    if path.exists():
        return json.loads(path.read_text())
    ids, args, spec = ctx["split"]["ids"], ctx["args"], ctx["spec"]
    snap = snapshots.freeze(
        ctx["project"], spec.name, {rid: "test" for rid in ids["test"][: args.test_max]}, info={}
    )
    ev = evaluate(
        ctx["project"],
        spec.name,
        "base",
        "test",
        snap.id,
        batch_size=args.batch_size,
        max_new_tokens=ctx["max_new"],
    )
    out = {m: ev.metrics[m] for m in spec.metrics}
    _dump(path, out)
    return out


def answer_budget(work: Path, project: Any, task: str) -> int:
    """Answer length cap, the same for every model and point: the task's default decode budget
    (`common.answer_budget`) over every labelled row, fixed in the work folder on its first
    run like the split, so a resumed curve keeps the budget its first points had."""
    path = work / "answer-budget.json"
    if path.exists():
        return int(json.loads(path.read_text())["max_new_tokens"])
    value = common.answer_budget(
        project.task(task), project.store.iter_records(task, has_reference=True)
    )
    _dump(path, {"max_new_tokens": value})
    return value


def run_grid(ctx: dict[str, Any], arms: list[str], budgets: list[int], seeds: list[int]) -> None:
    """Every requested point, budget by budget (so a cut-short run still compares arms at the
    same budgets), each skipped when its state file is there."""
    runs = ctx["work"] / "runs"
    for bi, budget in enumerate(budgets):
        for seed in seeds:
            for arm in arms:
                path = runs / arm / f"b{budget}-s{seed}.json"
                prev_b = budgets[bi - 1] if bi else 0
                if path.exists():
                    if json.loads(path.read_text())["prev_budget"] != prev_b:
                        raise SystemExit(
                            f"{path} was picked after budget {prev_b}'s batch in another curve: use another --work"
                        )
                    continue
                prev = (
                    json.loads((runs / arm / f"b{prev_b}-s{seed}.json").read_text()) if bi else None
                )
                t0 = time.perf_counter()
                print(f"{arm} · {budget} labels · seed {seed}")
                state = run_point(ctx, arm, seed, budget, prev)
                state["wall_s"] = round(time.perf_counter() - t0, 1)
                _dump(path, state)
                spec = ctx["spec"]
                score = state["metrics"][spec.metrics[0]]["value"]
                print(f"  {spec.metric_label} {score * 100:.1f} · {state['wall_s']:.0f} s")


def _csv(text: str, cast: Any) -> list[Any]:
    return [cast(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--task", choices=list(TASKS), default="addresses")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--budgets", default=None, help="default: the task's curve")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps at every budget")
    ap.add_argument(
        "--steps-per-label",
        type=float,
        default=None,
        help="steps that grow with the labels: this many per label, at least 40",
    )
    ap.add_argument("--test", type=int, default=None, help="held-out test records (fixed)")
    ap.add_argument(
        "--test-max", type=int, default=None, help="score on the first N test records (all)"
    )
    ap.add_argument("--validation", type=int, default=None)
    ap.add_argument("--pool", type=int, default=None)
    ap.add_argument(
        "--val-records", type=int, default=0, help="validate on at most N (0: all of them)"
    )
    ap.add_argument(
        "--candidates",
        type=int,
        default=0,
        help="uncertainty arms choose among a seeded sample of this many (0: the whole pool)",
    )
    ap.add_argument("--batch-size", type=int, default=16, help="generation batch")
    ap.add_argument("--work", type=Path, default=None, help="default: by task, under ~/.cache")
    ap.add_argument("--report-only", action="store_true", help="summarise the states there")
    ap.add_argument(
        "--out", default=None, help="results/<out>.json and .png, or a path without suffix"
    )
    return with_task_defaults(ap.parse_args(argv))


def with_task_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every setting left unset from the task's spec; what was given stays."""
    spec = TASKS[args.task]
    defaults = {
        "budgets": ",".join(map(str, spec.budgets)),
        "test": spec.test,
        "validation": spec.validation,
        "pool": spec.pool,
        "work": spec.work,
        "out": spec.results,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.test_max is None:
        args.test_max = args.test
    return args


def main() -> None:
    args = parse_args()
    spec = TASKS[args.task]
    arms, budgets, seeds = _csv(args.arms, str), _csv(args.budgets, int), _csv(args.seeds, int)
    unknown = [a for a in arms if a not in ARMS]
    if unknown or budgets != sorted(set(budgets)) or args.pool < max(budgets):
        raise SystemExit(f"--arms from {', '.join(ARMS)}; --budgets increasing and at most --pool")
    work = args.work.expanduser()
    work.mkdir(parents=True, exist_ok=True)
    ctx = {"work": work, "args": args, "spec": spec, **setup(work, args)}
    ctx["max_new"] = answer_budget(work, ctx["project"], spec.name)
    t0 = time.perf_counter()
    base = base_score(ctx)
    if not args.report_only:
        run_grid(ctx, arms, budgets, seeds)
    states = [
        json.loads(p.read_text())
        for arm in arms
        for b in budgets
        for s in seeds
        if (p := work / "runs" / arm / f"b{b}-s{s}.json").exists()
    ]
    if not states:
        raise SystemExit(f"no finished points under {work / 'runs'}")
    summary = summarise(states, base, budgets, spec.metrics)
    main_metric = spec.metrics[0]
    # An absolute --out is a path of its own (a trial run's results stay out of the repo).
    png = common.RESULTS / f"{args.out}.png"
    plot(summary, png, spec)
    rows = [
        [
            arm,
            *(
                f"{row['points'][str(b)][main_metric]['mean'] * 100:.1f} (n={row['points'][str(b)][main_metric]['seeds']})"
                if str(b) in row["points"]
                else "–"
                for b in budgets
            ),
            row[f"auc_{main_metric}"],
        ]
        for arm, row in summary["arms"].items()
    ]
    common.print_table(
        f"{spec.name}: {spec.metric_label} % (mean over seeds)",
        ["arm", *map(str, budgets), "AUC"],
        rows,
    )
    print(json.dumps(summary["labels_to_reach_random_final"], indent=1))
    path = common.write_result(
        args.out,
        {
            "settings": {**vars(args), "work": str(work), "max_new_tokens": ctx["max_new"]},
            "split": {k: v for k, v in ctx["split"].items() if k != "ids"},
            # What the points trained (a resumed curve may hold points of another --steps).
            "steps_per_budget": {
                str(b): sorted({s["steps"] for s in states if s["budget"] == b}) for b in budgets
            },
            "summary": summary,
            "points": [{k: v for k, v in s.items() if k != "picked"} for s in states],
            "this_invocation_s": round(time.perf_counter() - t0, 1),
            "curve_png": str(
                png.relative_to(common.ROOT) if png.is_relative_to(common.ROOT) else png
            ),
        },
    )
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
