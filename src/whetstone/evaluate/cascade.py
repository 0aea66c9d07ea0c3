"""Calibrating a task's cascade: where the workhorse should hand a request to the hero.

The workhorse (an adapter version) and the hero answer the same held-out records; both are
scored per record with the task's own metric (`runner.score`, the evaluation's scoring).
The cascade escalates a record when the workhorse's answer fails the task's checks
(`prompts.answer_fails_checks`), when it has no confidence, or when its confidence is below
the threshold; every other record keeps the workhorse's answer. For each candidate threshold
(the distinct confidences, and one above them all) the curve holds the share escalated, the
cascade's task metric (aggregated exactly as the metric is: the per-record columns of the
two models are mixed and the metric's formula applied to their sums, so field F1 stays
micro-averaged) and the hero's cost of the escalated records relative to hero-only. The
chosen threshold is stored on the adapter version (`info["cascade"]`), where the server
reads it, and the curve is drawn beside the adapter's report.

Hero answers are cached under `.whetstone/hero-cache/`, one file per (hero model, prompt),
so calibrating again (another target, a new adapter on the same records) pays nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from whetstone.errors import InvalidInput
from whetstone.evaluate import metrics as m
from whetstone.evaluate.stats import intervals, paired_bootstrap
from whetstone.models.hero import Hero, HeroError, project_hero, project_hero_config
from whetstone.plots import figure_png
from whetstone.project import Project
from whetstone.prompts import answer_fails_checks, chat, normalise_answer
from whetstone.records import Kind, Task, canonical_json, utcnow
from whetstone.util import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from whetstone.evaluate.runner import Prediction
    from whetstone.registry import AdapterVersion

DEFAULT_TARGET = 0.95
_EPS = 1e-12  # float slack when comparing a score with a target computed from another


# ---------------------------------------------------------------- the hero, cached


@dataclass(frozen=True)
class HeroAnswer:
    """One cached hero answer (greedy, one sample) and what it cost when it was asked."""

    text: str
    model: str
    cost: float
    prompt_tokens: int
    completion_tokens: int


def hero_cache_path(project: Project, model: str, messages: Sequence[Mapping[str, str]]) -> Path:
    key = hashlib.sha256(canonical_json([model, [dict(x) for x in messages]]).encode())
    return project.home / "hero-cache" / f"{key.hexdigest()[:32]}.json"


def _read_cached(path: Path) -> HeroAnswer | None:
    try:
        return HeroAnswer(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # absent, or unreadable: ask again (the write is atomic, so rarely)


def hero_answers(
    project: Project, hero: Hero, prompts: Sequence[Sequence[Mapping[str, str]]]
) -> tuple[list[HeroAnswer | HeroError], int]:
    """The hero's greedy answer to each prompt, from the cache where it has one, else asked
    (`max_concurrency` at a time, with a progress line) and cached; a failure is returned in
    place (and not cached, so the next run asks again). Also: how many were asked now."""
    from whetstone.progress import progress

    model = hero.config.model
    paths = [hero_cache_path(project, model, p) for p in prompts]
    answers: list[HeroAnswer | HeroError | None] = [_read_cached(p) for p in paths]
    todo = [i for i, a in enumerate(answers) if a is None]
    if todo:
        with progress() as bar:
            tid = bar.add_task(f"hero {model}", total=len(todo), info="")
            replies = hero.answer_many(
                [prompts[i] for i in todo], on_done=lambda _: bar.advance(tid)
            )
        for i, reply in zip(todo, replies, strict=True):
            if isinstance(reply, HeroError):
                answers[i] = reply
                continue
            got = HeroAnswer(
                text=reply.text,
                model=reply.model,
                cost=reply.cost,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
            )
            atomic_write_text(paths[i], json.dumps(asdict(got)))
            answers[i] = got
    return [a for a in answers if a is not None], len(todo)


# ---------------------------------------------------------------- the curve (pure arithmetic)


@dataclass(frozen=True)
class Point:
    """The cascade at one threshold: escalate when confidence < threshold."""

    threshold: float
    escalated: int
    escalation: float  # share of records sent to the hero
    score: float  # the task's main metric of the cascade's answers
    cost: float  # hero cost of the escalated records / hero cost of all (hero-only = 1)


@dataclass
class Curve:
    metric: str
    n: int
    points: list[Point]  # escalation ascending
    hero_score: float
    workhorse_score: float
    forced: int  # escalated at every threshold: failed the checks or had no confidence
    cost_basis: str  # money | tokens | requests: what `Point.cost` is a share of


def mix(workhorse: m.Columns, hero: m.Columns, escalate: np.ndarray) -> m.Columns:
    """The cascade's per-record columns: the hero's rows where escalated, the workhorse's
    elsewhere, with the metric's own formulas (so any aggregate, micro or macro, is right)."""
    if set(workhorse.data) != set(hero.data) or workhorse.n != hero.n:
        raise ValueError("workhorse and hero were scored on different columns or records")
    data = {k: np.where(escalate, hero.data[k], v) for k, v in workhorse.data.items()}
    return m.Columns(
        n=workhorse.n,
        data=data,
        formulas=workhorse.formulas,
        main=workhorse.main,
        binary=workhorse.binary,
    )


