"""Workhorse and hero: the cascade on the bundled addresses, side by side in one run.

Workhorse: the quick start's adapter (200 human labels, 40 LoRA steps; `--workhorse-steps N`
for the same labels trained longer). Hero: the bundled model
with an adapter trained on 600 other labelled addresses, served by a second `whetstone serve`
over HTTP (see hero_bench.py). Every score is on the 300 human-labelled test records.

Rows: workhorse alone, hero alone, and the cascade at the threshold `route calibrate` chose on
the *validation* split (target: 95% of the hero's field F1), measured on the test split; then
the test curve at a few escalation rates. Cost is relative to sending every request to the hero
(money at the prices in hero_bench.py). Target (issue 16): the cascade keeps >= 95% of the
hero's field F1 while sending <= 30% of requests to the hero.

Run:  python benchmarks/cascade.py [--work DIR] [--workhorse-steps 40]
Writes benchmarks/results/cascade.json (cascade-<N>-steps.json for another step count).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import common
import hero_bench as hb

TARGET_SHARE, TARGET_ESCALATION = 0.95, 0.30


def point_row(name: str, p: Any, hero_score: float) -> list[Any]:
    return [
        name,
        f"{p.score * 100:.1f}",
        f"{p.score / hero_score * 100:.1f}%" if hero_score else "-",
        f"{p.escalation * 100:.1f}%",
        f"{p.cost * 100:.1f}%",
    ]


def calibrations(work: Path, port: int, shop: str) -> tuple[Any, Any, dict[str, Any]]:
    """Calibrate on validation (the stored threshold), and the test curve to measure it on."""
    from whetstone.evaluate.cascade import calibrate

    with hb.serving_hero(work, port) as url:
        hb.set_hero(work / shop, hb.hero_section(url))
        project = hb.open_project(work / shop)
        adapter = hb.marker(work, shop)["adapter"]  # type: ignore[index]
        t0 = time.perf_counter()
        test = calibrate(project, hb.TASK, adapter, split="test")
        test_s = time.perf_counter() - t0
        val = calibrate(project, hb.TASK, adapter, split="validation")  # stored last: served
        project.close()
    return val, test, {"test_calibration_s": round(test_s, 1)}


def main() -> None:
    ap = hb.arguments(__doc__)
    ap.add_argument("--workhorse-steps", type=int, default=hb.STUDENT_STEPS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    hero = hb.hero_project(args.work)
    shop = hb.shop_project(args.work, args.workhorse_steps)
    name = hb.shop_name(args.workhorse_steps)
    val, test, timing = calibrations(args.work, args.port, name)
    c = test.curve
    chosen = test.at(val.choice.point.threshold)
    from whetstone.evaluate.cascade import Point

    alone = Point(
        threshold=float("-inf"), escalated=0, escalation=0.0, score=c.workhorse_score, cost=0.0
    )
    everything = Point(
        threshold=float("inf"), escalated=c.n, escalation=1.0, score=c.hero_score, cost=1.0
    )
    rows = [
        point_row("workhorse alone", alone, c.hero_score),
        point_row("hero alone", everything, c.hero_score),
        point_row(
            f"cascade (threshold {chosen.threshold:.3f}, from validation)", chosen, c.hero_score
        ),
    ]
    shown = [p for p in c.points if p.escalation in {q.escalation for q in _spread(c.points)}]
    rows += [point_row(f"  curve: threshold {p.threshold:.3f}", p, c.hero_score) for p in shown]
    common.print_table(
        f"Cascade on {c.n} held-out addresses ({c.metric}; cost relative to hero-only)",
        ["route", c.metric, "of hero", "escalated", "cost"],
        rows,
    )
    share = chosen.score / c.hero_score if c.hero_score else 0.0
    met = share >= TARGET_SHARE and chosen.escalation <= TARGET_ESCALATION
    print(
        f"target: >= {TARGET_SHARE:.0%} of the hero's {c.metric} at <= "
        f"{TARGET_ESCALATION:.0%} escalation: {'met' if met else 'NOT met'} "
        f"({share:.1%} at {chosen.escalation:.1%})"
    )
    path = common.write_result(
        "cascade" if name == "shop" else f"cascade-{args.workhorse_steps}-steps",
        {
            "hero": {
                **hero,
                "what": "bundled SmolLM2-135M-Instruct + LoRA on 600 other "
                "labelled addresses, served by `whetstone serve` over HTTP",
            },
            "workhorse": shop,
            "split_sizes": hb.SIZES,
            "prices_per_1k": {"input": hb.PRICE_IN, "output": hb.PRICE_OUT},
            "metric": c.metric,
            "n_test": c.n,
            "workhorse_score": c.workhorse_score,
            "hero_score": c.hero_score,
            "calibrated_on_validation": val.info,
            "cascade_on_test": chosen.__dict__,
            "share_of_hero": share,
            "target": {"share": TARGET_SHARE, "escalation": TARGET_ESCALATION, "met": met},
            "test_curve": [p.__dict__ for p in c.points],
            "test_versus_hero_at_own_choice": test.versus_hero,
            **timing,
        },
    )
    print(f"wrote {path}")


def _spread(points: list[Any], k: int = 6) -> list[Any]:
    """About k points of the curve, evenly spread over escalation."""
    if len(points) <= k:
        return points
    step = (len(points) - 1) / (k - 1)
    return [points[round(i * step)] for i in range(k)]


if __name__ == "__main__":
    main()
