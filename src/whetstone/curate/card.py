"""Step 10, the data card: one self-contained HTML page (PNGs embedded as base64 and saved
beside it) under `.whetstone/cards/<snapshot>/`: counts per step, label or field distribution,
length histograms, duplicate clusters, noise suspects, split sizes."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from whetstone import pages
from whetstone.curate.state import Run, StepReport
from whetstone.plots import figure_png
from whetstone.records import Kind
from whetstone.snapshots import SPLITS, Snapshot
from whetstone.util import atomic_dir

# The card's figures are drawn smaller than the report's: four of them share one page.
DPI = 90


def _bar(title: str, counts: Mapping[str, float], horizontal: bool = False) -> bytes:
    def draw(fig: Any) -> None:
        ax = fig.subplots()
        keys = [str(k) for k in counts]
        (ax.barh if horizontal else ax.bar)(keys, list(counts.values()), color="#4c72b0")
        ax.set_title(title)
        if not horizontal:
            ax.tick_params(axis="x", labelrotation=30)

    return figure_png(draw, (6, 0.3 * len(counts) + 1.5) if horizontal else (6, 3), dpi=DPI)


def _hist(title: str, series: dict[str, list[int]], unit: str) -> bytes:
    def draw(fig: Any) -> None:
        ax = fig.subplots()
        for name, values in series.items():
            if values:
                ax.hist(values, bins=30, alpha=0.6, label=name)
        ax.set_title(title)
        ax.set_xlabel(unit)
        ax.legend()

    return figure_png(draw, (6, 3), dpi=DPI)


def _distribution(ctx: Run, rows: list[Any]) -> tuple[str, dict[str, int]]:
    if ctx.task.kind == Kind.classify:
        return "Label distribution", dict(Counter(r.reference for r in rows).most_common())
    if ctx.task.kind == Kind.extract:
        fields: Counter[str] = Counter()
        for r in rows:
            try:
                obj = json.loads(r.reference)
            except ValueError:
                continue
            if isinstance(obj, dict):
                fields.update(k for k, v in obj.items() if v not in (None, "", [], {}))
        return "Fields present in references", dict(fields.most_common(30))
    return "Records per source", dict(Counter(r.record.source.value for r in rows))


def _short(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def write(ctx: Run, snap: Snapshot, reports: list[StepReport]) -> Path:
    rows = ctx.rows
    title, dist = _distribution(ctx, rows)
    tokens = ctx.card.get("tokens", {})
    if tokens:
        lengths = {
            "input": [tokens[r.id][0] for r in rows if r.id in tokens],
            "reference": [tokens[r.id][1] for r in rows if r.id in tokens],
        }
        unit = "tokens (base model)"
    else:
        lengths = {
            "input": [len(r.text) for r in rows],
            "reference": [len(r.reference) for r in rows],
        }
        unit = "characters"
    images = {
        "steps.png": _bar("Rows after each step", {r.name: r.after for r in reports}),
        "distribution.png": _bar(title, dist or {"(none)": 0}, horizontal=True),
        "lengths.png": _hist("Length of kept examples", lengths, unit),
        "splits.png": _bar("Split sizes", snap.counts()),
    }
    suspects = ctx.card.get("suspects", [])
    page = pages.render(
        "card.html",
        task=snap.task,
        snapshot=snap.id,
        kept=len(rows),
        embedding_model=ctx.embedding_model,
        steps=[
            [
                r.name,
                r.before,
                r.removed,
                r.flagged,
                r.changed,
                r.after,
                "; ".join(f"{k}: {v}" for k, v in r.reasons.items()),
                "; ".join(r.notes),
            ]
            for r in reports
        ],
        images=[(name, pages.png_data_uri(png)) for name, png in images.items()],
        split_names=list(SPLITS),
        split_counts=[snap.counts()[s] for s in SPLITS],
        n_clusters=ctx.card.get("n_clusters", 0),
        clusters=[
            [[rid, "yes" if kept else "", _short(text)] for rid, text, kept in members]
            for members in ctx.card.get("clusters", [])
        ],
        n_suspects=len(suspects),
        suspects=[
            [
                s["id"],
                _short(s["text"]),
                _short(s["label"], 60),
                s.get("suggested", round(s.get("loss", 0.0), 3)),
            ]
            for s in suspects[:20]
        ],
        pii=ctx.card.get("pii") or {},
    )
    target = ctx.project.home / "cards" / snap.id
    # The card of a snapshot lives in .whetstone/cards/ and is Whetstone's to rewrite.
    with atomic_dir(target, replace="owned") as tmp:
        (tmp / "card.html").write_text(page)
        for name, png in images.items():
            (tmp / name).write_bytes(png)
    return target / "card.html"