def escalation_keys(confidences: Sequence[float | None], forced: Sequence[bool]) -> np.ndarray:
    """Each record's confidence as the cascade compares it: -inf where it always escalates."""
    return np.array(
        [
            -math.inf if f or c is None else float(c)
            for c, f in zip(confidences, forced, strict=True)
        ]
    )


def candidate_thresholds(keys: np.ndarray) -> list[float]:
    """Each distinct confidence (escalating everything below it) and one just above the
    highest (escalating everything); with no confidences at all, one threshold."""
    finite = sorted({float(k) for k in keys if math.isfinite(k)})
    if not finite:
        return [0.0]
    return [*finite, float(np.nextafter(finite[-1], math.inf))]


def cost_weights(costs: Sequence[float], tokens: Sequence[int]) -> tuple[np.ndarray, str]:
    """What a hero answer costs per record: money when the hero has prices, else tokens,
    else one request each."""
    money = np.asarray(costs, dtype=float)
    if money.sum() > 0:
        return money, "money"
    toks = np.asarray(tokens, dtype=float)
    if toks.sum() > 0:
        return toks, "tokens"
    return np.ones(len(money)), "requests"


def curve(
    workhorse: m.Columns,
    hero: m.Columns,
    confidences: Sequence[float | None],
    forced: Sequence[bool],
    weights: np.ndarray,
    cost_basis: str = "money",
) -> Curve:
    """The cascade at every candidate threshold (see the module's docstring)."""
    n = workhorse.n
    if n == 0:
        raise InvalidInput("no records to calibrate on")
    keys = escalation_keys(confidences, forced)
    points = [point_at(workhorse, hero, keys, weights, t) for t in candidate_thresholds(keys)]
    return Curve(
        metric=workhorse.main,
        n=n,
        points=points,
        hero_score=float(hero.point()[hero.main]),
        workhorse_score=float(workhorse.point()[workhorse.main]),
        forced=int(np.isinf(keys).sum()),
        cost_basis=cost_basis,
    )


def point_at(
    workhorse: m.Columns, hero: m.Columns, keys: np.ndarray, weights: np.ndarray, threshold: float
) -> Point:
    """The cascade escalating the records whose key (`escalation_keys`) is below `threshold`:
    a threshold chosen on one split is measured on another with this."""
    escalate = keys < threshold
    k = int(escalate.sum())
    return Point(
        threshold=threshold,
        escalated=k,
        escalation=k / max(workhorse.n, 1),
        score=float(mix(workhorse, hero, escalate).point()[workhorse.main]),
        cost=float(weights[escalate].sum()) / (float(weights.sum()) or 1.0),
    )


@dataclass(frozen=True)
class Choice:
    point: Point
    feasible: bool
    note: str  # why this point, in a sentence


