"""The demo's HTML report: the result table and the flywheel's learning curve (metric against
human labels spent), choosing by `curate next` against choosing at random."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from whetstone import pages
from whetstone.plots import figure_png
from whetstone.util import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from whetstone.demo import DemoResult

COLOURS = {"curate-next": "#1f77b4", "random": "#ff7f0e"}


def plot_curve(result: DemoResult) -> bytes:
    def draw(fig: Any) -> None:
        axes = fig.subplots(1, 2)
        for ax, key, title in (
            (axes[0], "field_f1", "field F1"),
            (axes[1], "exact_match", "whole-object exact match"),
        ):
            base = result.baseline[key]
            for arm in COLOURS:
                rows = [r for r in result.rows if r.arm == arm]
                if not rows:
                    continue
                xs = [0] + [r.labels for r in rows]
                m = [base] + [getattr(r, key) for r in rows]
                ys = [x.get("value", 0.0) * 100 for x in m]
                lo = [x.get("low", x.get("value", 0.0)) * 100 for x in m]
                hi = [x.get("high", x.get("value", 0.0)) * 100 for x in m]
                label = "chosen by curate next" if arm == "curate-next" else "chosen at random"
                ax.plot(xs, ys, marker="o", color=COLOURS[arm], label=label)
                ax.fill_between(xs, lo, hi, color=COLOURS[arm], alpha=0.15)
            ax.axhline(
                base.get("value", 0.0) * 100, color="grey", linestyle=":", label="base model"
            )
            ax.set_xlabel("human labels spent")
            ax.set_ylabel(f"held-out {title} (%)")
            ax.set_ylim(0, 100)
            ax.grid(alpha=0.3)
            ax.set_title(title)
        axes[0].legend(loc="lower right", fontsize=8)
        fig.suptitle("The flywheel's learning curve (production model after each turn, 95% CI)")

    return figure_png(draw, (10, 4), dpi=110)


def _pct(m: dict[str, float]) -> str:
    if not m:
        return "–"
    v = m.get("value", 0.0) * 100
    if "low" in m and "high" in m:
        return f"{v:.1f} [{m['low'] * 100:.1f}, {m['high'] * 100:.1f}]"
    return f"{v:.1f}"


def table_rows(result: DemoResult) -> list[list[str]]:
    rows = [
        [
            "baseline",
            "0",
            "0",
            _pct(result.baseline["exact_match"]),
            _pct(result.baseline["field_f1"]),
            "base model",
            "–",
        ]
    ]
    for r in result.rows:
        rows.append(
            [
                r.arm,
                str(r.turn),
                str(r.labels),
                _pct(r.exact_match),
                _pct(r.field_f1),
                f"{r.decision} ({r.model})",
                f"{r.train_seconds:.0f}",
            ]
        )
    return rows


def verdict_lines(result: DemoResult) -> list[str]:
    """The story's outcome in two sentences, from `DemoResult.verdict`."""
    v = result.verdict
    lines = []
    if gain := v.get("gain_over_base_points"):
        lines.append(
            f"The final curate-next model beats the base model by {gain['field_f1']:+.1f} "
            f"field-F1 points and {gain['exact_match']:+.1f} exact-match points."
        )
    if rnd := v.get("random_final"):
        reached = v.get("curate_next_labels_to_reach_it")
        what = (
            f"curate next reached it with {reached} labels"
            if reached is not None
            else "curate next did not reach it"
        )
        lines.append(
            f"Random labelling ended at {rnd['field_f1']:.1f} field F1 after {rnd['labels']} "
            f"labels; {what}."
        )
    return lines


HEADERS = [
    "arm",
    "turn",
    "labels",
    "exact match % [95% CI]",
    "field F1 % [95% CI]",
    "decision (in production)",
    "train s",
]


def write_demo_report(folder: Path, result: DemoResult) -> tuple[str, str]:
    png = folder / "demo-curve.png"
    curve = plot_curve(result)
    atomic_write_bytes(png, curve)
    page = pages.render(
        "demo_report.html",
        machine=result.machine,
        minutes=result.seconds / 60,
        curve=pages.png_data_uri(curve),
        headers=HEADERS,
        rows=table_rows(result),
        verdict=verdict_lines(result),
    )
    out = folder / "demo-report.html"
    atomic_write_text(out, page)
    return str(out), str(png)
