"""`whetstone demo`: the whole story on real data, offline, in one command.

In a fresh project with the bundled base model and the bundled hand-labelled addresses:
1. a fixed held-out test set is set aside (imported as ground truth, tagged `heldout`);
2. the base model is evaluated on it (the baseline);
3. each turn, a "production" stream of new addresses is answered by the current production
   model (or the base model) and captured; a simulated reviewer, whose answers are the real
   labels, reviews a budget of them chosen by `curate next`; then one flywheel turn runs
   (curate → train → evaluate → gate → promote or refuse → report → next queue);
4. turns go on while they fit the time budget (`minutes`, 20 by default in the CLI), and the
   report shows the gate's decisions and the learning curve against the base model.

With `compare_random=True` a second arm does the same with the reviewer choosing at random.
That A/B is not in the default story: on 2 CPU cores it halves the turns that fit, and one
training run per arm and turn cannot order two arms (benchmarks/active_learning.py measures
what `curate next` saves, over seeds and label budgets).

With `serve=True` the production traffic goes through the OpenAI-compatible server
(`/v1/chat/completions`) and the reviewer's corrections through `/v1/feedback`.
"""

from __future__ import annotations

import json
import platform
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from whetstone.errors import InvalidInput
from whetstone.models.generate import GENERATE_BATCH
from whetstone.project import Project
from whetstone.records import Kind, Record, Source, Status, canonical_json, content_key

TASK = "addresses"
ARMS = ("curate-next", "random")


@dataclass
class DemoPlan:
    turns: int = 5  # as many as fit `minutes`; 5 x 110 production requests fit the data
    stream_per_turn: int = 110
    labels_per_turn: int = 70
    test_size: int = 100
    seed: int = 0
    compare_random: bool = False
    serve: bool = False
    minutes: float | None = None  # stop starting new turns once this budget would be passed
    train: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_TRAIN))
    eval_batch_size: int = GENERATE_BATCH
    max_new_tokens: int = 160  # the longest demo answer is ~110 tokens


# Settings that learn the address task fast on 2 CPU cores (see benchmarks/address_quality.py).
# Each turn starts from the adapter in production (a warm start) and trains one epoch on every
# label so far: the labels of earlier turns are not learned again from zero, so by the last
# turn the first labels have been seen three times and a turn's time goes into what is new. Validation every 16 steps (about once per 130 examples) keeps the
# best-checkpoint choice without spending the turn on it.
DEFAULT_TRAIN: dict[str, Any] = {
    "method": "lora",
    "epochs": 1,
    "lr": 2e-3,
    "batch_size": 8,
    "lora_r": 16,
    "lora_alpha": 32,
    "max_length": 256,
    "eval_every": 16,
    "eval_max_records": 16,
    "init_from": "production",
}


@dataclass
class TurnRow:
    arm: str
    turn: int
    labels: int
    exact_match: dict[str, float]
    field_f1: dict[str, float]
    decision: str
    model: str
    train_seconds: float
    turn_seconds: float


@dataclass
class DemoResult:
    folder: str
    baseline: dict[str, dict[str, float]]
    rows: list[TurnRow]
    report: str
    curve_png: str
    seconds: float
    machine: dict[str, Any]

    verdict: dict[str, Any] = field(default_factory=dict)

    def final(self, arm: str = "curate-next") -> TurnRow | None:
        rows = [r for r in self.rows if r.arm == arm]
        return rows[-1] if rows else None

    def outcome(self) -> dict[str, Any]:
        """What the story shows, in the terms the demo is judged by: the final curate-next
        model's gain over the base model (points), and after how many labels the curate-next
        curve first reached the random curve's final field F1 (None: it never did)."""
        out: dict[str, Any] = {}
        final, rnd = self.final("curate-next"), self.final("random")
        if final is None:
            return out
        out["gain_over_base_points"] = {
            key: round(
                (getattr(final, key).get("value", 0.0) - self.baseline[key].get("value", 0.0))
                * 100,
                1,
            )
            for key in ("field_f1", "exact_match")
        }
        if rnd is not None:
            target = rnd.field_f1.get("value", 0.0)
            out["random_final"] = {"field_f1": round(target * 100, 1), "labels": rnd.labels}
            out["curate_next_labels_to_reach_it"] = next(
                (
                    r.labels
                    for r in self.rows
                    if r.arm == "curate-next" and r.field_f1.get("value", 0.0) >= target
                ),
                None,
            )
        return out


