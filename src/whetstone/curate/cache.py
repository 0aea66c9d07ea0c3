"""Features of records kept in the store (`record_features`) so a second curation run only
computes them for records that are new or whose curated text changed.

Each value is keyed by (record id, kind) and remembers the hash of the text it was computed
from: a record whose text changed (a new normalisation, PII on/off) simply misses the cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from whetstone.project import Project
from whetstone.store import curation as stored


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load(project: Project, kind: str, wanted: dict[int, str]) -> dict[int, bytes]:
    """Stored values of `kind` for the records in `wanted` (id -> input hash) that still match."""
    return stored.load_features(project.store, kind, wanted)


def save(project: Project, kind: str, values: dict[int, tuple[str, bytes]]) -> None:
    """Store (input hash, value) per record id, replacing older values of the same kind."""
    if values:
        stored.save_features(project.store, kind, values)


def cached(
    project: Project,
    kind: str,
    ids: Sequence[int],
    texts: Sequence[str],
    compute: Callable[[list[str]], list[bytes]],
) -> tuple[list[bytes], int]:
    """The feature of each text, computing (and storing) only those not cached.
    Returns the values in order and how many were computed."""
    hashes = {rid: text_hash(t) for rid, t in zip(ids, texts, strict=True)}
    have = load(project, kind, hashes)
    missing = [i for i, rid in enumerate(ids) if rid not in have]
    if missing:
        fresh = compute([texts[i] for i in missing])
        new = {ids[i]: (hashes[ids[i]], v) for i, v in zip(missing, fresh, strict=True)}
        save(project, kind, new)
        have.update({rid: v for rid, (_, v) in new.items()})
    return [have[rid] for rid in ids], len(missing)


def embeddings(project: Project, spec: str, ids: Sequence[int], texts: Sequence[str]) -> Any:
    """L2-normalised embeddings (n x d float32) of `texts`, re-using stored ones."""
    import numpy as np

    from whetstone.models import embeddings as emb

    def compute(batch: list[str]) -> list[bytes]:
        vecs = emb.embed(batch, spec)
        return [v.astype(np.float32).tobytes() for v in vecs]

    if not ids:
        return np.zeros((0, 0), dtype=np.float32)
    values, _ = cached(project, f"embedding:{spec}", ids, texts, compute)
    return np.stack([np.frombuffer(v, dtype=np.float32) for v in values])
