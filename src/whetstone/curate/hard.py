"""Step 6, hard examples: rows tagged hard (or failures queued by evaluation), production
outputs the model was unsure of, corrections of a model's wrong answer and rows with a high
loss under the current adapter (unless `drop_noisy` is on: see below). They are kept preferentially by the budgeted selection and
up-weighted in training."""

from __future__ import annotations

import math

from whetstone.curate.state import Run
from whetstone.records import Source, Status


def run(ctx: Run) -> None:
    cfg = ctx.config
    tags = set(cfg.hard_tags)
    losses = sorted(r.loss for r in ctx.rows if r.loss is not None)
    loss_cut = (
        losses[min(len(losses) - 1, int(cfg.hard_loss_quantile * len(losses)))] if losses else None
    )
    flagged = {d.record_id for d in ctx.decisions if d.action == "flagged"}
    for row in ctx.rows:
        rec = row.record
        why = []
        if tags & set(rec.tags):
            why.append("tagged " + ", ".join(sorted(tags & set(rec.tags))))
        if (
            rec.source == Source.production
            and rec.confidence is not None
            and math.exp(rec.confidence) < cfg.low_confidence
        ):
            why.append("low-confidence production output")
        if (
            rec.status == Status.corrected
            and rec.output is not None
            and rec.output.strip() != (rec.reference or "").strip()
        ):
            why.append("corrected model error")
        # A high loss on a row flagged as noise is more likely a wrong label than a hard case.
        # With `drop_noisy` the user distrusts high-loss labels altogether: the adapter that
        # scored them was trained on them, so the wrong labels it half memorised sit just
        # under the noise cut-off, and up-weighting (and preferring) them would bring the
        # noise back. Loss then stops being a hardness signal; the others still count.
        if (
            not cfg.drop_noisy
            and loss_cut is not None
            and row.loss is not None
            and row.loss >= loss_cut
            and row.id not in flagged
        ):
            why.append("high loss under the production adapter")
        if why:
            row.hard = why
            row.weight = cfg.hard_weight
            ctx.decide(row, "upweighted", "hard example", why=why, weight=cfg.hard_weight)