def machine_info() -> dict[str, Any]:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------ set-up


def _truth(rows: list[tuple[str, dict[str, str]]]) -> dict[str, str]:
    return {text: canonical_json(ref) for text, ref in rows}


def _new_project(
    folder: Path, plan: DemoPlan, test_rows: list[tuple[str, dict[str, str]]]
) -> Project:
    from whetstone.curate.config import STEPS as CURATE_STEPS
    from whetstone.demo_data import demo_instruction, demo_schema

    p = Project.init(folder, base_model=plan.train.get("base_model"))
    p.create_task(TASK, Kind.extract, instruction=demo_instruction(), schema=demo_schema())
    # The held-out test set: ground truth that no turn ever trains on.
    held = [
        Record(
            task=TASK,
            input=text,
            reference=canonical_json(ref),
            status=Status.accepted,
            source=Source.imported,
            tags=["heldout", "demo"],
            source_key=content_key("demo-heldout", text),
        )
        for text, ref in test_rows
    ]
    p.store.add_records(held)
    # The flywheel's own settings for the demo: every human label goes to train/validation,
    # the test split is the held-out set above. Every curation step runs but label noise:
    # the demo's reviewer is the ground truth, so there is no noise to find, and scoring every
    # record's loss under the production adapter would cost a minute per arm and turn.
    steps = ", ".join(s for s in CURATE_STEPS if s != "noise")
    cfg = p.config_path.read_text() + (
        "flywheel:\n"
        f"  next_n: {plan.labels_per_turn}\n"
        f"  eval_batch_size: {plan.eval_batch_size}\n"
        f"  max_new_tokens: {plan.max_new_tokens}\n"
        f"  curate:\n    steps: [{steps}]\n    test: 0.0\n    validation: 0.1\n    card: true\n"
        "gate:\n  min_delta: 0.0\n"
        "train:\n" + "".join(f"  {k}: {v}\n" for k, v in plan.train.items())
    )
    from whetstone.util import atomic_write_text

    atomic_write_text(p.config_path, cfg)
    return Project(p.root)


def error_category(output: str | None, reference: str) -> str:
    """What kind of mistake the model made, as a reviewer would file it."""
    if output is None or not output.strip():
        return "empty"
    try:
        got = json.loads(output)
    except json.JSONDecodeError:
        return "invalid_json"
    if not isinstance(got, dict):
        return "invalid_json"
    want = json.loads(reference)
    if set(want) - set(got):
        return "missing_field"
    if set(got) - set(want):
        return "extra_field"
    return "wrong_value"


# ------------------------------------------------------------------------ production stream


