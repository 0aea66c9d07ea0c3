"""The promotion gate, --force, rollback and history, on a tiny random-weight base model.

Most rules are tested with fabricated evaluations (a stand-in predictor answers with chosen
texts, stored through the real runner), so each rule passes or fails deterministically; two
tests run real models end to end: an adapter identical to the base, and a noise adapter.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import whetstone
from whetstone import registry, snapshots
from whetstone.errors import InvalidInput, NotFound
from whetstone.evaluate.gate import (
    GateConfig,
    GateRefused,
    gate,
    gate_config,
    promote,
)
from whetstone.evaluate.leakage import find_leaks
from whetstone.evaluate.runner import evaluate
from whetstone.models.generate import Generation
from whetstone.project import Project
from whetstone.records import Record
from whetstone.registry import rollback
from whetstone.store import schema

FAST = GateConfig(max_new_tokens=3, resamples=200, batch_size=8)
N_TEST, N_TRAIN = 40, 20


def _text(rng: random.Random) -> str:
    """A random sentence: no two are near duplicates of each other."""
    return " ".join("".join(rng.choices(string.ascii_lowercase, k=6)) for _ in range(5))


@pytest.fixture
def tiny(tmp_path: Path, tiny_base_dir: Path) -> Any:
    """A generate task with 40 test records (half tagged even) and 20 train records."""
    p = whetstone.init(str(tmp_path / "proj"), base_model=str(tiny_base_dir))
    p.create_task("qa", "generate", instruction="Answer in one word.")
    rng = random.Random(7)
    for i in range(N_TEST + N_TRAIN):
        p.capture(
            "qa",
            _text(rng),
            reference=f"answer{i}",
            source="import",
            tags=["even"] if i % 2 == 0 else ["odd"],
        )
    recs = p.records("qa")
    assignment = {r.id: ("test" if i < N_TEST else "train") for i, r in enumerate(recs)}
    p.snap = snapshots.freeze(p, "qa", assignment)
    yield p
    p.close()


class Answers:
    """A stand-in predictor: the reference for the records `right` chooses, else "wrong"."""

    def __init__(self, name: str, project: Any, right: Any, latency_ms: float = 1.0):
        self.name = name
        self.answers = {
            r.input: r.reference if right(i, r) else "wrong"
            for i, r in enumerate(project.records("qa"))
        }
        self.latency_ms = latency_ms

    def __call__(self, inputs: list[Any], **kw: Any) -> list[Generation]:
        return [
            Generation(
                text=self.answers[i], confidence=0.0, output_tokens=1, latency_ms=self.latency_ms
            )
            for i in inputs
        ]


def _base_name(p: Any) -> str:
    from whetstone.models import base

    return f"base:{base.resolve(p.base_model).name}"


def _register(p: Any, tmp_path: Path, folder: Path | None = None) -> str:
    from whetstone.models import base

    if folder is None:
        folder = tmp_path / "artefact"
        folder.mkdir(exist_ok=True)
        (folder / "weights.txt").write_text("stand-in")
    b = base.resolve(p.base_model)
    av = registry.register(
        p, "qa", folder, method="lora", base_model=b.name, base_hash=b.hash, snapshot_id=p.snap.id
    )
    return av.name


def _store(p: Any, model: str, right: Any, latency_ms: float = 1.0) -> None:
    """Store a complete evaluation of `model` on the test split with chosen answers."""
    spec = "base" if model.startswith("base:") else model
    evaluate(
        p,
        "qa",
        spec,
        "test",
        p.snap.id,
        resamples=200,
        max_new_tokens=FAST.max_new_tokens,  # the gate reuses evaluations with its settings
        predictor=Answers(model, p, right, latency_ms),
    )


def _events(p: Any) -> list[tuple[str, int, str | None]]:
    return [(e["action"], e["version"], e["to_stage"]) for e in registry.history(p, "qa")]


def _rule(decision: Any, name: str) -> Any:
    return next(r for r in decision.rules if r.name == name)


# ---------------------------------------------------------------- each rule, both ways


def test_clear_improvement_passes_every_rule_and_is_promoted(tiny: Any, tmp_path: Path) -> None:
    ref = _register(tiny, tmp_path)
    _store(tiny, _base_name(tiny), lambda i, r: i < 10)
    _store(tiny, ref, lambda i, r: i < 36)
    result = promote(tiny, ref, FAST, actor="ana")
    d = result.decision
    assert result.promoted and not result.forced and d.passed, d.summary()
    main = _rule(d, "beats-baseline")
    assert main.numbers["candidate"] == 0.9 and main.numbers["baseline"] == 0.25
    assert main.numbers["low"] > 0 and "lower bound +0." in main.message
    assert _rule(d, "leakage").numbers["train_records"] == N_TRAIN
    av = registry.get(tiny, ref)
    assert av.stage == "production"
    assert av.info["gate"]["passed"] is True
    assert av.info["gate"]["rules"][0]["numbers"]["diff"] == pytest.approx(0.65)
    assert ("promote", 1, "production") in _events(tiny)
    assert registry.history(tiny, "qa")[-1]["actor"] == "ana"


def test_no_improvement_is_refused_with_numbers_and_recorded(tiny: Any, tmp_path: Path) -> None:
    ref = _register(tiny, tmp_path)
    _store(tiny, _base_name(tiny), lambda i, r: i < 20)
    _store(tiny, ref, lambda i, r: i < 21)
    result = promote(tiny, ref, FAST, actor="ana")
    assert not result.promoted
    main = _rule(result.decision, "beats-baseline")
    assert not main.passed and main.numbers["low"] <= 0
    assert "0.525 vs 0.500" in main.message and "is not above min-delta +0.000" in main.message
    assert registry.get(tiny, ref).stage == "candidate"
    last = registry.history(tiny, "qa")[-1]
    assert last["action"] == "gate-refused" and last["to_stage"] == "candidate"
    assert "beats-baseline" in last["reason"] and "0.525" in last["reason"]
    assert registry.get(tiny, ref).info["gate"]["passed"] is False


def test_min_delta_is_applied_to_the_lower_bound(tiny: Any, tmp_path: Path) -> None:
    ref = _register(tiny, tmp_path)
    _store(tiny, _base_name(tiny), lambda i, r: i < 10)
    _store(tiny, ref, lambda i, r: i < 36)
    low = _rule(gate(tiny, ref, FAST), "beats-baseline").numbers["low"]
    strict = FAST.model_copy(update={"min_delta": low + 0.01})
    assert not _rule(gate(tiny, ref, strict), "beats-baseline").passed
    assert _rule(
        gate(tiny, ref, FAST.model_copy(update={"min_delta": low - 0.01})), "beats-baseline"
    ).passed


def test_slice_regression_fails_unless_the_slice_is_too_small(tiny: Any, tmp_path: Path) -> None:
    ref = _register(tiny, tmp_path)
    even = [i for i in range(N_TEST) if i % 2 == 0]
    # Base: all 20 even right. Candidate: all 20 odd and only 14 even right: better overall
    # (34 vs 20 of 40) but the even slice drops by 0.3.
    _store(tiny, _base_name(tiny), lambda i, r: i < N_TEST and i % 2 == 0)
    _store(tiny, ref, lambda i, r: i < N_TEST and (i % 2 == 1 or i in even[:14]))
    d = gate(tiny, ref, FAST)
    assert _rule(d, "beats-baseline").passed
    rule = _rule(d, "slices")
    assert not rule.passed
    assert rule.numbers["regressions"][0]["slice"] == "tag=even"
    assert rule.numbers["regressions"][0]["diff"] == pytest.approx(-0.3)
    assert "tag=even (n=20) 0.700 vs 1.000 = -0.300" in rule.message
    small = gate(tiny, ref, FAST.model_copy(update={"min_slice_size": 21}))
    assert (
        _rule(small, "slices").passed
        and "no slice has >= 21 records" in _rule(small, "slices").message
    )
    loose = gate(tiny, ref, FAST.model_copy(update={"slice_tolerance": 0.35}))
    assert _rule(loose, "slices").passed and loose.passed


def test_latency_budget(tiny: Any, tmp_path: Path) -> None:
    ref = _register(tiny, tmp_path)
    _store(tiny, _base_name(tiny), lambda i, r: i < 10, latency_ms=5.0)
    _store(tiny, ref, lambda i, r: i < 36, latency_ms=50.0)
    assert _rule(gate(tiny, ref, FAST), "latency").passed  # no budget set
    d = gate(tiny, ref, FAST.model_copy(update={"latency_budget_ms": 10}))
    rule = _rule(d, "latency")
    assert not rule.passed and not d.passed
    assert rule.message == "p95 50.0 ms > budget 10.0 ms"
    assert rule.numbers["baseline_p95_ms"] == 5.0
    assert _rule(
        gate(tiny, ref, FAST.model_copy(update={"latency_budget_ms": 60})), "latency"
    ).passed


def test_near_duplicate_of_a_training_record_is_leakage(tiny: Any, tmp_path: Path) -> None:
    test_rec = tiny.record(tiny.snap.ids("test")[3])
    near = test_rec.input[:-1] + ("x" if test_rec.input[-1] != "x" else "y")
    dup = tiny.record(tiny.capture("qa", near, reference="answer", source="import"))
    assignment = {i: s for s in ("train", "test") for i in tiny.snap.ids(s)}
    tiny.snap = snapshots.freeze(tiny, "qa", {**assignment, dup.id: "train"})
    ref = _register(tiny, tmp_path)
    _store(tiny, _base_name(tiny), lambda i, r: i < 10)
    _store(tiny, ref, lambda i, r: i < 36)
    result = promote(tiny, ref, FAST)
    rule = _rule(result.decision, "leakage")
    assert not result.promoted and not rule.passed
    assert rule.numbers["near"] == 1 and rule.numbers["exact"] == 0
    pair = rule.numbers["examples"][0]
    assert (pair["eval_id"], pair["train_id"]) == (test_rec.id, dup.id)
    assert 0.8 <= pair["jaccard"] < 1
    assert f"record {test_rec.id}~{dup.id} (near" in rule.message
    assert "run `whetstone curate --task qa` and train again" in rule.message


def test_find_leaks_exact_near_and_lsh_path(monkeypatch: Any) -> None:
    rng = random.Random(3)
    train = [Record(id=i, task="t", input=_text(rng)) for i in range(30)]
    evals = [
        Record(
            id=100, task="t", input="  " + train[0].input.upper() + " "
        ),  # exact after normalising
        Record(id=101, task="t", input=train[1].input + "!"),  # near
        Record(id=102, task="t", input=_text(rng)),  # new
    ]
    for limit in (10**9, 0):  # all pairs, then MinHash LSH candidates
        monkeypatch.setattr("whetstone.neardup.ALL_PAIRS_LIMIT", limit)
        rep = find_leaks(evals, train)
        assert [(p.eval_id, p.train_id, p.kind) for p in rep.pairs] == [
            (100, 0, "exact"),
            (101, 1, "near"),
        ]
    assert find_leaks(evals, []).pairs == []


# ---------------------------------------------------------------- force, rollback, history


def test_force_needs_a_reason_and_records_who_and_why(tiny: Any, tmp_path: Path) -> None:
    ref = _register(tiny, tmp_path)
    _store(tiny, _base_name(tiny), lambda i, r: i < 20)
    _store(tiny, ref, lambda i, r: i < 20)
    with pytest.raises(InvalidInput, match="--force needs --reason"):
        promote(tiny, ref, FAST, force=True)
    result = promote(tiny, ref, FAST, force=True, actor="bob", reason="hotfix for customer X")
    assert result.promoted and result.forced and not result.decision.passed
    last = registry.history(tiny, "qa")[-1]
    assert last["action"] == "promote-forced" and last["actor"] == "bob"
    assert last["reason"] == "hotfix for customer X (gate failed: beats-baseline)"
    assert registry.get(tiny, ref).stage == "production"
    with pytest.raises(InvalidInput, match="already the production version"):
        promote(tiny, ref, FAST)


def test_rollback_restores_previous_production_and_history_keeps_everything(
    tiny: Any, tmp_path: Path
) -> None:
    v1, v2 = _register(tiny, tmp_path), _register(tiny, tmp_path)
    with pytest.raises(NotFound, match="no production version"):
        rollback(tiny, "qa")
    _store(tiny, _base_name(tiny), lambda i, r: i < 5)
    _store(tiny, v1, lambda i, r: i < 20)
    _store(tiny, v2, lambda i, r: i < 38)
    assert promote(tiny, v1, FAST).promoted
    with pytest.raises(InvalidInput, match="nothing to roll back to"):
        rollback(tiny, "qa")
    d = promote(tiny, v2, FAST).decision
    assert d.passed and d.baseline == v1  # the second candidate had to beat production
    with pytest.raises(InvalidInput, match="qa@2 was never production before"):
        rollback(tiny, "qa", to=2)
    new, old = rollback(tiny, "qa", reason="complaints", actor="ana")
    assert (new.name, new.stage, old.name, old.stage) == (v1, "production", v2, "retired")
    assert registry.production(tiny, "qa").name == v1
    assert _events(tiny) == [
        ("register", 1, "candidate"),
        ("register", 2, "candidate"),
        ("promote", 1, "production"),
        ("promote:replaced", 1, "retired"),
        ("promote", 2, "production"),
        ("rollback:replaced", 2, "retired"),
        ("rollback", 1, "production"),
    ]
    assert registry.history(tiny, "qa")[-1]["reason"] == "complaints"
    with pytest.raises(InvalidInput, match="nothing to roll back to"):
        rollback(tiny, "qa")  # qa@1 was the first production version


def test_gate_settings_come_from_whetstone_yaml(tiny: Any) -> None:
    cfg_path = tiny.config_path
    cfg_path.write_text(cfg_path.read_text() + "\ngate:\n  min_delta: 0.1\n  min_slice_size: 5\n")
    p = Project.find(tiny.root)
    cfg = gate_config(p, min_slice_size=7, latency_budget_ms=None)
    assert (cfg.min_delta, cfg.min_slice_size, cfg.latency_budget_ms) == (0.1, 7, None)
    cfg_path.write_text(cfg_path.read_text() + "  slice_tolerance: -1\n")
    with pytest.raises(InvalidInput, match=r"gate\.slice_tolerance"):
        gate_config(Project.find(tiny.root))


def test_promote_needs_a_version(tiny: Any) -> None:
    with pytest.raises(InvalidInput, match="name the version to promote"):
        promote(tiny, "qa", FAST)


# ---------------------------------------------------------------- real models


def _lora_folder(base_dir: Path, out: Path, noise: float | None) -> Path:
    """A real PEFT LoRA folder on the tiny base: untrained (B = 0, so it equals the base) or
    with every LoRA weight replaced by large random noise (a broken adapter)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM"
    )
    peft = get_peft_model(model, cfg)
    if noise is not None:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in peft.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=g) * noise)
    peft.save_pretrained(out)
    return out


