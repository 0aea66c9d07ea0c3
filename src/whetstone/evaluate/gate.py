"""The promotion gate, and `promote`: gate a candidate, then ask the registry to move it.

The gate lets a candidate adapter reach production only when it is shown to be better than
what is served now (the production adapter, or the base model when there is none) on the
same held-out records, with every rule's numbers kept so a refusal can be explained:

- `beats-baseline`: the lower 95% bound of the paired difference of the main metric is
  above `min_delta`, so a lucky draw on a small test set does not pass;
- `slices`: no slice (tag, label, field) with at least `min_slice_size` records drops by
  more than `slice_tolerance`, so an average gain cannot hide a broken sub-population;
- `latency`: the candidate's p95 latency is within `latency_budget_ms`, when one is set;
- `leakage`: no evaluation record is an exact or near duplicate of a training record of
  the candidate's snapshot, since such a test measures memory rather than skill;
- `beats-embedding-baseline` (classify tasks): the candidate's lower 95% bound of the main
  metric is above the point estimate of a logistic regression on sentence embeddings
  (`evaluate.baseline`); with `embedding_baseline: warn` (the default) a miss is only
  reported, with `require` it refuses, with `off` the baseline is not fitted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from whetstone import neardup, registry
from whetstone.errors import InvalidInput, WhetstoneError, from_validation
from whetstone.evaluate.stats import DEFAULT_RESAMPLES, DEFAULT_SEED
from whetstone.models.generate import GENERATE_BATCH
from whetstone.project import Project
from whetstone.records import utcnow

if TYPE_CHECKING:
    from whetstone.evaluate.compare import Comparison
    from whetstone.evaluate.runner import Evaluation
    from whetstone.registry import AdapterVersion


class GateRefused(WhetstoneError):
    """The gate refused a promotion; the CLI has printed the rules that failed."""

    exit_code = 3


class GateConfig(BaseModel):
    """Gate settings: the `gate:` section of whetstone.yaml, then command-line options."""

    model_config = ConfigDict(extra="forbid")

    min_delta: float = 0.0
    slice_tolerance: float = Field(0.05, ge=0)
    min_slice_size: int = Field(20, ge=1)
    latency_budget_ms: float | None = Field(None, gt=0)
    near_duplicate: float = Field(neardup.THRESHOLD, gt=0, le=1)
    split: str = "test"
    snapshot: str | None = None
    batch_size: int = Field(GENERATE_BATCH, ge=1)
    max_new_tokens: int | None = Field(None, ge=1)  # default: the task's decode budget
    resamples: int = Field(DEFAULT_RESAMPLES, ge=100)
    seed: int = DEFAULT_SEED
    # A classify specialist that does not beat an embedding + logistic regression baseline:
    # off (not checked), warn (reported, passes) or require (refused).
    embedding_baseline: Literal["off", "warn", "require"] = "warn"


def gate_config(project: Project, **overrides: Any) -> GateConfig:
    """The project's `gate:` settings with the given overrides (None means "not given")."""
    values = {**project.section("gate"), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return GateConfig(**values)
    except ValidationError as e:
        raise from_validation(e, str(project.config_path), "gate") from None


@dataclass
class RuleResult:
    name: str
    passed: bool
    message: str
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class GateDecision:
    task: str
    candidate: str  # "T@N"
    baseline: str  # "T@M" or "base:<name>"
    snapshot_id: str
    split: str
    main_metric: str
    rules: list[RuleResult]
    evaluations: dict[str, str]  # "candidate"/"baseline" -> evaluation id
    config: dict[str, Any]
    decided_at: datetime = field(default_factory=utcnow)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    @property
    def failed(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]

    def summary(self) -> str:
        """The failed rules in one line (or "all rules passed")."""
        if self.passed:
            return "all rules passed"
        return "; ".join(f"{r.name}: {r.message}" for r in self.failed)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decided_at"] = self.decided_at.isoformat()
        d["passed"] = self.passed
        return d


# ---------------------------------------------------------------- evaluations to compare


def baseline_for(project: Project, av: AdapterVersion) -> str:
    """What `av` must beat: the task's production adapter, or the base model."""
    prod = registry.production(project, av.task)
    return prod.name if prod is not None and prod.version != av.version else "base"


def stored_or_run(
    project: Project,
    av: AdapterVersion,
    model: str,
    snapshot_id: str,
    cfg: GateConfig,
    *,
    run: bool = True,
) -> Evaluation:
    """A stored evaluation of `model` on this snapshot split with the gate's settings, else a
    new one (`run`; else `NoStoredEvaluation`). The base model is the one `av` was trained on,
    not whatever the project names now."""
    from whetstone.evaluate.runner import evaluate

    base_model = av.base_model if model == "base" else None
    return evaluate(
        project,
        av.task,
        model,
        cfg.split,
        snapshot_id,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        base_model=base_model,
        resamples=cfg.resamples,
        seed=cfg.seed,
        stored_only=not run,
    )


def paired_comparison(
    project: Project, av: AdapterVersion, baseline: str, cfg: GateConfig, *, run: bool = True
) -> Comparison:
    """Candidate (a) against baseline (b) on the same records of one snapshot split; without
    `run`, only from stored evaluations (else `NoStoredEvaluation`)."""
    from whetstone.evaluate.compare import compare_evaluations
    from whetstone.evaluate.runner import choose_snapshot

    snap = choose_snapshot(project, av.task, av.name, cfg.snapshot)
    ev_a = stored_or_run(project, av, av.name, snap.id, cfg, run=run)
    ev_b = stored_or_run(project, av, baseline, snap.id, cfg, run=run)
    return compare_evaluations(
        project, project.task(av.task), ev_a, ev_b, resamples=cfg.resamples, seed=cfg.seed
    )


# ---------------------------------------------------------------- the rules


def rule_beats_baseline(c: Comparison, cfg: GateConfig) -> RuleResult:
    m = c.main
    passed = m["low"] > cfg.min_delta
    numbers = {
        "metric": c.main_metric,
        "candidate": m["a"],
        "baseline": m["b"],
        "diff": m["diff"],
        "low": m["low"],
        "high": m["high"],
        "p_value": m["p_value"],
        "min_delta": cfg.min_delta,
        "n": len(c.record_ids),
    }
    verdict = ">" if passed else "is not above"
    msg = (
        f"{c.main_metric} {m['a']:.3f} vs {m['b']:.3f} ({c.b.model}), difference {m['diff']:+.3f} "
        f"with 95% CI [{m['low']:+.3f}, {m['high']:+.3f}] on {len(c.record_ids)} records; "
        f"lower bound {m['low']:+.3f} {verdict} min-delta {cfg.min_delta:+.3f}"
    )
    if not passed:
        msg += (
            f"; train longer or on more labelled records (`whetstone train --task {c.a.task} "
            f"--epochs 3`), or label the records it fails on (`whetstone curate next --task "
            f"{c.a.task}`)"
        )
    return RuleResult("beats-baseline", passed, msg, numbers)


def rule_slices(c: Comparison, cfg: GateConfig) -> RuleResult:
    checked = [s for s in c.slices if s.n >= cfg.min_slice_size]
    bad = sorted((s for s in checked if s.diff < -cfg.slice_tolerance), key=lambda s: s.diff)
    worst = min(checked, key=lambda s: s.diff, default=None)
    numbers = {
        "min_slice_size": cfg.min_slice_size,
        "tolerance": cfg.slice_tolerance,
        "checked": len(checked),
        "skipped_small": len(c.slices) - len(checked),
        "regressions": [
            {"slice": s.name, "n": s.n, "candidate": s.a, "baseline": s.b, "diff": s.diff}
            for s in bad
        ],
        "worst": None if worst is None else {"slice": worst.name, "n": worst.n, "diff": worst.diff},
    }
    if bad:
        listed = ", ".join(
            f"{s.name} (n={s.n}) {s.a:.3f} vs {s.b:.3f} = {s.diff:+.3f}" for s in bad[:5]
        )
        msg = f"{len(bad)} slice(s) regress by more than {cfg.slice_tolerance:.3f}: {listed}"
    elif worst is not None:
        msg = (
            f"{len(checked)} slice(s) with >= {cfg.min_slice_size} records, worst "
            f"{worst.name} {worst.diff:+.3f} (tolerance {cfg.slice_tolerance:.3f})"
        )
    elif c.slices:
        msg = f"no slice has >= {cfg.min_slice_size} records ({len(c.slices)} smaller ones skipped)"
    else:
        msg = "no slices to check (the records have no tags, and the task no labels or fields)"
    return RuleResult("slices", not bad, msg, numbers)


def rule_latency(c: Comparison, cfg: GateConfig) -> RuleResult:
    p95 = c.cost["a"]["latency_p95_ms"]
    numbers = {
        "candidate_p95_ms": p95,
        "baseline_p95_ms": c.cost["b"]["latency_p95_ms"],
        "budget_ms": cfg.latency_budget_ms,
    }
    if cfg.latency_budget_ms is None:
        shown = "unknown" if p95 is None else f"{p95:.1f} ms"
        return RuleResult("latency", True, f"p95 {shown}; no budget set", numbers)
    if p95 is None:
        return RuleResult("latency", False, "no latency was measured for the candidate", numbers)
    passed = p95 <= cfg.latency_budget_ms
    op = "<=" if passed else ">"
    return RuleResult(
        "latency", passed, f"p95 {p95:.1f} ms {op} budget {cfg.latency_budget_ms:.1f} ms", numbers
    )


def rule_leakage(
    project: Project, av: AdapterVersion, record_ids: list[int], snapshot_id: str, cfg: GateConfig
) -> RuleResult:
    """`record_ids` (evaluated) against the training records of `av`'s snapshot (else of
    `snapshot_id`, the evaluated one)."""
    from whetstone import snapshots
    from whetstone.evaluate.leakage import find_leaks

    eval_recs = list(project.store.iter_records(av.task, ids=record_ids))
    train_snap = snapshots.load(project, av.snapshot_id or snapshot_id)
    train_recs = snapshots.records(project, train_snap, "train")
    rep = find_leaks(eval_recs, train_recs, threshold=cfg.near_duplicate)
    numbers = {**rep.to_dict(), "train_snapshot": train_snap.id}
    if rep.pairs:
        ex = ", ".join(
            f"record {p.eval_id}~{p.train_id} ({p.kind}, J={p.jaccard:.2f})" for p in rep.pairs[:3]
        )
        msg = (
            f"{len(rep.leaked_eval_ids)} of {rep.eval_records} evaluation record(s) duplicate "
            f"a training record ({rep.exact} exact, {rep.near} near at Jaccard >= "
            f"{cfg.near_duplicate:.2f}), e.g. {ex}; run `whetstone curate --task {av.task}` "
            "and train again (curation's split keeps near-duplicates on one side and no "
            "training record near a test record)"
        )
        return RuleResult("leakage", False, msg, numbers)
    msg = (
        f"no evaluation record duplicates any of {rep.train_records} training record(s) "
        f"(exact or Jaccard >= {cfg.near_duplicate:.2f})"
    )
    return RuleResult("leakage", True, msg, numbers)


def rule_embedding_baseline(
    project: Project, c: Comparison, cfg: GateConfig, *, run: bool = True
) -> RuleResult:
    """The candidate against the embedding baseline on the compared snapshot split (stored,
    else fitted now when `run`). Only `require` lets a miss (or no baseline) fail the rule."""
    from whetstone.evaluate.baseline import BASELINE_MODEL, beats, embedding_baseline
    from whetstone.evaluate.runner import NoStoredEvaluation
    from whetstone.records import Kind

    name, mode = "beats-embedding-baseline", cfg.embedding_baseline
    if mode == "off":
        return RuleResult(name, True, "not checked (gate setting embedding_baseline: off)")
    if project.task(c.task).kind != Kind.classify:
        return RuleResult(name, True, "not a classify task")
    try:
        ev = embedding_baseline(
            project,
            c.task,
            str(c.a.snapshot_id),
            c.a.split,
            resamples=cfg.resamples,
            seed=cfg.seed,
            stored_only=not run,
        )
        numbers = beats(c.a, ev)
    except (InvalidInput, NoStoredEvaluation) as e:
        return RuleResult(name, mode != "require", f"no {BASELINE_MODEL} to compare with: {e}")
    numbers["mode"] = mode
    shown = (
        f"{numbers['metric']} {numbers['candidate']:.3f} (95% CI [{numbers['candidate_low']:.3f}, "
        f"{numbers['candidate_high']:.3f}]) vs {BASELINE_MODEL} {numbers['baseline']:.3f}"
    )
    if numbers["beats"]:
        return RuleResult(name, True, f"{shown}: lower bound above the baseline", numbers)
    msg = (
        f"{shown}: does not beat the embedding baseline (lower bound not above its value); a "
        "logistic regression on sentence embeddings does as well, so label more records or "
        "serve the cheaper model"
    )
    if mode == "warn":
        msg += " (warning only: gate setting embedding_baseline: warn)"
    return RuleResult(name, mode != "require", msg, numbers)


# ---------------------------------------------------------------- gate, promote


def candidate(project: Project, ref: str) -> AdapterVersion:
    _, version = registry.parse_ref(ref)
    if version is None:
        raise InvalidInput(f"name the version to promote, e.g. {ref}@1 (see whetstone adapters)")
    return registry.get(project, ref)


def gate(
    project: Project, ref: str, config: GateConfig | None = None, *, run: bool = True
) -> GateDecision:
    """Run every rule for adapter `T@N` against the production model (or the base model).
    Without `run` (a forced promotion) no model runs: the rules are judged on stored
    evaluations when there are some, else only the leakage rule is, for the record."""
    from whetstone.evaluate.runner import NoStoredEvaluation, choose_snapshot

    cfg = config or gate_config(project)
    av = candidate(project, ref)
    baseline = baseline_for(project, av)
    try:
        c = paired_comparison(project, av, baseline, cfg, run=run)
    except NoStoredEvaluation as e:
        snap = choose_snapshot(project, av.task, av.name, cfg.snapshot)
        return GateDecision(
            task=av.task,
            candidate=av.name,
            baseline=baseline,
            snapshot_id=snap.id,
            split=cfg.split,
            main_metric=project.task(av.task).main_metric,
            rules=[
                RuleResult("beats-baseline", False, f"not evaluated: {e}"),
                rule_leakage(project, av, snap.ids(cfg.split), snap.id, cfg),
            ],
            evaluations={},
            config=cfg.model_dump(),
        )
    rules = [
        rule_beats_baseline(c, cfg),
        rule_slices(c, cfg),
        rule_latency(c, cfg),
        rule_leakage(project, av, c.record_ids, str(c.a.snapshot_id), cfg),
        rule_embedding_baseline(project, c, cfg, run=run),
    ]
    return GateDecision(
        task=av.task,
        candidate=av.name,
        baseline=c.b.model,
        snapshot_id=str(c.a.snapshot_id),
        split=cfg.split,
        main_metric=c.main_metric,
        rules=rules,
        evaluations={"candidate": c.a.id, "baseline": c.b.id},
        config=cfg.model_dump(),
    )


@dataclass
class Promotion:
    decision: GateDecision
    promoted: bool
    forced: bool
    adapter: AdapterVersion


def promote(
    project: Project,
    ref: str,
    config: GateConfig | None = None,
    *,
    force: bool = False,
    actor: str | None = None,
    reason: str | None = None,
) -> Promotion:
    """Gate `T@N` and move it to production if every rule passes (or `force`, which needs a
    reason). The decision is kept in the adapter's info; a refusal is a registry event."""
    if force and not (reason and reason.strip()):
        raise InvalidInput("--force needs --reason: say why the gate is overruled")
    av = candidate(project, ref)
    if av.stage == "production":
        raise InvalidInput(f"{av.name} is already the production version of {av.task!r}")
    # Overruled anyway: the gate's evaluations run only when stored ones exist to judge by.
    decision = gate(project, av.name, config, run=not force)
    registry.update_info(project, av.name, gate=decision.to_dict())
    if decision.passed:
        reason = reason or f"gate passed against {decision.baseline}"
        av = registry.promote(project, av.name, reason=reason, actor=actor)
        return Promotion(decision, True, False, av)
    if force:
        failed = ", ".join(r.name for r in decision.failed)
        reason = f"{reason} (gate failed: {failed})"
        av = registry.promote(project, av.name, reason=reason, forced=True, actor=actor)
        return Promotion(decision, True, True, av)
    registry.refuse(project, av.name, reason=decision.summary(), actor=actor)
    return Promotion(decision, False, False, registry.get(project, av.name))
