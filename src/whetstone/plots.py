"""Figures as PNG bytes, and a training run's curves.

In the bottom layer so that train, evaluate and curate (siblings that may not import each
other) draw through one implementation. matplotlib is imported inside the functions: it takes
a noticeable part of a second to import, which every CLI command would otherwise pay.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def figure_png(draw: Callable[[Any], None], size: tuple[float, float], dpi: float = 100) -> bytes:
    """The PNG of a `size` inches figure at `dpi` that `draw(fig)` fills. Agg backend (no
    display needed); the figure is closed even when `draw` raises, so none piles up in
    pyplot's registry over a long run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=size, dpi=dpi)
    try:
        draw(fig)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file such as a run's metrics.jsonl; empty when it is missing.
    A line that does not parse is skipped: a killed run can leave its last line cut short."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def training_curves(rows: list[dict[str, Any]], metric: str) -> bytes | None:
    """A run's learning curves from its metrics.jsonl rows: training and validation loss on
    the left; validation token accuracy and the task's `metric` on the right. None when the
    rows hold nothing to plot."""
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train" and "loss" in r]
    val = [r for r in rows if r.get("kind") == "validation"]
    vloss = [(r["step"], r["val_loss"]) for r in val if r.get("val_loss") is not None]
    # A language-model run validates by token accuracy and scores the task metric once, at
    # the checkpoint choice; the label head validates by the metric itself.
    vacc = [(r["step"], r["token_accuracy"]) for r in val if r.get("token_accuracy") is not None]
    vmetric = [
        (r["step"], r["metric"])
        for r in rows
        if r.get("kind") in ("validation", "checkpoint_choice") and r.get("metric") is not None
    ]
    if not (train or vloss or vmetric or vacc):
        return None

    def draw(fig: Any) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        if train:
            ax1.plot(*zip(*train, strict=True), color="tab:blue", alpha=0.8, label="train loss")
        if vloss:
            ax1.plot(*zip(*vloss, strict=True), "o-", color="tab:orange", label="validation loss")
        ax1.set(xlabel="step", ylabel="loss", title="loss")
        ax1.legend()
        ax1.grid(alpha=0.3)
        if vacc:
            ax2.plot(*zip(*vacc, strict=True), "o-", color="tab:purple", label="token accuracy")
        if vmetric:
            ax2.plot(*zip(*vmetric, strict=True), "s", color="tab:green", label=metric)
        if vacc or vmetric:
            ax2.set_ylim(-0.02, 1.02)
            ax2.legend()
        else:
            ax2.text(0.5, 0.5, "no validation metric logged", ha="center", va="center")
        ax2.set(xlabel="step", ylabel="score", title=f"validation ({metric} at the end)")
        ax2.grid(alpha=0.3)

    return figure_png(draw, (10, 3.8))