def choose(c: Curve, *, target: float | None = None, max_escalation: float | None = None) -> Choice:
    """`target`: the lowest escalation whose score is at least target x the hero's score
    (default 0.95). `max_escalation`: the best score escalating at most that share. When no
    point meets it, the closest: the best score (target), the least escalation (max)."""
    if target is not None and max_escalation is not None:
        raise InvalidInput("give --target or --max-escalation, not both")
    if max_escalation is not None:
        if not 0 <= max_escalation <= 1:
            raise InvalidInput(f"--max-escalation must be in [0, 1], not {max_escalation}")
        within = [p for p in c.points if p.escalation <= max_escalation + _EPS]
        if within:
            best = max(within, key=lambda p: (p.score, -p.escalation))
            return Choice(best, True, f"best {c.metric} escalating at most {max_escalation:.1%}")
        least = min(c.points, key=lambda p: (p.escalation, -p.score))
        return Choice(
            least,
            False,
            f"--max-escalation {max_escalation:.1%} is out of reach: {c.forced} of {c.n} "
            f"answers fail the task's checks or have no confidence and always escalate "
            f"({least.escalation:.1%}); chose the least escalation",
        )
    target = DEFAULT_TARGET if target is None else target
    if not 0 < target <= 1.5:
        raise InvalidInput(f"--target is a share of the hero's score, e.g. 0.95, not {target}")
    goal = target * c.hero_score
    good = [p for p in c.points if p.score >= goal - _EPS]
    if good:
        cheapest = min(good, key=lambda p: (p.escalation, -p.score))
        return Choice(
            cheapest, True, f"least escalation keeping {target:.0%} of the hero's {c.metric}"
        )
    best = max(c.points, key=lambda p: (p.score, -p.escalation))
    return Choice(
        best,
        False,
        f"target {target:.0%} of the hero's {c.metric} ({goal:.3f}) is out of reach: the best "
        f"cascade scores {best.score:.3f}; chose it",
    )


def shown_points(c: Curve, chosen: Point, k: int = 6) -> list[Point]:
    """A few points spread along the curve (by escalation), the chosen one among them."""
    if len(c.points) <= k:
        return list(c.points)
    picks = {c.points[round(i * (len(c.points) - 1) / (k - 1))] for i in range(k)} | {chosen}
    return sorted(picks, key=lambda p: (p.escalation, p.threshold))


# ---------------------------------------------------------------- calibrating an adapter


@dataclass
class Calibration:
    adapter: str
    snapshot_id: str
    split: str
    hero_model: str
    curve: Curve
    choice: Choice
    target: float | None
    max_escalation: float | None
    score_interval: dict[str, float]  # the cascade's main metric at the chosen point, 95%
    versus_hero: dict[str, float]  # paired bootstrap of cascade - hero at the chosen point
    hero_asked: int  # hero calls made now (the rest came from the cache)
    hero_failed: int  # records the hero failed on (the workhorse's answer stands in)
    evaluation_id: str
    plot: Path
    constrained: bool = False  # the workhorse's answers were schema-constrained
    info: dict[str, Any] = field(default_factory=dict)  # what was stored as info["cascade"]
    # The per-record columns the curve came from, to measure any threshold (`at`).
    workhorse_columns: m.Columns | None = None
    hero_columns: m.Columns | None = None
    keys: np.ndarray | None = None
    weights: np.ndarray | None = None

    def at(self, threshold: float) -> Point:
        """The cascade on these records at `threshold` (e.g. one calibrated on another split)."""
        assert self.workhorse_columns is not None and self.hero_columns is not None
        assert self.keys is not None and self.weights is not None
        return point_at(
            self.workhorse_columns, self.hero_columns, self.keys, self.weights, threshold
        )


def workhorse(project: Project, task: str, model: str | None) -> AdapterVersion:
    """The adapter to calibrate: `model` (T@N), else the task's production adapter."""
    from whetstone import registry

    av = registry.get(project, model or task)
    if av.task != task:
        raise InvalidInput(f"{av.name} is an adapter of task {av.task!r}, not {task!r}")
    return av


def cascade_plot_path(project: Project, av: AdapterVersion) -> Path:
    """The curve's PNG, in the adapter version's report folder (the report shows it)."""
    from whetstone.evaluate.report import default_path

    return default_path(project, av).parent / f"{av.task}-{av.version}-cascade.png"