def _count_evaluations(p: Any) -> int:
    with p.store.begin() as c:
        return int(
            c.execute(sa.select(sa.func.count()).select_from(schema.evaluations)).scalar_one()
        )


def test_end_to_end_gate_runs_both_models_and_decides(
    tiny: Any, tmp_path: Path, tiny_base_dir: Path
) -> None:
    ref = _register(tiny, tmp_path, _lora_folder(tiny_base_dir, tmp_path / "lora0", None))
    refused = gate(tiny, ref, FAST)
    assert _count_evaluations(tiny) == 2  # the candidate and the base model, really run
    main = _rule(refused, "beats-baseline")
    # An untrained LoRA answers exactly as its base: no difference, so no promotion...
    assert main.numbers["diff"] == 0 and main.numbers["low"] == 0 and not refused.passed
    # ...unless the gate is told a tie is enough; the stored evaluations are reused.
    result = promote(tiny, ref, FAST.model_copy(update={"min_delta": -0.01}))
    assert _count_evaluations(tiny) == 2
    assert result.promoted and registry.production(tiny, "qa").name == ref
    assert set(result.decision.evaluations.values()) == set(refused.evaluations.values())


def test_broken_adapter_with_noise_weights_is_refused(
    tiny: Any, tmp_path: Path, tiny_base_dir: Path
) -> None:
    good = _register(tiny, tmp_path)
    _store(tiny, good, lambda i, r: i < 30)  # production answers 30 of 40 test records
    promote(tiny, good, FAST, force=True, reason="seed the test's production model")
    broken = _register(tiny, tmp_path, _lora_folder(tiny_base_dir, tmp_path / "noise", 50.0))
    result = promote(tiny, broken, FAST)
    main = _rule(result.decision, "beats-baseline")
    assert not result.promoted and not main.passed
    assert result.decision.baseline == good
    assert main.numbers["candidate"] == 0 and main.numbers["diff"] == -0.75
    assert registry.production(tiny, "qa").name == good
    assert registry.history(tiny, "qa")[-1]["action"] == "gate-refused"