class Production:
    """Answers the stream with the task's current production model and captures each answer,
    either in-process or through the HTTP server."""

    def __init__(self, project: Project, url: str | None):
        self.project = project
        self.url = url
        self._predictor: Any = None
        self._loaded: str | None = None

    def current(self) -> str:
        from whetstone import registry

        prod = registry.production(self.project, TASK)
        return prod.name if prod else "base"

    def answer(self, texts: list[str], batch_size: int, max_new_tokens: int) -> None:
        if self.url:
            self._answer_http(texts, max_new_tokens)
            return
        from whetstone.predict import load_predictor

        model = self.current()
        if self._loaded != model:
            self._predictor = load_predictor(self.project, TASK, model)
            self._loaded = model
        gens = self._predictor(texts, batch_size=batch_size, max_new_tokens=max_new_tokens)
        for text, g in zip(texts, gens, strict=True):
            self.project.capture(
                TASK,
                text,
                g.text,
                model=self._predictor.name,
                confidence=g.confidence,
                meta={"latency_ms": round(g.latency_ms, 2), "output_tokens": g.output_tokens},
            )

    def _answer_http(self, texts: list[str], max_new_tokens: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from openai import OpenAI

        client = OpenAI(base_url=f"{self.url}/v1", api_key="demo", max_retries=0, timeout=600)

        def one(text: str) -> None:
            client.chat.completions.create(
                model=TASK,
                messages=[{"role": "user", "content": text}],
                max_tokens=max_new_tokens,
                temperature=0,
            )

        # Concurrent clients, so the server batches them as it would real traffic.
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(one, texts))
        self._wait_captured(len(texts))

    def _wait_captured(self, expected_new: int) -> None:
        """Capture is asynchronous by design; the reviewer needs the records in the store."""
        deadline = time.monotonic() + 120
        target = getattr(self, "_seen", 0) + expected_new
        while time.monotonic() < deadline:
            n = self.project.store.count_records(TASK, source="production")
            if n >= target:
                self._seen = n
                return
            time.sleep(0.2)
        raise RuntimeError(f"the server captured fewer answers than it gave ({n} of {target})")


class Reviewer:
    """A simulated human whose answers are the real labels."""

    def __init__(
        self, project: Project, truth: dict[str, str], url: str | None, rng: random.Random
    ):
        self.project = project
        self.truth = truth
        self.url = url
        self.rng = rng

    def choose(self, arm: str, n: int) -> list[Record]:
        if arm == "curate-next":
            from whetstone.curate import next_to_label

            return [r for r, _, _ in next_to_label(self.project, TASK, n)]
        pool = list(self.project.store.iter_records(TASK, source="production", status="unreviewed"))
        return self.rng.sample(pool, min(n, len(pool)))

    def review(self, records: list[Record]) -> int:
        from whetstone.prompts import normalise_answer

        task = self.project.task(TASK)
        for rec in records:
            assert rec.id is not None
            ref = self.truth[rec.input_text]
            right = rec.output is not None and normalise_answer(task, rec.output) == ref
            if self.url:
                self._feedback(rec, ref, right)
            elif right:
                self.project.accept(rec.id, annotator="demo-reviewer")
            else:
                self.project.correct(
                    rec.id,
                    ref,
                    error_category=error_category(rec.output, ref),
                    annotator="demo-reviewer",
                )
        return len(records)

    def _feedback(self, rec: Record, ref: str, right: bool) -> None:
        import httpx

        body: dict[str, Any] = {"record_id": rec.id, "annotator": "demo-reviewer"}
        if right:
            body["rating"] = "up"
        else:
            body.update(reference=ref, error_category=error_category(rec.output, ref))
        r = httpx.post(f"{self.url}/v1/feedback", json=body, timeout=60)
        r.raise_for_status()


# ------------------------------------------------------------------------------ the story


@contextmanager
def _server(project: Project, enabled: bool) -> Iterator[str | None]:
    if not enabled:
        yield None
        return
    from whetstone.serve.app import create_app
    from whetstone.serve.background import running
    from whetstone.serve.settings import Settings

    app = create_app(project, Settings.load(project.section("serve"), max_wait_ms=20.0))
    with running(app) as url:
        yield url


def _metric(ev_metrics: dict[str, dict[str, float]], name: str) -> dict[str, float]:
    m = ev_metrics.get(name) or {}
    return {k: round(float(v), 4) for k, v in m.items() if k in ("value", "low", "high")}