def calibrate(
    project: Project,
    task: str,
    model: str | None = None,
    *,
    target: float | None = None,
    max_escalation: float | None = None,
    limit: int | None = None,
    snapshot_id: str | None = None,
    hero: Hero | None = None,
    split: str = "test",
    constrained: bool = False,
) -> Calibration:
    """Calibrate the cascade of `model` (default: the task's production adapter) on `split`
    of the task's latest snapshot (or `snapshot_id`), store the chosen threshold on the
    adapter version (`info["cascade"]`) and draw the curve (see the module's docstring).
    `constrained`: the workhorse's answers schema-constrained, as the server gives them
    (`constrain_extract`), so the threshold is measured on the answers it will judge."""
    from whetstone import registry, snapshots
    from whetstone.evaluate.runner import evaluate, records_to_score, score

    hero = hero or project_hero(project)
    if target is None and max_escalation is None:
        target = DEFAULT_TARGET
    t = project.task(task)
    av = workhorse(project, task, model)
    snap = snapshots.load(project, snapshot_id) if snapshot_id else snapshots.latest(project, task)
    snap_id = snap.id if snap else None
    ev = evaluate(project, task, av.name, split, snap_id, limit=limit, constrained=constrained)
    recs = records_to_score(project, snapshots.load(project, str(ev.snapshot_id)), split, limit)
    by_id = {p.record_id: p for p in ev.predictions}
    recs = [r for r in recs if r.id in by_id]
    wh = [by_id[int(r.id or 0)] for r in recs]
    asked, hero_asked = hero_answers(project, hero, [chat(t, r.input) for r in recs])
    hero_texts, weights, basis, failed = _hero_side(t, asked, wh)
    refs = [p.reference for p in wh]
    wh_cols = m.columns(t, [p.prediction for p in wh], refs, [p.scores for p in wh])
    hero_cols = m.columns(t, hero_texts, refs, score(t, recs, hero_texts))
    forced = [answer_fails_checks(t, p.prediction) is not None for p in wh]
    c = curve(wh_cols, hero_cols, [p.confidence for p in wh], forced, weights, basis)
    choice = choose(c, target=target, max_escalation=max_escalation)
    keys = escalation_keys([p.confidence for p in wh], forced)
    chosen = mix(wh_cols, hero_cols, keys < choice.point.threshold)
    cal = Calibration(
        adapter=av.name,
        snapshot_id=str(ev.snapshot_id),
        split=split,
        hero_model=hero.config.model,
        curve=c,
        choice=choice,
        target=target if max_escalation is None else None,
        max_escalation=max_escalation,
        score_interval=intervals(chosen)[c.metric],
        versus_hero=paired_bootstrap(chosen, hero_cols, c.metric),
        hero_asked=hero_asked,
        hero_failed=failed,
        constrained=constrained,
        evaluation_id=ev.id,
        plot=cascade_plot_path(project, av),
        workhorse_columns=wh_cols,
        hero_columns=hero_cols,
        keys=keys,
        weights=weights,
    )
    atomic_write_bytes(cal.plot, plot_curve(cal))
    cal.info = cascade_info(cal, limit)
    registry.update_info(project, av.name, cascade=cal.info)
    # An event moves the registry's generation, which a running server polls: it serves the
    # new threshold within a second, as it does a promotion.
    registry.record_event(
        project,
        av.name,
        "calibrate",
        reason=f"cascade threshold {choice.point.threshold:.4g} on {split} "
        f"({choice.point.escalation:.0%} escalated)",
    )
    return cal


def _hero_side(
    task: Task, asked: list[HeroAnswer | HeroError], wh: list[Prediction]
) -> tuple[list[str], np.ndarray, str, int]:
    """The hero's answers as scored, what each cost, in what, and how many failed. Where the
    hero failed the server answers with the workhorse's answer, and so does the curve."""
    failed = sum(1 for a in asked if isinstance(a, HeroError))
    if failed == len(asked):
        raise HeroError(f"the hero failed on all {failed} records: {asked[0]}")
    refs = [p.reference for p in wh]
    texts = [
        hero_text(task, a.text, refs) if isinstance(a, HeroAnswer) else p.prediction
        for a, p in zip(asked, wh, strict=True)
    ]
    ok = [a if isinstance(a, HeroAnswer) else None for a in asked]
    weights, basis = cost_weights(
        [a.cost if a else 0.0 for a in ok],
        [a.prompt_tokens + a.completion_tokens if a else 0 for a in ok],
    )
    return texts, weights, basis, failed


