"""Step 10, the data card: one self-contained HTML page (PNGs embedded as base64 and saved
beside it) under `.whetstone/cards/<snapshot>/`: counts per step, label or field distribution,
length histograms, duplicate clusters, noise suspects, split sizes."""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from whetstone.curate.state import Run, StepReport
from whetstone.records import Kind
from whetstone.snapshots import SPLITS, Snapshot
from whetstone.util import atomic_dir


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _bar(title: str, counts: dict[str, int | float], horizontal: bool = False) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.3 * len(counts) + 1.5) if horizontal else (6, 3))
    keys = [str(k) for k in counts]
    (ax.barh if horizontal else ax.bar)(keys, list(counts.values()), color="#4c72b0")
    ax.set_title(title)
    if not horizontal:
        ax.tick_params(axis="x", labelrotation=30)
    return _png(fig)


def _hist(title: str, series: dict[str, list[int]], unit: str) -> bytes:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    for name, values in series.items():
        if values:
            ax.hist(values, bins=30, alpha=0.6, label=name)
    ax.set_title(title)
    ax.set_xlabel(unit)
    ax.legend()
    return _png(fig)


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


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _short(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def write(ctx: Run, snap: Snapshot, reports: list[StepReport]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
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
    parts = [
        f"<h1>Data card · {html.escape(snap.task)} · snapshot {snap.id}</h1>",
        f"<p>{len(rows)} records kept; embedding model {html.escape(ctx.embedding_model)}.</p>",
        "<h2>Steps</h2>",
        _table(
            ["step", "before", "removed", "flagged", "changed", "after", "reasons", "notes"],
            [
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
        ),
    ]
    for name, png in images.items():
        parts.append(
            f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        )
    parts.append(
        "<h2>Split sizes</h2>" + _table(list(SPLITS), [[snap.counts()[s] for s in SPLITS]])
    )
    clusters = ctx.card.get("clusters", [])
    parts.append(
        f"<h2>Duplicate clusters</h2><p>{ctx.card.get('n_clusters', 0)} clusters; the largest:</p>"
    )
    for members in clusters:
        parts.append(
            _table(
                ["record", "kept", "text"],
                [[rid, "yes" if kept else "", _short(text)] for rid, text, kept in members],
            )
        )
    suspects = ctx.card.get("suspects", [])
    parts.append(f"<h2>Label-noise suspects</h2><p>{len(suspects)} suspects.</p>")
    if suspects:
        parts.append(
            _table(
                ["record", "text", "reference", "suggested / loss"],
                [
                    [
                        s["id"],
                        _short(s["text"]),
                        _short(s["label"], 60),
                        s.get("suggested", round(s.get("loss", 0.0), 3)),
                    ]
                    for s in suspects[:20]
                ],
            )
        )
    if ctx.card.get("pii"):
        parts.append(
            "<h2>PII redacted</h2>"
            + _table(list(ctx.card["pii"]), [list(ctx.card["pii"].values())])
        )
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse;"
        "margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .5em;font-size:90%}img{display:block}"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Data card {snap.id}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
    target = ctx.project.home / "cards" / snap.id
    # The card of a snapshot lives in .whetstone/cards/ and is Whetstone's to rewrite.
    with atomic_dir(target, replace="owned") as tmp:
        (tmp / "card.html").write_text(page)
        for name, png in images.items():
            (tmp / name).write_bytes(png)
    return target / "card.html"