# ---------------------------------------------------------------- the CLI


def test_cli_promote_refusal_exits_3_and_history_adapters_rollback(
    tiny: Any, tmp_path: Path
) -> None:
    import typer
    from typer.testing import CliRunner

    from whetstone.cli import common
    from whetstone.cli import registry as registry_cli

    app = typer.Typer()
    registry_cli.register(app)
    v1, v2 = _register(tiny, tmp_path), _register(tiny, tmp_path)
    _store(tiny, _base_name(tiny), lambda i, r: i < 5)
    _store(tiny, v1, lambda i, r: i < 30)
    _store(tiny, v2, lambda i, r: i < 5)
    common.state.project = str(tiny.root)
    run = CliRunner().invoke
    try:
        res = run(app, ["promote", v1, "--max-new-tokens", "3"])
        assert res.exit_code == 0, res.output
        assert "beats-baseline" in res.stdout and "Promoted qa@1" in res.stdout
        res = run(app, ["promote", v2, "--min-slice-size", "5", "--max-new-tokens", "3"])
        # main.run turns the error into exit status 3 and one line on stderr.
        assert isinstance(res.exception, GateRefused) and res.exception.exit_code == 3
        assert "gate refused qa@2: beats-baseline, slices failed" in str(res.exception)
        assert "FAIL" in res.stdout and "beats-baseline" in res.stdout
        res = run(app, ["promote", v2, "--force", "--reason", "demo", "--actor", "cy", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["forced"] is True
        res = run(app, ["adapters", "--task", "qa", "--json"])
        rows = json.loads(res.stdout)
        assert [(r["name"], r["stage"], r["gate"]) for r in rows] == [
            ("qa@1", "retired", "passed"),
            ("qa@2", "production", "refused"),
        ]
        assert rows[0]["test"] == 0.75
        res = run(app, ["rollback", "qa", "--reason", "bad"])
        assert res.exit_code == 0, res.output
        assert "qa@1 is production, qa@2 is retired" in res.stdout
        res = run(app, ["history", "qa"])
        assert res.exit_code == 0, res.output
        for action in ("register", "promote", "gate-refused", "promote-forced", "rollback"):
            assert action in res.stdout
        assert "cy" in res.stdout
        refusal = next(e for e in registry.history(tiny, "qa") if e["action"] == "gate-refused")
        assert "0.125 vs 0.750" in refusal["reason"]
    finally:
        common.state.project = None


def test_forced_promotion_runs_no_model(tiny: Any, tmp_path: Path) -> None:
    """`--force` overrules the gate: with no stored evaluation it records the leakage rule
    and that nothing was evaluated, and never loads a model (this adapter's folder holds no
    weights, so loading it would fail)."""
    ref = _register(tiny, tmp_path)
    result = promote(tiny, ref, FAST, force=True, reason="hotfix", actor="ana")
    assert result.promoted and result.forced
    rules = {r.name: r for r in result.decision.rules}
    assert not rules["beats-baseline"].passed
    assert rules["beats-baseline"].message.startswith("not evaluated: no stored evaluation")
    assert rules["leakage"].passed
    assert result.decision.evaluations == {}
    assert evaluations_of(tiny) == 0
    last = registry.history(tiny, "qa")[-1]
    assert last["action"] == "promote-forced" and "hotfix" in last["reason"]


def evaluations_of(p: Any) -> int:
    from whetstone.evaluate.runner import list_evaluations

    return len(list_evaluations(p, "qa"))
