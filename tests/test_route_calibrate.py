"""`whetstone route calibrate`: the cascade's curve arithmetic on hand-made scores, the task's
own checks, and an end-to-end calibration of a tiny random adapter against a real local
HTTP hero (the stub), with its answers cached."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import whetstone
from hero_stub import StubHero, serving
from serve_helpers import register_lora
from whetstone import registry, snapshots
from whetstone.evaluate import metrics as m
from whetstone.evaluate.cascade import (
    calibrate,
    choose,
    curve,
    escalation_keys,
    mix,
    promotion_note,
)
from whetstone.models.hero import Hero, HeroConfig
from whetstone.prompts import answer_fails_checks
from whetstone.records import Task

PNG = b"\x89PNG\r\n\x1a\n"
LABELS = ["alpha", "beta"]

# Five records: reference, the workhorse's answer and confidence, the hero's answer.
# Record 4's workhorse answer names no label: it escalates at every threshold.
REFS = ["alpha", "beta", "alpha", "beta", "alpha"]
WORKHORSE = ["alpha", "alpha", "alpha", "beta", "zzz"]
CONFIDENCE = [-0.1, -2.0, -0.5, -1.0, -0.05]
HERO = ["alpha", "beta", "beta", "beta", "alpha"]
COSTS = np.array([1.0, 2.0, 1.0, 1.0, 5.0])


def _hand_curve() -> Any:
    task = Task(name="t", kind="classify", labels=LABELS)
    wh, hero = m.columns(task, WORKHORSE, REFS), m.columns(task, HERO, REFS)
    forced = [answer_fails_checks(task, a) is not None for a in WORKHORSE]
    return curve(wh, hero, CONFIDENCE, forced, COSTS)


def test_curve_points_by_hand() -> None:
    c = _hand_curve()
    assert c.hero_score == pytest.approx(0.8) and c.workhorse_score == pytest.approx(0.6)
    assert c.forced == 1
    got = [(p.threshold, p.escalated, p.score, p.cost) for p in c.points]
    # Escalate when confidence < threshold; record 4 always (its answer fails the check).
    assert got[:4] == [
        (-2.0, 1, pytest.approx(0.8), pytest.approx(0.5)),  # {4}
        (-1.0, 2, pytest.approx(1.0), pytest.approx(0.7)),  # {4, 1}: the hero fixes 1
        (-0.5, 3, pytest.approx(1.0), pytest.approx(0.8)),  # {4, 1, 3}
        (-0.1, 4, pytest.approx(0.8), pytest.approx(0.9)),  # + 2: the hero gets 2 wrong
    ]
    last = c.points[-1]
    assert last.threshold > -0.1 and last.escalation == 1.0 and last.cost == pytest.approx(1.0)
    assert last.score == pytest.approx(c.hero_score)


def test_threshold_choice_for_target_and_max_escalation() -> None:
    c = _hand_curve()
    # 0.95 x 0.8 = 0.76: the forced escalation alone already reaches it.
    default = choose(c)
    assert default.feasible and default.point.threshold == -2.0
    assert choose(c, target=1.25).point.threshold == -1.0  # needs 1.0: escalate 40%
    assert choose(c, max_escalation=0.5).point.threshold == -1.0  # best score within 50%
    assert choose(c, max_escalation=0.3).point.threshold == -2.0
    with pytest.raises(whetstone.errors.InvalidInput):
        choose(c, target=0.9, max_escalation=0.2)


def test_infeasible_targets_say_so_and_pick_the_closest() -> None:
    c = _hand_curve()
    high = choose(c, target=1.3)  # 1.04: above any cascade
    assert not high.feasible and "out of reach" in high.note
    assert high.point.threshold == -1.0  # the best score, escalating least
    tight = choose(c, max_escalation=0.1)  # the failed check alone is 20%
    assert not tight.feasible and "out of reach" in tight.note
    assert tight.point.escalation == pytest.approx(0.2)


def test_extract_cascade_is_micro_averaged_like_the_metric() -> None:
    task = Task(name="x", kind="extract")
    refs = ['{"a":"1","b":"2","c":"3","d":"4"}', '{"a":"1"}']
    wh = ['{"a":"1","b":"2","c":"3","d":"4"}', '{"a":"9"}']
    hero = ['{"a":"1"}', '{"a":"1"}']
    wcols, hcols = m.columns(task, wh, refs), m.columns(task, hero, refs)
    escalate = escalation_keys([-0.1, -3.0], [False, False]) < -1.0
    mixed = mix(wcols, hcols, escalate)
    want = m.main_score(task, [wh[0], hero[1]], refs)
    assert mixed.point()["field_f1"] == pytest.approx(want) == 1.0
    # The other record escalated: micro F1 over all fields (2/7), not the per-record mean.
    other = mix(wcols, hcols, np.array([True, False]))
    micro = m.main_score(task, [hero[0], wh[1]], refs)
    assert other.point()["field_f1"] == pytest.approx(micro)
    assert micro != pytest.approx((0.4 + 0.0) / 2)


def test_answer_fails_checks_classify_and_extract() -> None:
    cls = Task(name="c", kind="classify", labels=["billing", "shipping"])
    assert answer_fails_checks(cls, " Billing. ") is None
    assert "not one of the task's labels" in str(answer_fails_checks(cls, "refund"))
    assert answer_fails_checks(Task(name="c2", kind="classify"), "anything") is None
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
        "additionalProperties": False,
    }
    ext = Task(name="e", kind="extract", schema=schema)
    assert answer_fails_checks(ext, '{"city": "Oslo"}') is None
    assert "not JSON" in str(answer_fails_checks(ext, "city: Oslo"))
    assert "not a JSON object" in str(answer_fails_checks(ext, '["Oslo"]'))
    assert "schema" in str(answer_fails_checks(ext, '{"city": 5}'))
    assert "schema" in str(answer_fails_checks(ext, '{"country": "NO"}'))
    assert answer_fails_checks(Task(name="g", kind="generate"), "") is None


# ---------------------------------------------------------------- end to end


@pytest.fixture
def tiny(tmp_path: Path, tiny_base_dir: Path) -> Any:
    """A classify task, 16 test records, a random LoRA on the tiny base as its adapter."""
    p = whetstone.init(str(tmp_path / "proj"), base_model=str(tiny_base_dir))
    p.create_task("t", "classify", labels=LABELS)
    for i in range(16):
        p.capture("t", f"message number {i} about {'x' * (i % 5)}", reference=LABELS[i % 2])
    recs = p.records("t")
    snapshots.freeze(p, "t", {r.id: "test" for r in recs})
    av = register_lora(p, "t", tiny_base_dir, seed=3, tmp=tmp_path)
    p.refs = {r.input: r.reference for r in recs}
    yield p, av
    p.close()


def test_calibrate_end_to_end_stores_threshold_png_and_caches_hero(tiny: Any) -> None:
    p, av = tiny
    stub = StubHero(answer=lambda text, i: p.refs[text])
    with serving(stub) as url:
        hero = Hero(HeroConfig(base_url=url, model="stub-hero", max_retries=0))
        p.config["hero"] = {"base_url": url, "model": "stub-hero", "routes": {"t": "cascade"}}
        assert "whetstone route calibrate --task t" in str(promotion_note(p, av))
        cal = calibrate(p, "t", av.name, hero=hero)
        assert len(stub.calls) == 16 and cal.hero_asked == 16
        # A second calibration (another rule) pays nothing twice: every answer is cached.
        again = calibrate(p, "t", av.name, max_escalation=0.25, hero=hero)
        assert len(stub.calls) == 16 and again.hero_asked == 0
    assert cal.curve.hero_score == 1.0  # the stub answers with the references
    assert cal.curve.points[-1].score == 1.0 and cal.curve.points[-1].escalation == 1.0
    assert cal.choice.point.score >= 0.95 - 1e-9
    info = registry.get(p, av.name).info["cascade"]
    assert info["max_escalation"] == 0.25 and info["escalation"] <= 0.25
    assert info["hero_model"] == "stub-hero" and info["hero_score"] == 1.0
    for key in ("threshold", "calibrated_at", "score", "workhorse_score", "cost"):
        assert key in info
    assert Path(info["plot"]).read_bytes().startswith(PNG)
    assert Path(info["plot"]).parent == p.home / "reports" / f"t-{av.version}"
    assert promotion_note(p, registry.get(p, av.name)) is None
    del p.config["hero"]
    assert promotion_note(p, av) is None  # no hero: nothing routes through a cascade

    from whetstone.evaluate.report import write_report

    page = write_report(p, av.name).read_text()
    assert "<h2>Cascade</h2>" in page and "stub-hero" in page
    assert f"t-{av.version}-cascade.png" in page


def test_cli_without_a_hero_is_one_line(
    tiny: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from whetstone.cli import main

    p, av = tiny
    argv = ["whetstone", "--project", str(p.root), "route", "calibrate", "--task", "t"]
    monkeypatch.setattr(sys, "argv", [*argv, "--model", av.name])
    with pytest.raises(SystemExit) as e:
        main.run()
    err = capsys.readouterr().err.strip()
    assert e.value.code != 0 and err.startswith("error: no hero configured")
    assert len(err.splitlines()) == 1


def test_cli_calibrates_with_the_hero_of_whetstone_yaml(
    tiny: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from whetstone.cli import main

    p, av = tiny
    stub = StubHero(answer=lambda text, i: p.refs[text])
    with serving(stub) as url:
        with (p.root / "whetstone.yaml").open("a") as f:
            f.write(f"hero:\n  base_url: {url}\n  model: stub-hero\n  max_retries: 0\n")
        argv = ["whetstone", "--project", str(p.root), "route", "calibrate", "--task", "t"]
        monkeypatch.setattr(sys, "argv", [*argv, "--model", av.name, "--limit", "8"])
        with pytest.raises(SystemExit) as e:
            main.run()
    out = capsys.readouterr().out
    assert e.value.code in (0, None), out
    assert "← chosen" in out and "threshold" in out and "8 hero call(s)" in out
    assert len(stub.calls) == 8
    assert registry.get(p, av.name).info["cascade"]["limit"] == 8
