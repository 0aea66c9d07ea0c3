"""Step 2, quality filters: empty inputs or references, inputs too short or examples too long
in tokens of the base model (what training will actually see), and a configurable regex
deny-list matched against input and reference."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from whetstone.curate.state import Run


@lru_cache(maxsize=2)
def _tokenizer(spec: str) -> Any:
    from whetstone.models import base

    return base.load_tokenizer(base.resolve(spec))


def token_counts(spec: str, texts: list[str]) -> list[int]:
    tok = _tokenizer(spec)
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


def run(ctx: Run) -> None:
    cfg = ctx.config
    deny = [(p, re.compile(p)) for p in cfg.deny]
    alive = []
    for row in ctx.rows:
        if not row.text.strip():
            ctx.decide(row, "removed", "empty input")
        elif not row.reference.strip():
            ctx.decide(row, "removed", "empty reference")
        else:
            hit = next(
                (p for p, rx in deny if rx.search(row.text) or rx.search(row.reference)), None
            )
            if hit is not None:
                ctx.decide(row, "removed", "matches the deny-list", pattern=hit)
            else:
                alive.append(row)
    if not alive or (cfg.min_tokens <= 1 and cfg.max_tokens is None):
        return
    spec = ctx.project.base_model
    n_in = token_counts(spec, [r.text for r in alive])
    n_ref = token_counts(spec, [r.reference for r in alive])
    lengths = ctx.card.setdefault("tokens", {})
    for row, a, b in zip(alive, n_in, n_ref, strict=True):
        lengths[row.id] = (a, b)
        if a < cfg.min_tokens:
            ctx.decide(row, "removed", "input too short", tokens=a, min_tokens=cfg.min_tokens)
        elif cfg.max_tokens is not None and a + b > cfg.max_tokens:
            ctx.decide(row, "removed", "example too long", tokens=a + b, max_tokens=cfg.max_tokens)