def hero_text(task: Task, text: str, references: list[str]) -> str:
    """The hero's answer as the workhorse's is read: normalised, a classify answer mapped to
    the label it names (kept as it is when it names none)."""
    text = normalise_answer(task, text)
    if task.kind == Kind.classify:
        return m.map_label(text, m.labels_of(task, references)) or text
    return text


def cascade_info(cal: Calibration, limit: int | None) -> dict[str, Any]:
    """What the adapter version keeps as `info["cascade"]` (the server reads `threshold`)."""
    p, c = cal.choice.point, cal.curve
    return {
        "threshold": p.threshold,
        "target": cal.target,
        "max_escalation": cal.max_escalation,
        "feasible": cal.choice.feasible,
        "hero_model": cal.hero_model,
        "calibrated_at": utcnow().isoformat(),
        "escalation": p.escalation,
        "score": p.score,
        "score_low": cal.score_interval["low"],
        "score_high": cal.score_interval["high"],
        "hero_score": c.hero_score,
        "workhorse_score": c.workhorse_score,
        "cost": p.cost,
        "cost_basis": c.cost_basis,
        "metric": c.metric,
        "n": c.n,
        "limit": limit,
        "checks_failed_or_unsure": c.forced,
        "hero_failed": cal.hero_failed,
        "snapshot_id": cal.snapshot_id,
        "split": cal.split,
        "constrained": cal.constrained,
        "evaluation": cal.evaluation_id,
        "plot": str(cal.plot),
    }


# ---------------------------------------------------------------- the picture


def plot_curve(cal: Calibration) -> bytes:
    """Escalation (x) against the task metric (y), hero-only and workhorse-only as reference
    lines, the chosen point marked; the relative cost on the right-hand axis."""
    c, chosen = cal.curve, cal.choice.point
    xs = [p.escalation for p in c.points]

    def draw(fig: Any) -> None:
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(xs, [p.score for p in c.points], marker=".", color="C0", label="cascade")
        ax.axhline(c.hero_score, color="C3", linestyle="--", label=f"hero only ({cal.hero_model})")
        ax.axhline(
            c.workhorse_score, color="C2", linestyle=":", label=f"workhorse only ({cal.adapter})"
        )
        if cal.target is not None:
            ax.axhline(
                cal.target * c.hero_score,
                color="grey",
                linewidth=0.8,
                label=f"target {cal.target:.0%} of hero",
            )
        ax.plot(
            [chosen.escalation],
            [chosen.score],
            marker="*",
            markersize=14,
            color="C1",
            linestyle="none",
            label=f"chosen: threshold {chosen.threshold:.3g}",
        )
        ax.annotate(
            f"{chosen.escalation:.0%} escalated, cost {chosen.cost:.0%} of hero",
            (chosen.escalation, chosen.score),
            textcoords="offset points",
            xytext=(8, -14),
            fontsize=8,
        )
        ax.set_xlabel("share of requests escalated to the hero")
        ax.set_ylabel(c.metric)
        ax.set_xlim(-0.02, 1.02)
        right = ax.twinx()
        right.plot(xs, [p.cost for p in c.points], color="C7", alpha=0.5, linewidth=1)
        right.set_ylabel(f"hero cost relative to hero-only ({c.cost_basis})", color="C7")
        right.set_ylim(-0.02, 1.02)
        ax.legend(loc="lower right", fontsize=7)
        ax.set_title(f"cascade {cal.adapter} → hero, {c.n} records")

    return figure_png(draw, (7.0, 4.5))


# ---------------------------------------------------------------- promotion


def promotion_note(project: Project, av: AdapterVersion) -> str | None:
    """A warning for promoting `av` when its task routes through the cascade and `av` has no
    calibrated threshold of its own (thresholds belong to the version they were set for)."""
    cfg = project_hero_config(project)
    if cfg is None or cfg.route(av.task) != "cascade" or av.info.get("cascade"):
        return None
    return (
        f"{av.name} has no calibrated cascade threshold, and task {av.task!r} routes through "
        f"the cascade: run `whetstone route calibrate --task {av.task} --model {av.name}`"
    )