def _production_metrics(summary: Any, turn_steps: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The metrics of whatever is in production after the turn, and its name."""
    evals = turn_steps.get("evaluate", {})
    side = "after" if summary.decision == "promoted" else "before"
    return evals.get(side, {}).get("metrics", {}), evals.get(side, {}).get("model", "base")


def share_evaluation(ev: Any, src: Project, dst: Project) -> None:
    """Store `src`'s evaluation `ev` in `dst` as well, its records matched by source key.
    Greedy decoding of the same model on the same held-out inputs gives the same answers, so
    the other arm's first turn finds the base model's numbers instead of paying for them
    again (about 45 s on 2 CPU cores)."""
    from dataclasses import replace

    from whetstone.evaluate.runner import store_evaluation
    from whetstone.snapshots import snapshot_task

    ids = [p.record_id for p in ev.predictions]
    key_of = {r.id: r.source_key for r in src.store.iter_records(TASK, ids=ids)}
    dst_id = {
        r.source_key: r.id for r in dst.store.iter_records(TASK, tag="heldout") if r.id is not None
    }
    missing = [rid for rid in ids if dst_id.get(key_of.get(rid)) is None]
    if missing:
        raise RuntimeError(f"{len(missing)} evaluated records are not held out in {dst.root}")
    snap = snapshot_task(dst, TASK, validation=0.0, test=0.0, info={"purpose": "demo baseline"})
    preds = [replace(p, record_id=int(dst_id[key_of[p.record_id]])) for p in ev.predictions]
    info = {**ev.info, "shared_from": {"project": str(src.root), "evaluation": ev.id}}
    store_evaluation(dst, replace(ev, snapshot_id=snap.id, predictions=preds, info=info))


def next_turn_estimate(turn_seconds: list[float]) -> float:
    """How long the next turn will take. Every turn trains on all labels so far, so turns grow
    by about the same amount each time: extrapolate the last two (never below the last)."""
    if len(turn_seconds) < 2:
        return turn_seconds[-1]
    return turn_seconds[-1] + max(0.0, turn_seconds[-1] - turn_seconds[-2])


def run_demo(folder: Path, plan: DemoPlan, *, progress: bool = True) -> DemoResult:
    from whetstone.demo_report import write_demo_report
    from whetstone.util import atomic_write_text

    t_start = time.perf_counter()
    folder = folder.resolve()
    rows = _planned_rows(folder, plan)
    test_rows, pool = rows[: plan.test_size], rows[plan.test_size :]
    truth = _truth(rows)
    arms = ARMS if plan.compare_random else ARMS[:1]
    projects = {arm: _new_project(folder / arm, plan, test_rows) for arm in arms}
    baseline = _baseline(projects, arms, plan)
    out_rows = _play_turns(projects, arms, plan, pool, truth, t_start, progress)
    result = DemoResult(
        folder=str(folder),
        baseline=baseline,
        rows=out_rows,
        report="",
        curve_png="",
        seconds=round(time.perf_counter() - t_start, 1),
        machine=machine_info(),
    )
    result.verdict = result.outcome()
    result.report, result.curve_png = write_demo_report(folder, result)
    atomic_write_text(
        folder / "demo-results.json", json.dumps(asdict(result), indent=2, default=str)
    )
    return result


def _planned_rows(folder: Path, plan: DemoPlan) -> list[tuple[str, dict[str, str]]]:
    """The demo's addresses in the plan's order, after checking the plan can run here."""
    from whetstone.demo_data import demo_rows

    if folder.exists() and any(folder.iterdir()):
        raise InvalidInput(
            f"{folder} is not empty: the demo starts from a fresh folder (pick another --dir)"
        )
    rows = demo_rows()
    rng = random.Random(plan.seed)
    rng.shuffle(rows)
    need = plan.test_size + plan.turns * plan.stream_per_turn
    if need > len(rows):
        raise InvalidInput(f"the plan needs {need} addresses but the demo data has {len(rows)}")
    if plan.labels_per_turn > plan.stream_per_turn:
        raise InvalidInput("labels_per_turn cannot exceed stream_per_turn")
    return rows


def _baseline(
    projects: dict[str, Project], arms: tuple[str, ...], plan: DemoPlan
) -> dict[str, dict[str, float]]:
    """The base model on the held-out set (once; every arm shares the evaluation)."""
    from whetstone.evaluate.runner import evaluate
    from whetstone.progress import console
    from whetstone.snapshots import snapshot_task

    console.print("[bold]Baseline[/bold]: the base model on the held-out addresses")
    main = projects[arms[0]]
    base_snap = snapshot_task(
        main, TASK, validation=0.0, test=0.0, info={"purpose": "demo baseline"}
    )
    base_ev = evaluate(
        main,
        TASK,
        "base",
        "test",
        base_snap.id,
        batch_size=plan.eval_batch_size,
        max_new_tokens=plan.max_new_tokens,
    )
    for arm in arms[1:]:
        share_evaluation(base_ev, main, projects[arm])
    return {
        "exact_match": _metric(base_ev.metrics, "object_exact"),
        "field_f1": _metric(base_ev.metrics, "field_f1"),
    }


def _play_turns(
    projects: dict[str, Project],
    arms: tuple[str, ...],
    plan: DemoPlan,
    pool: list[tuple[str, dict[str, str]]],
    truth: dict[str, str],
    t_start: float,
    progress: bool,
) -> list[TurnRow]:
    """The turns, within the plan's time budget: each arm answers the turn's production
    requests, its reviewer labels some, and the flywheel turns."""
    from whetstone.progress import console

    out_rows: list[TurnRow] = []
    labels = dict.fromkeys(arms, 0)
    turn_seconds: list[float] = []
    with _server(projects[arms[0]], plan.serve) as url:
        producers = {
            arm: Production(projects[arm], url if arm == arms[0] else None) for arm in arms
        }
        reviewers = {
            arm: Reviewer(
                projects[arm], truth, url if arm == arms[0] else None, random.Random(plan.seed + 1)
            )
            for arm in arms
        }
        for k in range(1, plan.turns + 1):
            elapsed = time.perf_counter() - t_start
            if (
                plan.minutes
                and turn_seconds
                and elapsed + next_turn_estimate(turn_seconds) > plan.minutes * 60
            ):
                console.print(
                    f"[yellow]Stopping after {k - 1} turn(s): the next would pass the {plan.minutes:g}-minute budget[/yellow]"
                )
                break
            stream = [
                text for text, _ in pool[(k - 1) * plan.stream_per_turn : k * plan.stream_per_turn]
            ]
            t_turn = time.perf_counter()
            for arm in arms:
                console.print(f"[bold]Turn {k} · {arm}[/bold]: {len(stream)} production requests")
                _produce(arm, stream, plan, producers[arm], reviewers[arm])
                labels[arm] += reviewers[arm].review(
                    reviewers[arm].choose(arm, plan.labels_per_turn)
                )
                out_rows.append(_turn(projects[arm], arm, k, labels[arm], progress))
            turn_seconds.append(time.perf_counter() - t_turn)
    return out_rows


def _produce(
    arm: str, stream: list[str], plan: DemoPlan, producer: Production, reviewer: Reviewer
) -> None:
    if arm == "curate-next":
        producer.answer(stream, plan.eval_batch_size, plan.max_new_tokens)
        return
    # The random reviewer's picks do not depend on the answers, so only the picked requests
    # are answered (and captured): their records are what they would be had all been
    # answered, with the model's output and confidence, so curation treats both arms'
    # corrections alike (a corrected model error is up-weighted in either arm).
    picked = reviewer.rng.sample(stream, min(plan.labels_per_turn, len(stream)))
    producer.answer(picked, plan.eval_batch_size, plan.max_new_tokens)


def _turn(p: Project, arm: str, k: int, labels: int, progress: bool) -> TurnRow:
    """One flywheel turn of an arm's project, as a row of the demo's table."""
    from whetstone.flywheel import load_config, run_turn

    summary = run_turn(p, TASK, load_config(p), progress=progress)
    metrics, model = _production_metrics(summary, summary.steps)
    return TurnRow(
        arm=arm,
        turn=k,
        labels=labels,
        exact_match=_metric(metrics, "object_exact"),
        field_f1=_metric(metrics, "field_f1"),
        decision=summary.decision,
        model=model,
        train_seconds=float(summary.steps.get("train", {}).get("seconds", 0.0)),
        turn_seconds=round(summary.seconds, 1),
    )
